//! A blocking client for one OpenAI-compatible chat-completions endpoint: timeouts, retries with exponential
//! backoff on what is worth retrying (HTTP 429 and 5xx, timeouts, refused or dropped connections, a 200 whose body
//! is not a chat completion), and errors that name the endpoint. The API key goes into the Authorization header
//! and nowhere else: no error message, log line or output file carries it.

use anyhow::{bail, Result};
use std::time::Duration;

/// Where the judge is and how patiently to ask it.
#[derive(Clone)]
pub struct Endpoint {
    /// The chat-completions URL (`…/chat/completions`).
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Per request, connect to last byte.
    pub timeout: Duration,
    /// Attempts after the first one.
    pub retries: usize,
    /// The first wait between attempts; it doubles each time, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// The judge's answer length limit (FastChat: 2048).
    pub max_tokens: usize,
}

impl std::fmt::Debug for Endpoint {
    // The key stays out of debug output too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).field("model", &self.model).field("api_key", &self.api_key.as_ref().map(|_| "<set>")).finish()
    }
}

/// `--judge-url` as given: a base URL (`https://api.openai.com/v1`) gets `/chat/completions` appended; a URL
/// that already ends in it is used as it is.
pub fn completions_url(url: &str) -> Result<String> {
    let url = url.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("judge URL `{url}` must start with http:// or https://");
    }
    Ok(if url.ends_with("/chat/completions") { url.to_string() } else { format!("{url}/chat/completions") })
}

/// Why one attempt failed, and whether another attempt may help.
enum Failure {
    Retry(String),
    Fatal(String),
}

impl Endpoint {
    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder().timeout_global(Some(self.timeout)).http_status_as_error(false).build().into()
    }

    /// The judge's reply to a system and a user message, at temperature 0 (FastChat's setting for its OpenAI
    /// judges). Errors name the endpoint and the last failure.
    pub fn complete(&self, system: &str, user: &str) -> Result<String> {
        let body = serde_json::json!({
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        })
        .to_string();
        let agent = self.agent();
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(wait);
                wait = (wait * 2).min(self.max_backoff);
            }
            match self.attempt(&agent, &body) {
                Ok(text) => return Ok(text),
                Err(Failure::Fatal(why)) => bail!("judge endpoint {} refused the request: {why}", self.url),
                Err(Failure::Retry(why)) => last = why,
            }
        }
        bail!("judge endpoint {} failed {} times; the last time: {last}", self.url, self.retries + 1)
    }

    fn attempt(&self, agent: &ureq::Agent, body: &str) -> std::result::Result<String, Failure> {
        let mut req = agent.post(&self.url).header("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", &format!("Bearer {key}"));
        }
        let mut resp = match req.send(body) {
            Ok(r) => r,
            Err(ureq::Error::Timeout(t)) => return Err(Failure::Retry(format!("no answer within {:?} ({t})", self.timeout))),
            Err(e @ (ureq::Error::BadUri(_) | ureq::Error::HostNotFound | ureq::Error::InvalidProxyUrl)) => return Err(Failure::Fatal(e.to_string())),
            Err(e) => return Err(Failure::Retry(e.to_string())),
        };
        let status = resp.status().as_u16();
        let text = match resp.body_mut().read_to_string() {
            Ok(t) => t,
            Err(ureq::Error::Timeout(t)) => return Err(Failure::Retry(format!("no complete answer within {:?} ({t})", self.timeout))),
            Err(e) => return Err(Failure::Retry(format!("HTTP {status}, then the body broke off: {e}"))),
        };
        // Error bodies may quote the key back (OpenAI's 401 shows it masked): it is cut out of anything reported.
        let snippet = || {
            let s: String = text.chars().take(200).collect();
            match &self.api_key {
                Some(k) => s.replace(k.as_str(), "<api key>"),
                None => s,
            }
        };
        match status {
            200..=299 => {}
            429 | 500..=599 | 408 => return Err(Failure::Retry(format!("HTTP {status}: {}", snippet()))),
            401 | 403 => return Err(Failure::Fatal(format!("HTTP {status}: the endpoint did not accept the API key (or its absence); its answer is not shown, as it may quote the key"))),
            // 404, 400: asking again will not help.
            _ => return Err(Failure::Fatal(format!("HTTP {status}: {}", snippet()))),
        }
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Failure::Retry(format!("the answer is not JSON ({e}): {}", snippet())))?;
        match json.pointer("/choices/0/message/content").and_then(|c| c.as_str()) {
            Some(content) => Ok(content.to_string()),
            None => Err(Failure::Retry(format!("the answer has no choices[0].message.content: {}", snippet()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_get_the_completions_path() {
        assert_eq!(completions_url("https://api.openai.com/v1/").unwrap(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(completions_url("http://127.0.0.1:8000/v1/chat/completions").unwrap(), "http://127.0.0.1:8000/v1/chat/completions");
        assert!(completions_url("127.0.0.1:8000").unwrap_err().to_string().contains("http://"));
    }

    #[test]
    fn debug_output_hides_the_key() {
        let e = Endpoint { url: "http://x/chat/completions".into(), model: "m".into(), api_key: Some("sk-secret".into()), timeout: Duration::from_secs(1), retries: 0, backoff: Duration::ZERO, max_backoff: Duration::ZERO, max_tokens: 1 };
        assert!(!format!("{e:?}").contains("sk-secret"));
    }
}
