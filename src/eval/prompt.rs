//! A benchmark prompt as lm-evaluation-harness builds it — a list of messages, each with the delimiter that follows
//! it in plain text — and its rendering with the model's training template (`--template`). Multiple choice and QA
//! both go through [`render`], so every format picks up the template the same way.
//!
//! lm-eval's `fewshot_context`: a few-shot example is a user message (the question, followed by the target
//! delimiter) and an assistant message (the target, followed by the few-shot delimiter); the item itself is a user
//! message with no delimiter. Without a chat template the messages are concatenated with their delimiters. With
//! `--apply_chat_template` and `fewshot_as_multiturn` (simple_evaluate's default, True) every message is its own
//! chat turn, delimiters dropped, and the template adds the generation prompt; a task's description is a system
//! message before them.

use crate::data::chat::ChatTemplate;
use crate::data::record::{AlpacaFields, Conversation, Role, Turn};
use crate::tokenizer::TextTokenizer;
use anyhow::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// What follows the message in plain text (lm-eval's `Message._delimiter`).
    pub delimiter: String,
}

impl Message {
    pub fn user(content: impl Into<String>, delimiter: impl Into<String>) -> Self {
        Message { role: Role::User, content: content.into(), delimiter: delimiter.into() }
    }
    pub fn assistant(content: impl Into<String>, delimiter: impl Into<String>) -> Self {
        Message { role: Role::Assistant, content: content.into(), delimiter: delimiter.into() }
    }
}

/// lm-eval's `build_qa_turn` for a few-shot example: the question then, when the target is non-empty, the target.
pub fn example_turn(question: &str, target: &str, target_delimiter: &str, fewshot_delimiter: &str) -> Vec<Message> {
    if target.is_empty() {
        return vec![Message::user(question, "")];
    }
    vec![Message::user(question, target_delimiter), Message::assistant(target, fewshot_delimiter)]
}

/// The template a benchmark prompt is wrapped in.
pub enum PromptTemplate {
    /// As lm-eval prompts base models: the plain text.
    None,
    /// The study's alpaca template, the plain text as the instruction (lm-eval has no alpaca mode: this is what a
    /// model trained on alpaca-formatted data sees).
    Alpaca,
    /// A chat template (the trainer's built-ins or the model's own), as lm-eval's `--apply_chat_template` with
    /// `fewshot_as_multiturn`.
    Chat(Box<ChatTemplate>),
}

impl PromptTemplate {
    /// "none", "alpaca", "chatml", "gemma", "llama2-chat" or "model" (the tokenizer's own chat template).
    pub fn parse(name: &str, tokenizer: &TextTokenizer) -> Result<Self> {
        Ok(match name {
            "none" => PromptTemplate::None,
            "alpaca" => PromptTemplate::Alpaca,
            "chatml" | "gemma" | "llama2-chat" | "model" => PromptTemplate::Chat(Box::new(ChatTemplate::from_name(name, tokenizer)?)),
            other => anyhow::bail!("unknown template `{other}` for a benchmark (none, alpaca, chatml, gemma, llama2-chat, model)"),
        })
    }
}

/// The template names a benchmark accepts (checked before a tokenizer is at hand).
pub const TEMPLATES: [&str; 6] = ["none", "alpaca", "chatml", "gemma", "llama2-chat", "model"];

fn plain_text(messages: &[Message]) -> String {
    messages.iter().map(|m| format!("{}{}", m.content, m.delimiter)).collect()
}

/// The prompt's text under `template`.
pub fn render(messages: &[Message], template: &PromptTemplate) -> Result<String> {
    Ok(match template {
        PromptTemplate::None => plain_text(messages),
        PromptTemplate::Alpaca => {
            // lm-eval's single-turn collapse (`multiturn_to_singleturn`): the last message loses its delimiter.
            let fields = AlpacaFields { instruction: plain_text(messages), input: String::new() };
            crate::data::template::Template::Alpaca.render(&fields, "").0
        }
        PromptTemplate::Chat(t) => {
            let conv = |keep_system: bool| Conversation { turns: messages.iter().filter(|m| keep_system || m.role != Role::System).map(|m| Turn { role: m.role, content: m.content.clone() }).collect() };
            let with_system = conv(true);
            match t.render(&with_system, with_system.turns.len(), true) {
                Ok(text) => text,
                // lm-eval's HF model, when the template refuses the conversation (Gemma's raises on a system role),
                // renders it again without its system messages: the task's description is then left out.
                Err(_) if messages.iter().any(|m| m.role == Role::System) => {
                    let without = conv(false);
                    t.render(&without, without.turns.len(), true)?
                }
                Err(e) => return Err(e),
            }
        }
    })
}

/// Token ids of a rendered prompt as lm-eval's HF model encodes a context: with the tokenizer's special tokens,
/// unless the text already starts with the BOS token (a chat template wrote it).
pub fn encode(text: &str, tokenizer: &TextTokenizer) -> Result<Vec<u32>> {
    let has_bos = tokenizer.bos_token.as_deref().is_some_and(|b| !b.is_empty() && text.starts_with(b));
    tokenizer.encode(text, !has_bos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_prompts_concatenate_messages_with_their_delimiters() {
        let mut m = example_turn("Q1\nA:", "5", "", "\n\n");
        m.extend(example_turn("Q2\nA:", "7", " ", "\n\n"));
        m.push(Message::user("Q3\nA:", ""));
        assert_eq!(render(&m, &PromptTemplate::None).unwrap(), "Q1\nA:5\n\nQ2\nA: 7\n\nQ3\nA:");
        assert_eq!(example_turn("Q", "", " ", "\n\n"), vec![Message::user("Q", "")], "an empty target is no answer turn");
        let alpaca = render(&[Message::user("Q3\nA:", "")], &PromptTemplate::Alpaca).unwrap();
        assert!(alpaca.ends_with("### Instruction:\nQ3\nA:\n\n### Response:\n"), "{alpaca}");
    }

    #[test]
    fn a_template_that_refuses_the_system_role_renders_without_it() {
        let dir = crate::testing::fixtures_dir().join("models/llama-gqa");
        let tok = TextTokenizer::from_files(&dir.join("tokenizer.json"), Some(&dir.join("tokenizer_config.json"))).unwrap();
        let system = Message { role: Role::System, content: "About x.\n\n".into(), delimiter: String::new() };
        let item = Message::user("Q\nAnswer:", "");
        // Gemma's template raises on a system message; lm-eval's HF model then renders the turns without it.
        let gemma = PromptTemplate::parse("gemma", &tok).unwrap();
        assert_eq!(render(&[system.clone(), item.clone()], &gemma).unwrap(), render(std::slice::from_ref(&item), &gemma).unwrap());
        // ChatML takes it as a turn of its own.
        let chatml = PromptTemplate::parse("chatml", &tok).unwrap();
        assert_eq!(render(&[system, item], &chatml).unwrap(), "<|im_start|>system\nAbout x.\n\n<|im_end|>\n<|im_start|>user\nQ\nAnswer:<|im_end|>\n<|im_start|>assistant\n");
    }
}
