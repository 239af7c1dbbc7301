//! Chat templates — the model's own Jinja `chat_template` or a built-in (llama2-chat, gemma, chatml) — with
//! response-only loss masks: each assistant turn's content and its end-of-turn marker are targets.
//!
//! Masks come from rendering prefixes: for assistant turn k, the text the template adds between "conversation up
//! to turn k with the generation prompt" and "conversation up to and including turn k" is that turn's answer
//! (content + end-of-turn marker); trailing whitespace after the marker is left out. The full text is tokenized
//! once (the template writes BOS itself, as transformers' `apply_chat_template` does) and a token is a target
//! when it starts inside an answer span.

use super::record::{Conversation, Role, Turn};
use crate::tokenizer::TextTokenizer;
use anyhow::{anyhow, bail, Context, Result};
use minijinja::{context, Environment, Error, ErrorKind};

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma's template as shipped in gemma-*-it tokenizer_config.json.
const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";

/// The Llama-2-chat template of transformers (system prompt folded into the first user turn).
const LLAMA2_CHAT: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

impl ChatTemplate {
    /// "llama2-chat", "gemma", "chatml", or "model" (the tokenizer's own chat_template).
    pub fn from_name(name: &str, tokenizer: &TextTokenizer) -> Result<Self> {
        let source = match name {
            "llama2-chat" => LLAMA2_CHAT.to_string(),
            "gemma" => GEMMA.to_string(),
            "chatml" => CHATML.to_string(),
            "model" => tokenizer.chat_template.clone().context(
                "tokenizer_config.json has no chat_template; pick a built-in template (alpaca, llama2-chat, gemma, chatml)",
            )?,
            other => bail!("unknown template `{other}` (alpaca, llama2-chat, gemma, chatml, model)"),
        };
        Self::from_source(source, tokenizer)
    }

    pub fn from_source(source: String, tokenizer: &TextTokenizer) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> { Err(Error::new(ErrorKind::InvalidOperation, msg)) });
        env.add_template_owned("chat", source).map_err(|e| anyhow!("chat template does not parse: {e}"))?;
        Ok(Self { env, bos: tokenizer.bos_token.clone().unwrap_or_default(), eos: tokenizer.eos_token.clone().unwrap_or_default() })
    }

    /// Renders the first `n` turns of `conv`.
    pub fn render(&self, conv: &Conversation, n: usize, add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<_> = conv.turns[..n].iter().map(|t| context! { role => role_name(t.role), content => t.content.clone() }).collect();
        let tmpl = self.env.get_template("chat").expect("added in from_source");
        tmpl.render(context! { messages, bos_token => self.bos.clone(), eos_token => self.eos.clone(), add_generation_prompt })
            .map_err(|e| anyhow!("chat template: {}", e.detail().map(str::to_string).unwrap_or_else(|| e.to_string())))
    }

    /// The marker the template writes after an assistant turn's content (`<|im_end|>` for ChatML, `<end_of_turn>`
    /// for Gemma, `</s>` for Llama-2-chat, `<|eot_id|>` for Llama-3): the text after a rendered answer up to the
    /// first whitespace after it. None when the template writes nothing there, or cannot render a one-turn
    /// exchange (then only the model's end-of-sequence ids end an answer).
    pub fn end_of_turn(&self) -> Option<String> {
        const ANSWER: &str = "PONG-7f3a";
        let conv = Conversation { turns: vec![Turn { role: Role::User, content: "PING".into() }, Turn { role: Role::Assistant, content: ANSWER.into() }] };
        let text = self.render(&conv, 2, false).ok()?;
        let after = text[text.rfind(ANSWER)? + ANSWER.len()..].trim_start();
        let marker: String = after.chars().take_while(|c| !c.is_whitespace()).collect();
        (!marker.is_empty()).then_some(marker)
    }

    /// The rendered conversation and the byte spans of its answers.
    pub fn render_with_spans(&self, conv: &Conversation) -> Result<(String, Vec<(usize, usize)>)> {
        let full = self.render(conv, conv.turns.len(), false)?;
        let mut spans = Vec::new();
        for (k, t) in conv.turns.iter().enumerate() {
            if t.role != Role::Assistant {
                continue;
            }
            let before = self.render(conv, k, true)?;
            let upto = self.render(conv, k + 1, false)?;
            if !upto.starts_with(&before) || !full.starts_with(&upto) {
                bail!("the chat template does not render conversations prefix by prefix, so response masks cannot be derived");
            }
            let answer = upto[before.len()..].trim_end();
            spans.push((before.len(), before.len() + answer.len()));
        }
        Ok((full, spans))
    }

    /// Token ids of the rendered conversation and the per-token target mask.
    pub fn encode(&self, conv: &Conversation, tokenizer: &TextTokenizer) -> Result<(Vec<u32>, Vec<bool>)> {
        let (text, spans) = self.render_with_spans(conv)?;
        let (ids, offsets) = tokenizer.encode_with_offsets(&text)?;
        let mask = offsets.iter().map(|&(start, _)| spans.iter().any(|&(a, b)| start >= a && start < b)).collect();
        Ok((ids, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::record::Turn;

    fn shared(family: &str) -> Option<TextTokenizer> {
        let dir = crate::testing::shared(&format!("tokenizers/{family}"))?;
        Some(TextTokenizer::from_files(&dir.join("tokenizer.json"), Some(&dir.join("tokenizer_config.json"))).unwrap())
    }

    fn conv(turns: &[(Role, &str)]) -> Conversation {
        Conversation { turns: turns.iter().map(|(r, c)| Turn { role: *r, content: c.to_string() }).collect() }
    }

    /// The target tokens decoded back to text, answer by answer.
    fn targets(tok: &TextTokenizer, t: &ChatTemplate, c: &Conversation) -> String {
        let (text, _) = t.render_with_spans(c).unwrap();
        let (_, offsets) = tok.encode_with_offsets(&text).unwrap();
        let (_, mask) = t.encode(c, tok).unwrap();
        // Byte-fallback tokens of one character share its offsets: take each byte range once.
        let mut out = String::new();
        let mut end = 0;
        for (&(a, b), m) in offsets.iter().zip(mask) {
            if m && b > end {
                out.push_str(&text[a.max(end)..b]);
            }
            end = end.max(b);
        }
        out
    }

    #[test]
    fn gemma_matches_the_shipped_template_and_known_ids() {
        let Some(tok) = shared("gemma") else { return };
        let c = conv(&[(Role::User, "Hello!"), (Role::Assistant, " Hi there. ")]);
        for name in ["gemma", "model"] {
            let t = ChatTemplate::from_name(name, &tok).unwrap();
            let text = t.render(&c, 2, false).unwrap();
            assert_eq!(text, "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\nHi there.<end_of_turn>\n");
            // SOURCES.md: the prompt part encodes to these ids with <start_of_turn>/<end_of_turn> as single tokens.
            let (ids, mask) = t.encode(&c, &tok).unwrap();
            assert_eq!(&ids[..11], &[2, 106, 1645, 108, 4521, 235341, 107, 108, 106, 2516, 108]);
            assert!(mask[..11].iter().all(|m| !m));
            assert_eq!(targets(&tok, &t, &c), "Hi there.<end_of_turn>");
        }
        let sys = conv(&[(Role::System, "s"), (Role::User, "u"), (Role::Assistant, "a")]);
        let e = ChatTemplate::from_name("gemma", &tok).unwrap().encode(&sys, &tok).unwrap_err().to_string();
        assert!(e.contains("System role not supported"), "{e}");
    }

    #[test]
    fn chatml_and_qwen_model_template_mask_every_answer() {
        let Some(tok) = shared("qwen1.5") else { return };
        let c = conv(&[(Role::User, "Hola"), (Role::Assistant, "¡Hola!"), (Role::User, "你好"), (Role::Assistant, "你好！")]);
        let t = ChatTemplate::from_name("chatml", &tok).unwrap();
        assert_eq!(t.render(&c, 4, false).unwrap(), "<|im_start|>user\nHola<|im_end|>\n<|im_start|>assistant\n¡Hola!<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n你好！<|im_end|>\n");
        assert_eq!(targets(&tok, &t, &c), "¡Hola!<|im_end|>你好！<|im_end|>");
        // Qwen1.5's own template adds its default system prompt.
        let m = ChatTemplate::from_name("model", &tok).unwrap();
        assert!(m.render(&c, 4, false).unwrap().starts_with("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"));
        assert_eq!(targets(&tok, &m, &c), "¡Hola!<|im_end|>你好！<|im_end|>");
    }

    #[test]
    fn llama2_chat_folds_the_system_prompt() {
        let Some(tok) = shared("llama2") else { return };
        let c = conv(&[(Role::System, "Be brief."), (Role::User, "Hi"), (Role::Assistant, "Hello."), (Role::User, "Bye"), (Role::Assistant, "Bye.")]);
        let t = ChatTemplate::from_name("llama2-chat", &tok).unwrap();
        assert_eq!(t.render(&c, 5, false).unwrap(), "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST] Bye. </s>");
        let (ids, _) = t.encode(&c, &tok).unwrap();
        assert_eq!(ids[0], 1, "<s> is the BOS token, written once by the template");
        let answers = targets(&tok, &t, &c);
        assert_eq!(answers.split_whitespace().collect::<Vec<_>>(), ["Hello.", "</s>", "Bye.", "</s>"]);
        let e = ChatTemplate::from_name("model", &tok).err().unwrap().to_string();
        assert!(e.contains("has no chat_template"), "{e}");
    }

    /// Each family's end of turn, and its id in the real tokenizer (tokenizer.json's added tokens / vocab): Qwen's
    /// own template ends a turn with <|im_end|> (151645), Gemma's with <end_of_turn> (107), Llama-2-chat's with
    /// the EOS </s> (2).
    #[test]
    fn end_of_turn_markers_are_the_families_tokens() {
        for (family, template, marker, id) in [("qwen1.5", "model", "<|im_end|>", 151645), ("gemma", "gemma", "<end_of_turn>", 107), ("llama2", "llama2-chat", "</s>", 2)] {
            let Some(tok) = shared(family) else { return };
            let t = ChatTemplate::from_name(template, &tok).unwrap();
            assert_eq!(t.end_of_turn().as_deref(), Some(marker), "{family} {template}");
            assert_eq!(tok.token_to_id(marker), Some(id), "{family}");
        }
        let Some(tok) = shared("qwen1.5") else { return };
        assert_eq!(ChatTemplate::from_name("chatml", &tok).unwrap().end_of_turn().as_deref(), Some("<|im_end|>"));
        // A template that writes nothing after an answer has no marker.
        assert_eq!(ChatTemplate::from_source("{% for m in messages %}{{ m['content'] }}{% endfor %}".into(), &tok).unwrap().end_of_turn(), None);
    }

    /// Rendered text and ids against transformers' `apply_chat_template` (tests/fixtures/chat/expected.json, made
    /// by gen_chat_fixtures.py); and every answer, exactly as the conversation holds it (modulo the template's
    /// trimming), sits inside the target tokens.
    #[test]
    fn renders_and_ids_match_transformers() {
        let path = crate::testing::fixtures_dir().join("chat/expected.json");
        let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = expected["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 13);
        for case in cases {
            let what = format!("{} {} {}", case["tokenizer"], case["template"], case["conversation"]);
            let Some(tok) = shared(case["tokenizer"].as_str().unwrap()) else { return };
            let t = ChatTemplate::from_name(case["template"].as_str().unwrap(), &tok).unwrap();
            let turns: Vec<(Role, String)> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let role = match m["role"].as_str().unwrap() {
                        "system" => Role::System,
                        "user" => Role::User,
                        _ => Role::Assistant,
                    };
                    (role, m["content"].as_str().unwrap().to_string())
                })
                .collect();
            let c = Conversation { turns: turns.iter().map(|(r, x)| Turn { role: *r, content: x.clone() }).collect() };
            assert_eq!(t.render(&c, c.turns.len(), false).unwrap(), case["text"].as_str().unwrap(), "{what}");
            let (ids, mask) = t.encode(&c, &tok).unwrap();
            let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(ids, want, "{what}");
            let answers = targets(&tok, &t, &c);
            for (r, x) in &turns {
                if *r == Role::Assistant {
                    assert!(answers.contains(x.trim()), "{what}: answer {x:?} not in targets {answers:?}");
                } else {
                    assert!(!answers.contains(x.trim()), "{what}: {x:?} must not be a target");
                }
            }
            assert!(mask.iter().any(|&m| m) && !mask[0], "{what}");
        }
    }
}
