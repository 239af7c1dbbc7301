//! Held-out loss and perplexity: token-weighted mean NLL over response tokens (and the EOS).

use crate::data::batch::{Batch, Example};
use crate::lora::Adapter;
use crate::model::Model;
use anyhow::Result;
use serde::Serialize;

/// Loss and perplexity over a set of examples (also each language's share of a [`HeldoutResult`]).
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq)]
pub struct EvalResult {
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    pub tokens: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub perplexity: f64,
    pub examples: usize,
}

pub fn evaluate(model: &Model, adapter: Option<&Adapter>, examples: &[Example], batch_size: usize, pad_id: u32) -> Result<EvalResult> {
    evaluate_refs(model, adapter, &examples.iter().collect::<Vec<_>>(), batch_size, pad_id)
}

fn evaluate_refs(model: &Model, adapter: Option<&Adapter>, examples: &[&Example], batch_size: usize, pad_id: u32) -> Result<EvalResult> {
    let mut nll = 0f64;
    let mut tokens = 0usize;
    for refs in examples.chunks(batch_size.max(1)) {
        let batch = Batch::pad(refs, pad_id);
        nll += model.loss_sum(&batch, adapter)?;
        tokens += batch.target_tokens();
    }
    let loss = if tokens > 0 { nll / tokens as f64 } else { f64::NAN };
    Ok(EvalResult { loss, tokens, perplexity: loss.exp(), examples: examples.len() })
}

/// JSON has no NaN: serde_json writes it as null, and this reads null back as NaN.
pub fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Held-out results of one evaluation: over all examples and per language.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct HeldoutResult {
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub perplexity: f64,
    pub tokens: usize,
    pub examples: usize,
    /// Per language label ("" = unlabelled); token-weighted, so the languages combine into the overall loss.
    pub languages: std::collections::BTreeMap<String, EvalResult>,
}

/// Evaluates `examples`, grouping the loss by `labels` (one per example). Each language is batched on its own, so
/// its loss does not depend on which other languages share the held-out set.
pub fn evaluate_by_language(model: &Model, adapter: Option<&Adapter>, examples: &[Example], labels: &[String], batch_size: usize, pad_id: u32) -> Result<HeldoutResult> {
    anyhow::ensure!(examples.len() == labels.len(), "one language label per held-out example");
    let mut groups: std::collections::BTreeMap<&str, Vec<&Example>> = Default::default();
    for (e, l) in examples.iter().zip(labels) {
        groups.entry(l.as_str()).or_default().push(e);
    }
    let (mut nll, mut tokens) = (0f64, 0usize);
    let mut languages = std::collections::BTreeMap::new();
    for (label, group) in groups {
        let r = evaluate_refs(model, adapter, &group, batch_size, pad_id)?;
        if r.tokens > 0 {
            nll += r.loss * r.tokens as f64;
        }
        tokens += r.tokens;
        languages.insert(label.to_string(), r);
    }
    let loss = if tokens > 0 { nll / tokens as f64 } else { f64::NAN };
    Ok(HeldoutResult { loss, perplexity: loss.exp(), tokens, examples: examples.len(), languages })
}
