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
    let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(position)?)]);
    let tmp = crate::fsutil::temp_path(path)?;
    safetensors::serialize_to_file(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta), &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
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
    opt.restore(position.adam_step, m, v)?;
    Ok(position)
}
