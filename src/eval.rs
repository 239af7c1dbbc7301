//! Held-out loss and perplexity: token-weighted mean NLL over response tokens (and the EOS).

use crate::data::batch::{Batch, Example};
use crate::lora::Adapter;
use crate::model::Model;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub tokens: usize,
    pub perplexity: f64,
    pub examples: usize,
}

pub fn evaluate(model: &Model, adapter: Option<&Adapter>, examples: &[Example], batch_size: usize, pad_id: u32) -> Result<EvalResult> {
    let mut nll = 0f64;
    let mut tokens = 0usize;
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = Batch::pad(&refs, pad_id);
        nll += model.loss_sum(&batch, adapter)?;
        tokens += batch.target_tokens();
    }
    let loss = if tokens > 0 { nll / tokens as f64 } else { f64::NAN };
    Ok(EvalResult { loss, tokens, perplexity: loss.exp(), examples: examples.len() })
}
