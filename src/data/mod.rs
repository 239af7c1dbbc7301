//! Instruction data: reading records, rendering them with a template and tokenizing them into [`batch::Example`]s.
//! [`pipeline`] ties the steps together: read ([`reader`]), parse ([`format`]), mix ([`mix`]), template and tokenize.

pub mod batch;
pub mod chat;
mod csv_rows;
pub mod devset;
pub mod filter;
pub mod format;
pub mod mix;
pub mod pipeline;
pub mod reader;
pub mod record;
pub mod template;

use crate::tokenizer::TextTokenizer;
use anyhow::{bail, Result};
use batch::Example;

/// Which tokens carry loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainOn {
    /// Response tokens and the closing EOS only (the studies' setting).
    Response,
    /// Every token after the first.
    All,
}

impl TrainOn {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "response" => Ok(TrainOn::Response),
            "all" => Ok(TrainOn::All),
            other => bail!("train_on must be \"response\" or \"all\", not `{other}`"),
        }
    }
}

/// Tokenizes one prompt/response pair:
/// `encode(prompt, with special tokens) + encode(response, without) + [eos]`, cut at `max_seq_len` from the end
/// (the prompt's start is always kept).
pub fn tokenize_pair(tok: &TextTokenizer, prompt: &str, response: &str, eos: u32, max_seq_len: usize, train_on: TrainOn) -> Result<Example> {
    let mut ids = tok.encode(prompt, true)?;
    let prompt_len = ids.len();
    ids.extend(tok.encode(response, false)?);
    ids.push(eos);
    let mut is_target: Vec<bool> = (0..ids.len()).map(|i| train_on == TrainOn::All || i >= prompt_len).collect();
    let truncated = ids.len() > max_seq_len;
    ids.truncate(max_seq_len);
    is_target.truncate(max_seq_len);
    Ok(Example::new(ids, is_target, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TextTokenizer {
        let dir = crate::testing::fixtures_dir().join("models/llama-gqa");
        TextTokenizer::from_files(&dir.join("tokenizer.json"), Some(&dir.join("tokenizer_config.json"))).unwrap()
    }

    #[test]
    fn sequence_is_prompt_with_bos_then_response_then_eos() {
        let tok = tokenizer();
        let e = tokenize_pair(&tok, "Q: hola\n", "adiós", 2, 512, TrainOn::Response).unwrap();
        let prompt = tok.encode("Q: hola\n", true).unwrap();
        let response = tok.encode("adiós", false).unwrap();
        assert_eq!(prompt[0], 1, "the fixture tokenizer adds BOS");
        assert_eq!(e.ids, [prompt.clone(), response.clone(), vec![2]].concat());
        let targets: Vec<bool> = (0..e.ids.len()).map(|i| i >= prompt.len()).collect();
        assert_eq!(e.is_target, targets);
        assert_eq!(e.target_tokens(), response.len() + 1);
        assert!(!e.truncated);

        let all = tokenize_pair(&tok, "Q: hola\n", "adiós", 2, 512, TrainOn::All).unwrap();
        assert_eq!(all.target_tokens(), all.ids.len() - 1);
    }

    #[test]
    fn truncation_keeps_the_prompt_start() {
        let tok = tokenizer();
        let full = tokenize_pair(&tok, "a long prompt with several words\n", "and a response", 2, 512, TrainOn::Response).unwrap();
        let cut = tokenize_pair(&tok, "a long prompt with several words\n", "and a response", 2, 5, TrainOn::Response).unwrap();
        assert!(cut.truncated);
        assert_eq!(cut.ids, full.ids[..5]);
        assert_eq!(cut.target_tokens(), 0, "the response fell off the end");
    }
}
