//! A loaded base model with its tokenizer and special tokens: what both `run` and `eval` start from.

use crate::checkpoint::{self, ModelFiles};
use crate::data::alpaca;
use crate::data::batch::Example;
use crate::data::template::Template;
use crate::data::{tokenize_pair, TrainOn};
use crate::model::Model;
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use std::path::Path;

pub struct Session {
    pub files: ModelFiles,
    pub model: Model,
    pub tokenizer: TextTokenizer,
    pub eos_id: u32,
    pub pad_id: u32,
}

/// `eos_token_id` of generation_config.json, when config.json has none.
fn generation_eos(files: &ModelFiles) -> Option<u32> {
    let text = std::fs::read_to_string(files.generation_config.as_ref()?).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    match json.get("eos_token_id")? {
        serde_json::Value::Array(a) => a.first()?.as_u64().map(|x| x as u32),
        v => v.as_u64().map(|x| x as u32),
    }
}

impl Session {
    pub fn open(model: &str, base_dir: Option<&Path>, dtype: DType, device: &Device) -> Result<Self> {
        let files = checkpoint::locate(model, base_dir)?;
        let model = Model::load(&files, dtype, device)?;
        let tokenizer = TextTokenizer::load(&files)?;
        let eos_id = model
            .cfg
            .eos_token_ids
            .first()
            .copied()
            .or_else(|| generation_eos(&files))
            .or_else(|| tokenizer.eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)))
            .with_context(|| format!("{}: no eos_token_id in config.json or generation_config.json, and no eos_token in tokenizer_config.json", files.dir.display()))?;
        // Padding is never attended to nor scored, so any valid id works when the config names none.
        let pad_id = model.cfg.pad_token_id.unwrap_or(eos_id);
        Ok(Self { files, model, tokenizer, eos_id, pad_id })
    }

    /// Reads an alpaca file and tokenizes every record. Returns the examples.
    pub fn alpaca_examples(&self, path: &Path, template: Template, max_seq_len: usize, train_on: TrainOn) -> Result<Vec<Example>> {
        alpaca::read(path)?
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (prompt, response) = template.render(r);
                let example = tokenize_pair(&self.tokenizer, &prompt, &response, self.eos_id, max_seq_len, train_on)
                    .with_context(|| format!("{}: record {i}", path.display()))?;
                // A tokenizer that does not belong to the checkpoint shows up here, not as an index error deep inside.
                if let Some(&bad) = example.ids.iter().find(|&&id| id as usize >= self.model.cfg.vocab_size) {
                    anyhow::bail!(
                        "{}: record {i}: token id {bad} is outside the model's vocabulary ({} entries); is tokenizer.json from this checkpoint?",
                        path.display(),
                        self.model.cfg.vocab_size
                    );
                }
                Ok(example)
            })
            .collect()
    }
}
