//! A run's training state in one file, `<run>/checkpoint.safetensors`: the adapter, the optimizer's moments and,
//! in the file's metadata, the position, the metrics so far and the best evaluation. Together with the seed
//! (which fixes batch order and dropout masks) it continues a run exactly as if it had never stopped.
//! Written to a temporary name and renamed, so a kill at any moment leaves the previous state or the new one.

use crate::lora::Adapter;
use crate::optim::AdamW;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const META_KEY: &str = "trainer_state";

/// What the metadata carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Position {
    /// Must equal the run's fingerprint: a checkpoint of other settings is never resumed.
    pub fingerprint: String,
    /// Optimizer steps done.
    pub step: usize,
    pub adam_step: u64,
    /// Every metrics line written so far (train and eval).
    pub history: Vec<serde_json::Value>,
    pub best: Option<super::run::Best>,
    /// Training seconds before this checkpoint (the wall time of earlier sessions of the run).
    pub seconds: f64,
}

pub fn save(path: &Path, adapter: &Adapter, opt: &AdamW, position: &Position) -> Result<()> {
    let (adam_step, m, v) = opt.state();
    if adam_step != position.adam_step {
        bail!("internal: checkpoint position disagrees with the optimizer");
    }
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (i, (key, t)) in adapter.keys().into_iter().zip(adapter.tensors()).enumerate() {
        tensors.push((format!("adapter.{key}"), t.clone()));
        tensors.push((format!("adam_m.{i:05}"), m[i].clone()));
        tensors.push((format!("adam_v.{i:05}"), v[i].clone()));
    }
    let counts: Vec<i64> = opt.counts().iter().map(|&c| c as i64).collect();
    tensors.push(("adam_counts".into(), Tensor::from_vec(counts, opt.counts().len(), &Device::Cpu)?));
    let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(position)?)]);
    crate::fsutil::write_safetensors(path, tensors.iter().map(|(k, t)| (k.as_str(), t)), meta)
}

/// Reads the position only (to decide whether to resume) without loading tensors onto a device.
pub fn read_position(path: &Path) -> Result<Position> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    position_of(&bytes, path)
}

fn position_of(bytes: &[u8], path: &Path) -> Result<Position> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let text = meta.metadata().as_ref().and_then(|m| m.get(META_KEY)).with_context(|| format!("{} holds no training state", path.display()))?;
    serde_json::from_str(text).with_context(|| format!("{}: unreadable training state", path.display()))
}

/// Restores the adapter's tensors and the optimizer from `path`; returns the position.
pub fn load(path: &Path, adapter: &mut Adapter, opt: &mut AdamW, device: &Device) -> Result<Position> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let position = position_of(&bytes, path)?;
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, device).with_context(|| format!("cannot read {}", path.display()))?;
    let keys = adapter.keys();
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for (i, (key, slot)) in keys.iter().zip(adapter.tensors_mut()).enumerate() {
        let mut take = |name: String| tensors.remove(&name).with_context(|| format!("{} lacks `{name}`: it belongs to another adapter", path.display()));
        let saved = take(format!("adapter.{key}"))?;
        if saved.dims() != slot.dims() {
            bail!("{}: `{key}` has shape {:?}, the adapter {:?}", path.display(), saved.dims(), slot.dims());
        }
        *slot = saved.to_dtype(slot.dtype())?;
        m.push(take(format!("adam_m.{i:05}"))?);
        v.push(take(format!("adam_v.{i:05}"))?);
    }
    // Absent from checkpoints written before per-parameter counts: every parameter then had every step.
    let counts = match tensors.remove("adam_counts") {
        Some(t) => Some(t.to_vec1::<i64>()?.into_iter().map(|c| c as u64).collect()),
        None => None,
    };
    opt.restore(position.adam_step, counts, m, v).with_context(|| path.display().to_string())?;
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Metrics restored from a checkpoint are written again on resume: every float must come back with the same
    /// bits, or a resumed metrics.jsonl differs from the one written before the interruption.
    #[test]
    fn metrics_survive_the_checkpoint_round_trip_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let history: Vec<serde_json::Value> = (0..5000)
            .map(|i| {
                let loss: f64 = rng.random_range(0.0..12.0);
                let seconds: f64 = rng.random::<f64>() * 10f64.powi(rng.random_range(-3..4));
                serde_json::json!({"kind": "train", "step": i, "loss": loss, "perplexity": loss.exp(), "seconds": seconds, "grad_norm": f64::from(rng.random::<f32>())})
            })
            .collect();
        let position = Position { fingerprint: "f".into(), step: 1, adam_step: 1, history, best: None, seconds: 1.0 / 3.0 };
        let text = serde_json::to_string(&position).unwrap();
        let back: Position = serde_json::from_str(&text).unwrap();
        for (a, b) in position.history.iter().zip(&back.history) {
            for k in ["loss", "perplexity", "seconds", "grad_norm"] {
                assert_eq!(a[k].as_f64().unwrap().to_bits(), b[k].as_f64().unwrap().to_bits(), "{k}: {} came back as {}", a[k], b[k]);
            }
            assert_eq!(a.to_string(), b.to_string());
        }
    }
}
