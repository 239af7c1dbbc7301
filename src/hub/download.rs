//! Downloading one revision of a model repo: the Hub API lists the commit and its files (with each file's blob
//! id, size and, for LFS files, sha256), then each needed file comes from `/{id}/resolve/{commit}/{file}` — by
//! commit, so a branch moving mid-download cannot mix two versions. Each file is written to
//! `blobs/<etag>.incomplete`, continued with a Range request after a dropped connection or an earlier interrupted
//! run, checked (size; sha256 for LFS files), renamed to `blobs/<etag>` and linked into the snapshot.

use super::cache::{is_commit_hash, RepoCache};
use super::{HubSettings, Need};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The small files of a checkpoint that are fetched when the repo has them: config, generation defaults and every
/// tokenizer format transformers reads (including transformers 5's separate chat template).
const TEXT_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

#[derive(Deserialize)]
struct Listing {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

/// A file of the commit as the cache stores it: blob name (the Hub's etag: sha256 for LFS files, the git blob
/// id otherwise), size, and the sha256 to check when the Hub gives one.
#[derive(Debug, Clone)]
struct Remote {
    name: String,
    etag: String,
    size: u64,
    sha256: Option<String>,
}

impl Remote {
    fn from_sibling(s: &Sibling) -> Result<Self> {
        let (etag, size, sha256) = match (&s.lfs, &s.blob_id, s.size) {
            (Some(lfs), _, _) => (lfs.sha256.to_ascii_lowercase(), lfs.size, Some(lfs.sha256.to_ascii_lowercase())),
            (None, Some(id), Some(size)) => (id.to_ascii_lowercase(), size, None),
            _ => bail!("the Hub's file list gives no blob id or size for `{}`", s.rfilename),
        };
        // The etag becomes a file name in blobs/.
        if etag.len() < 8 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("the Hub's file list gives `{}` the unusable blob id `{etag}`", s.rfilename);
        }
        Ok(Self { name: s.rfilename.clone(), etag, size, sha256 })
    }
}

/// What went wrong with one request: worth another attempt (a dropped connection, a busy server) or not.
enum Failure {
    Retry(String),
    Fatal(anyhow::Error),
}

struct Client<'a> {
    agent: ureq::Agent,
    settings: &'a HubSettings,
}

type Request = ureq::RequestBuilder<ureq::typestate::WithoutBody>;
type Response = ureq::http::Response<ureq::Body>;

/// Percent-encodes a URL path segment (revisions like `refs/pr/1` keep no slash, as huggingface_hub quotes them).
fn encode(segment: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let host = rest.split(['/', ':']).next().unwrap_or("");
    host == "localhost" || host.starts_with("127.") || rest.starts_with("[::1]")
}

impl<'a> Client<'a> {
    fn new(settings: &'a HubSettings) -> Self {
        let agent = ureq::Agent::config_builder()
            // The Hub answers resolve URLs with a 302 to its CDN: the token goes only to the host it was meant for.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .max_redirects(8)
            .timeout_connect(Some(Duration::from_secs(30)))
            // A stalled transfer counts as a dropped one and is resumed (per read: a shard may take an hour).
            .timeout_per_read(Some(Duration::from_secs(60)))
            // A local endpoint (a mirror, the tests' server) is never sent through a proxy, whatever NO_PROXY says.
            .proxy(if is_loopback(&settings.endpoint) { None } else { ureq::Proxy::try_from_env() })
            .user_agent(format!("trainer/{}", env!("CARGO_PKG_VERSION")))
            // Refusals are answers to classify (401/403/404 with their hint), not transport errors.
            .http_status_as_error(false)
            .build();
        Self { agent: agent.into(), settings }
    }

    fn get(&self, url: &str) -> Request {
        let request = self.agent.get(url);
        match &self.settings.token {
            Some(t) => request.header("Authorization", &format!("Bearer {t}")),
            None => request,
        }
    }

    /// Sends a request, classifying failures; `what` names the repo or file for the errors a user acts on.
    fn call(&self, request: Request, what: &str) -> std::result::Result<Response, Failure> {
        match request.call() {
            Ok(r) if r.status().is_success() => Ok(r),
            Ok(r) => Err(classify(r.status().as_u16(), r.status().canonical_reason().unwrap_or(""), what, self.settings)),
            Err(e) => Err(Failure::Retry(e.to_string())),
        }
    }

    /// Repeats `attempt` while it fails in a way worth retrying, waiting longer each time; an attempt that made
    /// progress (`attempt` returns it through `progressed`) resets the count.
    fn with_retries<T>(&self, what: &str, mut attempt: impl FnMut(&mut bool) -> std::result::Result<T, Failure>) -> Result<T> {
        let mut failures = 0;
        loop {
            let mut progressed = false;
            match attempt(&mut progressed) {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(why)) => {
                    failures = if progressed { 1 } else { failures + 1 };
                    if failures > self.settings.retries {
                        bail!("{what}: giving up after {failures} failed attempts, the last: {why}");
                    }
                    let wait = self.settings.backoff.saturating_mul(1 << (failures - 1).min(16)).min(Duration::from_secs(30));
                    if self.settings.progress {
                        eprintln!("{what}: {why}; retrying in {:.1} s", wait.as_secs_f64());
                    }
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

/// The one error a user sees for a refused request: the status, what it means, what to do.
fn classify(code: u16, text: &str, what: &str, settings: &HubSettings) -> Failure {
    let endpoint = &settings.endpoint;
    let token = if settings.token.is_some() { "the token sent (HF_TOKEN or the token file) was not enough" } else { "no token was sent" };
    let message = match code {
        401 => format!("{what}: HTTP 401 Unauthorized from {endpoint}: the repo is gated or private, or does not exist ({token}). Set HF_TOKEN (or run `huggingface-cli login`) with a token that can read it, and accept the model's licence on its Hub page"),
        403 => format!("{what}: HTTP 403 Forbidden from {endpoint}: the repo is gated and this token may not read it ({token}). Accept the model's licence on its Hub page (approval can take a while), or set HF_TOKEN to a token with access"),
        404 => format!("{what}: HTTP 404 Not Found at {endpoint}: check the model id and the revision"),
        429 | 500..=599 => return Failure::Retry(format!("HTTP {code} {text}")),
        _ => format!("{what}: HTTP {code} {text} from {endpoint}"),
    };
    Failure::Fatal(anyhow::anyhow!(message))
}

fn progress_bar(settings: &HubSettings, size: u64, name: &str) -> ProgressBar {
    let visible = settings.progress && std::io::stderr().is_terminal();
    let bar = ProgressBar::with_draw_target(Some(size), if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    bar.set_style(ProgressStyle::with_template("{msg:<32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}").expect("valid template").progress_chars("=> "));
    bar.set_message(name.to_string());
    bar
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

/// Downloads what `need` asks for of `repo_id` at `revision` into the cache (files already there are kept) and
/// returns the snapshot folder.
pub fn download(settings: &HubSettings, repo_id: &str, revision: &str, need: Need) -> Result<PathBuf> {
    if settings.offline {
        return Err(super::offline_error(settings, repo_id, revision, None));
    }
    let client = Client::new(settings);
    let what = format!("model `{repo_id}` (revision {revision})");
    let url = format!("{}/api/models/{}/revision/{}?blobs=true", settings.endpoint, encode(repo_id, true), encode(revision, false));
    let listing: Listing = client.with_retries(&what, |_| {
        let mut response = client.call(client.get(&url), &what)?;
        // A repo of many files lists them all: more than the client's default 10 MB cap on a body read whole.
        let text = response.body_mut().with_config().limit(256 << 20).read_to_string().map_err(|e| Failure::Retry(format!("reading the file list: {e}")))?;
        serde_json::from_str(&text).map_err(|e| Failure::Fatal(anyhow::anyhow!("{what}: the file list from {url} is not what the Hub API returns: {e}")))
    })?;
    let commit = listing.sha.to_ascii_lowercase();
    if !is_commit_hash(&commit) {
        bail!("{what}: the Hub API gave `{}` as the commit, not a 40-digit hash", listing.sha);
    }
    let files: BTreeMap<&str, &Sibling> = listing.siblings.iter().map(|s| (s.rfilename.as_str(), s)).collect();
    if !files.contains_key("config.json") {
        bail!("{what} has no config.json at its top level: not a transformers checkpoint");
    }
    let repo = RepoCache::new(&settings.cache, repo_id);
    let fetch = |name: &str| -> Result<PathBuf> { fetch_into_snapshot(&client, &repo, repo_id, &commit, &Remote::from_sibling(files[name])?) };
    let mut wanted: Vec<&str> = TEXT_FILES.iter().copied().filter(|f| files.contains_key(f)).collect();
    if need == Need::Weights {
        if files.contains_key(INDEX) {
            let index = fetch(INDEX)?;
            wanted.push(INDEX);
            for shard in shards(&index)? {
                let known = files.get_key_value(shard.as_str()).map(|(k, _)| *k);
                match known {
                    Some(k) if !k.contains('/') => wanted.push(k),
                    _ => bail!("{what}: {INDEX} names the shard `{shard}`, which is not a file at the repo's top level"),
                }
            }
        } else if files.contains_key(SINGLE) {
            wanted.push(SINGLE);
        } else {
            let others: Vec<&str> = files.keys().copied().filter(|f| [".bin", ".pth", ".pt", ".gguf", ".onnx", ".safetensors", ".h5", ".msgpack"].iter().any(|e| f.ends_with(e))).take(6).collect();
            bail!("{what} has no {SINGLE} or {INDEX} (weights found: {}): the trainer reads safetensors checkpoints only", if others.is_empty() { "none".to_string() } else { others.join(", ") });
        }
    }
    let missing: Vec<Remote> = wanted.iter().filter(|f| !repo.snapshot(&commit).join(f).is_file()).map(|f| Remote::from_sibling(files[f])).collect::<Result<_>>()?;
    if settings.progress && !missing.is_empty() {
        let total: u64 = missing.iter().map(|r| r.size).sum();
        eprintln!("downloading {repo_id} (revision {revision}, commit {}): {} file(s), {} into {}", &commit[..12], missing.len(), human(total), settings.cache.display());
    }
    for remote in &missing {
        fetch_into_snapshot(&client, &repo, repo_id, &commit, remote)?;
    }
    repo.write_ref(revision, &commit)?;
    Ok(repo.snapshot(&commit))
}

/// The shard file names a safetensors index lists.
fn shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = crate::jsonutil::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).with_context(|| format!("{} has no `weight_map` object", index.display()))?;
    let set: std::collections::BTreeSet<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
    Ok(set.into_iter().collect())
}

/// Makes `remote` a file of the snapshot: its blob (downloaded unless the cache has it) linked under its name.
fn fetch_into_snapshot(client: &Client, repo: &RepoCache, repo_id: &str, commit: &str, remote: &Remote) -> Result<PathBuf> {
    let in_snapshot = repo.snapshot(commit).join(&remote.name);
    if in_snapshot.is_file() {
        return Ok(in_snapshot);
    }
    let blob = repo.blob(&remote.etag);
    if !blob.metadata().is_ok_and(|m| m.is_file() && m.len() == remote.size) {
        fetch_blob(client, repo, repo_id, commit, remote)?;
    }
    repo.link(commit, &remote.name, &remote.etag)
}

/// Downloads one blob under a lock (other trainer processes — shards of one sweep, `--gpus` children — and
/// huggingface_hub wait for it rather than writing the same file), resuming any partial download.
fn fetch_blob(client: &Client, repo: &RepoCache, repo_id: &str, commit: &str, remote: &Remote) -> Result<()> {
    let blob = repo.blob(&remote.etag);
    let lock_path = repo.lock(&remote.etag);
    for dir in [blob.parent(), lock_path.parent()].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).with_context(|| format!("cannot open {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if blob.metadata().is_ok_and(|m| m.is_file() && m.len() == remote.size) {
        return Ok(());
    }
    let part = repo.incomplete(&remote.etag);
    let url = format!("{}/{}/resolve/{}/{}", client.settings.endpoint, encode(repo_id, true), commit, encode(&remote.name, true));
    let what = format!("downloading {} of `{repo_id}`", remote.name);
    let bar = progress_bar(client.settings, remote.size, &remote.name);
    let mut hasher = Hasher::new(remote.sha256.is_some());
    client.with_retries(&what, |progressed| {
        let fatal = |e: std::io::Error, doing: &str| Failure::Fatal(anyhow::anyhow!("{doing} {}: {e}", part.display()));
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&part).map_err(|e| fatal(e, "cannot open"))?;
        let mut have = file.metadata().map_err(|e| fatal(e, "cannot read"))?.len();
        if have > remote.size {
            file.set_len(0).map_err(|e| fatal(e, "cannot truncate"))?;
            have = 0;
        }
        hasher.catch_up(&part, have).map_err(|e| fatal(e, "cannot read"))?;
        if have == remote.size {
            return hasher.check(remote).map_err(|why| restart(&file, &mut hasher, why));
        }
        bar.set_position(have);
        let mut request = client.get(&url);
        if have > 0 {
            request = request.header("Range", &format!("bytes={have}-"));
        }
        let response = match request.call() {
            Ok(r) if r.status().as_u16() == 416 => return Err(restart(&file, &mut hasher, "the server refused the range".into())),
            Ok(r) if !r.status().is_success() => return Err(classify(r.status().as_u16(), r.status().canonical_reason().unwrap_or(""), &what, client.settings)),
            Ok(r) => r,
            Err(e) => return Err(Failure::Retry(e.to_string())),
        };
        match response.status().as_u16() {
            206 => {
                let start = response.headers().get("Content-Range").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("bytes ")).and_then(|v| v.split('-').next()).and_then(|s| s.trim().parse::<u64>().ok());
                if start != Some(have) {
                    return Err(restart(&file, &mut hasher, format!("the server resumed at {start:?}, not at byte {have}")));
                }
            }
            // The whole file: the server ignored the range.
            _ if have > 0 => {
                file.set_len(0).map_err(|e| fatal(e, "cannot truncate"))?;
                hasher.reset();
                bar.set_position(0);
            }
            _ => {}
        }
        let mut reader = response.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 18];
        loop {
            // Ctrl-C in a sweep (its handler only sets this flag): stop here, keeping the partial file to resume.
            if crate::sweep::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Failure::Fatal(anyhow::anyhow!("interrupted: {} of {} bytes of {} are kept in {}; run again to resume", bar.position(), remote.size, remote.name, part.display())));
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Retry(format!("the connection broke after {} of {} bytes: {e}", bar.position(), remote.size))),
            };
            file.write_all(&buf[..n]).map_err(|e| fatal(e, "cannot write"))?;
            hasher.update(&buf[..n]);
            bar.inc(n as u64);
            *progressed = true;
        }
        let len = file.metadata().map_err(|e| fatal(e, "cannot read"))?.len();
        if len != remote.size {
            // A body that ended early without an error, or a longer one: the next attempt resumes or restarts.
            return Err(Failure::Retry(format!("got {len} of {} bytes", remote.size)));
        }
        hasher.check(remote).map_err(|why| restart(&file, &mut hasher, why))?;
        file.sync_all().map_err(|e| fatal(e, "cannot write"))
    })?;
    bar.finish_and_clear();
    std::fs::rename(&part, &blob).with_context(|| format!("cannot rename {} to {}", part.display(), blob.display()))?;
    // The bar is cleared: a line stays for each file, in a terminal and in a log alike.
    if client.settings.progress {
        eprintln!("fetched {} ({})", remote.name, human(remote.size));
    }
    drop(lock);
    Ok(())
}

/// Starts a file over (after a bad range answer or a hash mismatch): the attempt counts as failed.
fn restart(file: &std::fs::File, hasher: &mut Hasher, why: String) -> Failure {
    hasher.reset();
    match file.set_len(0) {
        Ok(()) => Failure::Retry(format!("{why}; starting the file over")),
        Err(e) => Failure::Fatal(anyhow::anyhow!("cannot truncate a partial download: {e}")),
    }
}

/// The sha256 of what has been written so far, when the Hub gave one to check against. A partial file left by an
/// earlier run is hashed once from disk, then every new byte as it is written.
struct Hasher {
    state: Option<Sha256>,
    hashed: u64,
}

impl Hasher {
    fn new(enabled: bool) -> Self {
        Self { state: enabled.then(Sha256::new), hashed: 0 }
    }

    fn reset(&mut self) {
        if self.state.is_some() {
            self.state = Some(Sha256::new());
        }
        self.hashed = 0;
    }

    fn update(&mut self, bytes: &[u8]) {
        if let Some(s) = &mut self.state {
            s.update(bytes);
        }
        self.hashed += bytes.len() as u64;
    }

    /// Brings the hash to the file's first `len` bytes.
    fn catch_up(&mut self, path: &Path, len: u64) -> std::io::Result<()> {
        if self.hashed == len {
            return Ok(());
        }
        self.reset();
        if self.state.is_none() {
            self.hashed = len;
            return Ok(());
        }
        let mut file = std::fs::File::open(path)?.take(len);
        let mut buf = vec![0u8; 1 << 18];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.update(&buf[..n]);
        }
        Ok(())
    }

    fn check(&self, remote: &Remote) -> std::result::Result<(), String> {
        match (&self.state, &remote.sha256) {
            (Some(s), Some(want)) => {
                let got: String = s.clone().finalize().iter().map(|b| format!("{b:02x}")).collect();
                if &got == want {
                    Ok(())
                } else {
                    Err(format!("sha256 {got} differs from the Hub's {want}"))
                }
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hosts() {
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode("org/My.Model-1_b", true), "org/My.Model-1_b");
        assert_eq!(encode("a b", true), "a%20b");
        assert!(is_loopback("http://127.0.0.1:8080"));
        assert!(is_loopback("http://localhost/x"));
        assert!(!is_loopback("https://huggingface.co"));
        assert!(!is_loopback("https://localhost.example.com"));
    }
}
