//! Finding a checkpoint (a local Hugging Face model directory or a hub id in the local HF cache) and reading its
//! safetensors, single-file or sharded, memory-mapped.

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The files of one checkpoint.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// How the user named the model.
    pub name: String,
    /// The hub id (without revision) when the model was found in the Hugging Face cache.
    pub hub_id: Option<String>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
}

fn hub_cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) => PathBuf::from(p),
        None => hf_hub::Cache::from_env().path().clone(),
    }
}

fn looks_like_hub_id(spec: &str) -> bool {
    let id = spec.split('@').next().unwrap_or(spec);
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && *p != "." && *p != ".."
        })
}

/// Resolves `spec`: an existing directory (relative paths are tried against `base_dir` first, then the working
/// directory), else a hub id `org/name[@revision]` looked up offline in the local HF cache.
pub fn locate(spec: &str, base_dir: Option<&Path>) -> Result<ModelFiles> {
    let mut tried = Vec::new();
    let as_path = PathBuf::from(spec);
    let candidates: Vec<PathBuf> = match base_dir {
        Some(base) if as_path.is_relative() => vec![base.join(&as_path), as_path.clone()],
        _ => vec![as_path.clone()],
    };
    for dir in &candidates {
        if dir.is_dir() {
            return from_dir(spec, dir);
        }
        tried.push(dir.display().to_string());
    }
    let cache = hub_cache_dir();
    if looks_like_hub_id(spec) {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev.to_string()),
            None => (spec, "main".to_string()),
        };
        let repo = hf_hub::Cache::new(cache.clone())
            .repo(hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, revision));
        if let Some(config) = repo.get("config.json") {
            let dir = config.parent().context("cached config.json has no parent directory")?.to_path_buf();
            return Ok(ModelFiles { hub_id: Some(id.to_string()), ..from_dir(spec, &dir)? });
        }
        tried.push(format!("the Hugging Face cache {} (models--{}, offline)", cache.display(), id.replace('/', "--")));
    }
    bail!("model `{spec}` not found: looked in {}", tried.join(", "))
}

fn from_dir(name: &str, dir: &Path) -> Result<ModelFiles> {
    let need = |file: &str| -> Result<PathBuf> {
        let p = dir.join(file);
        if p.is_file() {
            Ok(p)
        } else {
            bail!("model directory {} has no {file}", dir.display())
        }
    };
    let optional = |file: &str| Some(dir.join(file)).filter(|p| p.is_file());
    let config = need("config.json")?;
    let tokenizer = need("tokenizer.json")?;
    let index = dir.join("model.safetensors.index.json");
    let weights = if index.is_file() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value =
            crate::jsonutil::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no `weight_map` object", index.display()))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.into_iter().map(need).collect::<Result<Vec<_>>>()?
    } else if dir.join("model.safetensors").is_file() {
        vec![dir.join("model.safetensors")]
    } else {
        bail!("model directory {} has neither model.safetensors nor model.safetensors.index.json", dir.display())
    };
    Ok(ModelFiles {
        name: name.to_string(),
        hub_id: None,
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
