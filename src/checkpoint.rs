//! Finding a checkpoint (a local Hugging Face model directory, or a hub id in the local HF cache or downloaded
//! into it) and reading its safetensors, single-file or sharded, memory-mapped.

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use crate::hub::Need;

/// The files of one checkpoint.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// How the user named the model.
    pub name: String,
    /// The hub id (without revision) when the model came from the Hugging Face cache.
    pub hub_id: Option<String>,
    /// The revision asked for, when it is a hub model's and not `main` (PEFT records it beside the base model).
    pub revision: Option<String>,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Empty when only the text side was asked for ([`Need::Text`]).
    pub weights: Vec<PathBuf>,
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
}

/// Resolves `spec` with its weights: see [`locate_model`].
pub fn locate(spec: &str, base_dir: Option<&Path>) -> Result<ModelFiles> {
    locate_model(spec, base_dir, None, Need::Weights)
}

/// Resolves `spec`: an existing directory (relative paths are tried against `base_dir` first, then the working
/// directory), else a hub id `org/name[@revision]` (or `revision`) — from the local HF cache when it holds what
/// `need` asks for, else downloaded into it (unless HF_HUB_OFFLINE is set).
pub fn locate_model(spec: &str, base_dir: Option<&Path>, revision: Option<&str>, need: Need) -> Result<ModelFiles> {
    let mut tried = Vec::new();
    let as_path = PathBuf::from(spec);
    let candidates: Vec<PathBuf> = match base_dir {
        Some(base) if as_path.is_relative() => vec![base.join(&as_path), as_path.clone()],
        _ => vec![as_path.clone()],
    };
    for dir in &candidates {
        if dir.is_dir() {
            if let Some(r) = revision {
                bail!("model `{spec}` is the local folder {}: a revision (`{r}`) applies to hub ids only", dir.display());
            }
            return from_dir(spec, dir, need);
        }
        tried.push(dir.display().to_string());
    }
    let id = spec.split('@').next().unwrap_or(spec);
    if !crate::hub::looks_like_hub_id(id) {
        bail!("model `{spec}` not found: looked in {} (and it is not a hub id `org/name`)", tried.join(", "));
    }
    // A mistyped local folder of two parts reads as a hub id: the error says both.
    locate_hub(spec, revision, need).with_context(|| format!("model `{spec}`: no such folder (looked in {}), so it was taken as a hub id", tried.join(", ")))
}

/// A hub model `org/name[@revision]` only (no local folder of that name is looked at): from the cache when it
/// holds what `need` asks for, else downloaded into it.
pub fn locate_hub(spec: &str, revision: Option<&str>, need: Need) -> Result<ModelFiles> {
    let (id, revision) = crate::hub::split_spec(spec, revision)?;
    if !crate::hub::looks_like_hub_id(id) {
        bail!("`{spec}` is not a hub id: write org/name (or org/name@revision)");
    }
    let settings = crate::hub::HubSettings::from_env()?;
    let hub_files = |dir: &Path| -> Result<ModelFiles> {
        Ok(ModelFiles { hub_id: Some(id.to_string()), revision: (revision != "main").then(|| revision.to_string()), ..from_dir(spec, dir, need)? })
    };
    let incomplete = match crate::hub::cached_snapshot(&settings, id, revision) {
        Some(dir) => match hub_files(&dir) {
            Ok(files) => return Ok(files),
            Err(e) => Some(format!("{e:#}")),
        },
        None => None,
    };
    if settings.offline {
        return Err(crate::hub::offline_error(&settings, id, revision, incomplete.as_deref()));
    }
    let dir = crate::hub::download(&settings, id, revision, need)?;
    hub_files(&dir).with_context(|| format!("model `{id}` (revision {revision}) as downloaded into {}", dir.display()))
}

fn from_dir(name: &str, dir: &Path, need: Need) -> Result<ModelFiles> {
    let need_file = |file: &str| -> Result<PathBuf> {
        let p = dir.join(file);
        if p.is_file() {
            Ok(p)
        } else {
            bail!("model directory {} has no {file}", dir.display())
        }
    };
    let optional = |file: &str| Some(dir.join(file)).filter(|p| p.is_file());
    let config = need_file("config.json")?;
    let tokenizer = need_file("tokenizer.json")?;
    let index = dir.join("model.safetensors.index.json");
    let weights = if need == Need::Text {
        Vec::new()
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value =
            crate::jsonutil::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no `weight_map` object", index.display()))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.into_iter().map(need_file).collect::<Result<Vec<_>>>()?
    } else if dir.join("model.safetensors").is_file() {
        vec![dir.join("model.safetensors")]
    } else {
        bail!("model directory {} has neither model.safetensors nor model.safetensors.index.json", dir.display())
    };
    Ok(ModelFiles {
        name: name.to_string(),
        hub_id: None,
        revision: None,
        dir: dir.to_path_buf(),
        config,
        weights,
        tokenizer,
        tokenizer_config: optional("tokenizer_config.json"),
        generation_config: optional("generation_config.json"),
    })
}

impl ModelFiles {
    /// How an exported adapter names its base model (`base_model_name_or_path`), so that PEFT finds it from any
    /// working directory: the hub id for a hub model, else the folder's absolute path.
    pub fn reference(&self) -> String {
        match &self.hub_id {
            Some(id) => id.clone(),
            None => std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone()).to_string_lossy().into_owned(),
        }
    }
}

/// Memory-mapped tensors of a checkpoint, checked by name and shape as they are taken.
pub struct Checkpoint {
    st: MmapedSafetensors,
    names: BTreeSet<String>,
    dtype: DType,
    device: Device,
}

impl Checkpoint {
    pub fn open(files: &ModelFiles, dtype: DType, device: &Device) -> Result<Self> {
        // SAFETY: the files are memory-mapped read-only; like every mmap reader we rely on them not being
        // truncated while the trainer runs.
        let st = unsafe { MmapedSafetensors::multi(&files.weights) }
            .with_context(|| format!("cannot read the safetensors of {}", files.dir.display()))?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self { st, names, dtype, device: device.clone() })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Loads `name`, which must have exactly `shape`, converted to the compute dtype.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if !self.contains(name) {
            bail!("checkpoint is missing tensor `{name}` (expected shape {shape:?})");
        }
        let view = self.st.get(name)?;
        if view.shape() != shape {
            bail!("tensor `{name}` has shape {:?}, expected {shape:?} from config.json", view.shape());
        }
        Ok(self.st.load(name, &self.device)?.to_dtype(self.dtype)?)
    }
}
