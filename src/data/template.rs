//! Prompt templates. Today: the alpaca template used by the native-vs-translated study.

use super::record::AlpacaFields;
use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    Alpaca,
}

impl Template {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "alpaca" => Ok(Template::Alpaca),
            other => bail!("unknown template `{other}` (available: alpaca)"),
        }
    }

    /// `(prompt, response)` of a single-turn record.
    pub fn render(self, r: &AlpacaFields, output: &str) -> (String, String) {
        match self {
            Template::Alpaca => {
                let prompt = if r.input.is_empty() {
                    format!(
                        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Response:\n",
                        r.instruction
                    )
                } else {
                    format!(
                        "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n",
                        r.instruction, r.input
                    )
                };
                (prompt, output.to_string())
            }
        }
    }
}
