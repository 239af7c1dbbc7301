//! `trainer merge`: a Hugging Face checkpoint with a LoRA adapter folded into its weights (W + scale·B·A), in
//! the input's dtype and shards (same file names, same index), with config, tokenizer and the other files copied,
//! so transformers loads it as a plain model. Tensors the adapter does not touch are copied byte for byte.

use crate::checkpoint::{self, ModelFiles};
use crate::config::ModelConfig;
use crate::lora::Adapter;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, TensorView, View};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A tensor to write: one of the input's, untouched, or a merged one.
enum Out<'a> {
    Kept(TensorView<'a>),
    Merged(Tensor),
}

impl View for &Out<'_> {
    fn dtype(&self) -> StDtype {
        match self {
            Out::Kept(v) => v.dtype(),
            Out::Merged(t) => View::dtype(t),
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Out::Kept(v) => v.shape(),
            Out::Merged(t) => t.dims(),
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Out::Kept(v) => Cow::Borrowed(v.data()),
            Out::Merged(t) => View::data(t),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Out::Kept(v) => v.data().len(),
            Out::Merged(t) => View::data_len(t),
        }
    }
}

/// What was merged, for the command's summary.
pub struct MergeSummary {
    pub merged: usize,
    pub copied: usize,
    pub files: Vec<PathBuf>,
}

/// Merges into `out`, which must be new or empty unless `force` (then files of the same names are replaced).
pub fn merge(model: &str, adapter_dir: &Path, out: &Path, force: bool) -> Result<MergeSummary> {
    let files: ModelFiles = checkpoint::locate(model, None)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let adapter = Adapter::load_peft(adapter_dir, &cfg, &Device::Cpu).with_context(|| format!("--adapter {}", adapter_dir.display()))?;
    if std::fs::canonicalize(out).ok() == std::fs::canonicalize(&files.dir).ok() {
        bail!("--out is the model's own folder; merge into a new folder");
    }
    if !force {
        if let Some(entry) = std::fs::read_dir(out).ok().and_then(|mut d| d.next()).transpose()? {
            bail!("--out {} is not empty (it holds {}); merge into a new folder, or pass --force to replace its files", out.display(), entry.file_name().to_string_lossy());
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

    // Every targeted weight → its delta scale·B·A (f32).
    let scale = adapter.spec.scale();
    let mut deltas: HashMap<String, (Tensor, bool)> = HashMap::new();
    for (site, f) in adapter.sites() {
        deltas.insert(format!("{}.weight", site.module()), ((f.b.matmul(&f.a)? * scale)?, false));
    }
    let mut summary = MergeSummary { merged: 0, copied: 0, files: Vec::new() };
    for path in &files.weights {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the checkpoint is only read, and checkpoints are not modified while a merge reads them.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let st = SafeTensors::deserialize(&mmap).with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let (_, meta) = SafeTensors::read_metadata(&mmap)?;
        let mut tensors: Vec<(String, Out)> = Vec::new();
        for (name, view) in st.tensors() {
            match deltas.get_mut(&name) {
                Some((delta, used)) => {
                    let w = candle_core::safetensors::Load::load(&view, &Device::Cpu).with_context(|| format!("{}: `{name}`", path.display()))?;
                    if w.dims() != delta.dims() {
                        bail!("{}: `{name}` has shape {:?}, the adapter's update {:?}", path.display(), w.dims(), delta.dims());
                    }
                    let merged = (w.to_dtype(DType::F32)? + &*delta)?.to_dtype(w.dtype())?;
                    *used = true;
                    summary.merged += 1;
                    tensors.push((name, Out::Merged(merged)));
                }
                None => {
                    summary.copied += 1;
                    tensors.push((name, Out::Kept(view)));
                }
            }
        }
        let mut metadata = meta.metadata().clone().unwrap_or_default();
        metadata.entry("format".into()).or_insert_with(|| "pt".into());
        let name = path.file_name().context("weights file has no name")?;
        let target = out.join(name);
        crate::fsutil::write_safetensors(&target, tensors.iter().map(|(k, v)| (k.as_str(), v)), metadata)?;
        summary.files.push(target);
    }
    if let Some(missing) = deltas.iter().filter(|(_, (_, used))| !used).map(|(k, _)| k).min() {
        bail!("the checkpoint has no tensor `{missing}` for the adapter to merge into");
    }
    // Everything else in the model folder: config, generation config, tokenizer files, the shard index.
    for entry in std::fs::read_dir(&files.dir).with_context(|| format!("cannot read {}", files.dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let is_weights = name.to_string_lossy().ends_with(".safetensors");
        if is_weights || !entry.path().is_file() {
            continue;
        }
        let target = out.join(&name);
        let tmp = crate::fsutil::temp_path(&target)?;
        std::fs::copy(entry.path(), &tmp).with_context(|| format!("cannot copy {}", entry.path().display()))?;
        std::fs::rename(&tmp, &target)?;
    }
    Ok(summary)
}
