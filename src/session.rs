//! A base model's text side (files, config, tokenizer, special ids) and, when training or evaluating, its
//! weights: what `run`, `eval` and `plan` start from.

use crate::checkpoint::{self, ModelFiles};
use crate::config::ModelConfig;
use crate::data::batch::Example;
use crate::data::format::Format;
use crate::data::pipeline::{Encoder, PromptTemplate};
use crate::data::TrainOn;
use crate::model::Model;
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use std::path::Path;

/// Everything about a checkpoint except its weights (enough to plan and tokenize).
pub struct ModelText {
    pub files: ModelFiles,
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    /// The end-of-sequence token training appends to every response.
    pub eos_id: u32,
    /// Every id that ends a generated answer: `eos_id` and each `eos_token_id` listed in config.json and
    /// generation_config.json (transformers' generate stops at any of generation_config's list, which chat models
    /// use for their end-of-turn token, e.g. Qwen2's `[<|im_end|>, <|endoftext|>]`, Llama-3's `[<|end_of_text|>,
    /// <|eom_id|>, <|eot_id|>]`).
    pub eos_ids: Vec<u32>,
    pub pad_id: u32,
}

/// Every `eos_token_id` of generation_config.json (a number or a list), in order; none when the model has no such
/// file or key. A file that is there but unreadable is an error naming it, not a silent fallback to another
/// end-of-sequence token.
fn generation_eos(files: &ModelFiles) -> Result<Vec<u32>> {
    let Some(path) = files.generation_config.as_ref() else { return Ok(Vec::new()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value = crate::jsonutil::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let listed = match json.get("eos_token_id") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(serde_json::Value::Null) | None => Vec::new(),
        Some(other) => vec![other.clone()],
    };
    listed.iter().map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()).with_context(|| format!("{}: `eos_token_id` {v} is not a token id", path.display()))).collect()
}

impl ModelText {
    pub fn open(model: &str, base_dir: Option<&Path>) -> Result<Self> {
        Self::from_files(checkpoint::locate(model, base_dir)?)
    }

    /// The text side of located files (their weights may be absent: [`checkpoint::Need::Text`]).
    pub fn from_files(files: ModelFiles) -> Result<Self> {
        let config = ModelConfig::from_file(&files.config)?;
        let tokenizer = TextTokenizer::load(&files)?;
        let from_generation = generation_eos(&files)?;
        let eos_id = config
            .eos_token_ids
            .first()
            .copied()
            .or(from_generation.first().copied())
            .or_else(|| tokenizer.eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)))
            .with_context(|| format!("{}: no eos_token_id in config.json or generation_config.json, and no eos_token in tokenizer_config.json", files.dir.display()))?;
        // Padding is never attended to nor scored, so any valid id works when the config names none.
        let pad_id = config.pad_token_id.unwrap_or(eos_id);
        let mut eos_ids = vec![eos_id];
        for id in config.eos_token_ids.iter().chain(&from_generation) {
            if !eos_ids.contains(id) {
                eos_ids.push(*id);
            }
        }
        Ok(Self { files, config, tokenizer, eos_id, eos_ids, pad_id })
    }

    pub fn encoder(&self, template: &str, max_seq_len: usize, train_on: TrainOn) -> Result<Encoder<'_>> {
        Ok(Encoder {
            tokenizer: &self.tokenizer,
            template: PromptTemplate::from_name(template, &self.tokenizer).context("template")?,
            eos_id: self.eos_id,
            vocab_size: self.config.vocab_size,
            max_seq_len,
            train_on,
        })
    }

    /// Reads one data file (every record must be good) and tokenizes it with `template`.
    pub fn examples(&self, path: &Path, format: Format, template: &str, max_seq_len: usize, train_on: TrainOn) -> Result<Vec<Example>> {
        let records = crate::data::pipeline::read_file(path, format, None)?;
        self.encoder(template, max_seq_len, train_on)?.encode_all(&records)
    }
}

pub struct Session {
    pub text: ModelText,
    pub model: Model,
}

impl Session {
    pub fn open(model: &str, base_dir: Option<&Path>, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_files(checkpoint::locate(model, base_dir)?, dtype, device)
    }

    /// A session of located files, which must include the weights.
    pub fn from_files(files: ModelFiles, dtype: DType, device: &Device) -> Result<Self> {
        let text = ModelText::from_files(files)?;
        let model = Model::load(&text.files, dtype, device)?;
        Ok(Self { text, model })
    }
}
