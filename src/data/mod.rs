//! Instruction data: reading records, rendering them with a template and tokenizing them into [`batch::Example`]s.
//! This is the seed of the data pipeline: today alpaca-format JSON arrays and the alpaca template.

pub mod alpaca;
pub mod batch;
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
    Ok(Example { ids, is_target, truncated })
}
