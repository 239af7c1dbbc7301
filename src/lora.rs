//! LoRA adapters: PEFT's initialisation and scaling, and PEFT's on-disk format (adapter_config.json +
//! adapter_model.safetensors) for both import (`init_adapter`) and export.

use crate::config::ModelConfig;
use crate::ops::linear::LoraFactors;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// The seven projections of a decoder layer, in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

pub const ALL_TARGETS: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

impl Target {
    pub fn index(self) -> usize {
        self as usize
    }

    /// The module name in transformers' Llama/Gemma/Qwen2 code (and PEFT's `target_modules`).
    pub fn hf_name(self) -> &'static str {
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"][self.index()]
    }

    pub fn block(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        }
    }

    /// Accepts `q` or `q_proj` (and so on).
    pub fn parse(s: &str) -> Option<Self> {
        let short = s.strip_suffix("_proj").unwrap_or(s);
        ALL_TARGETS.iter().copied().find(|t| t.hf_name().strip_suffix("_proj") == Some(short))
    }

    /// `(in_features, out_features)` of this projection.
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        match self {
            Target::Q => (h, q),
            Target::K | Target::V => (h, kv),
            Target::O => (q, h),
            Target::Gate | Target::Up => (h, i),
            Target::Down => (i, h),
        }
    }
}

/// The hyper-parameters of an adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Target>,
    pub rslora: bool,
}

impl LoraSpec {
    /// PEFT's scaling: alpha/r, or alpha/√r with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// LoRA factors for every (layer, target) slot; `None` where the projection is not adapted.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub spec: LoraSpec,
    pub layers: Vec<[Option<LoraFactors>; 7]>,
}

pub fn peft_key(layer: usize, target: Target, factor: &str) -> String {
    format!("base_model.model.model.layers.{layer}.{}.{}.lora_{factor}.weight", target.block(), target.hf_name())
}

/// Mixtral's MLP is experts + router, which LoRA here does not adapt: only its attention projections can be
/// targeted.
fn check_targets(targets: &[Target], cfg: &ModelConfig) -> Result<()> {
    if cfg.moe.is_some() {
        if let Some(t) = targets.iter().find(|t| t.block() == "mlp") {
            bail!(
                "LoRA target `{}` does not exist in {}: its MLP is a mixture of experts, and only q_proj, k_proj, \
                 v_proj and o_proj can be targeted (LoRA on the experts or the router is not supported)",
                t.hf_name(),
                cfg.architecture
            );
        }
    }
    Ok(())
}

impl Adapter {
    /// PEFT's default init: A ~ Kaiming-uniform(a=√5) = U(−1/√in, 1/√in), B = 0, from a seeded ChaCha8 stream.
    pub fn init(spec: LoraSpec, cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        check_targets(&spec.targets, cfg)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            let mut slots: [Option<LoraFactors>; 7] = Default::default();
            for &t in &spec.targets {
                let (fan_in, out) = t.dims(cfg);
                let bound = 1.0 / (fan_in as f64).sqrt();
                let a: Vec<f32> = (0..spec.r * fan_in).map(|_| rng.random_range(-bound..bound) as f32).collect();
                slots[t.index()] = Some(LoraFactors {
                    a: Tensor::from_vec(a, (spec.r, fan_in), device)?,
                    b: Tensor::zeros((out, spec.r), DType::F32, device)?,
                });
            }
            layers.push(slots);
        }
        Ok(Self { spec, layers })
    }

    /// Reads a PEFT LoRA adapter directory written by PEFT or by [`Adapter::save_peft`].
    pub fn load_peft(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read adapter config {}", config_path.display()))?;
        let json: Value =
            crate::jsonutil::from_str(&text).with_context(|| format!("{} is not valid JSON", config_path.display()))?;
        let spec = spec_from_peft_config(&json).with_context(|| format!("in {}", config_path.display()))?;
        check_targets(&spec.targets, cfg).with_context(|| format!("in {}", config_path.display()))?;
        let weights_path = dir.join("adapter_model.safetensors");
        if !weights_path.is_file() {
            bail!("adapter directory {} has no adapter_model.safetensors", dir.display());
        }
        let mut tensors = candle_core::safetensors::load(&weights_path, device)
            .with_context(|| format!("cannot read {}", weights_path.display()))?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for layer in 0..cfg.num_layers {
            let mut slots: [Option<LoraFactors>; 7] = Default::default();
            for &t in &spec.targets {
                let (fan_in, out) = t.dims(cfg);
                let mut take = |factor: &str, shape: [usize; 2]| -> Result<Tensor> {
                    let key = peft_key(layer, t, factor);
                    let tensor = tensors
                        .remove(&key)
                        .with_context(|| format!("{} is missing tensor `{key}`", weights_path.display()))?;
                    if tensor.dims() != shape {
                        bail!("{}: tensor `{key}` has shape {:?}, expected {shape:?}", weights_path.display(), tensor.dims());
                    }
                    let tensor = tensor.to_dtype(DType::F32)?;
                    // A NaN or Inf factor makes every loss NaN: refuse it here, where the tensor can be named.
                    let values = tensor.flatten_all()?.to_vec1::<f32>()?;
                    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                        bail!("{}: tensor `{key}` holds {} at flat index {i}: the adapter is broken (a diverged run?)", weights_path.display(), values[i]);
                    }
                    Ok(tensor)
                };
                let a = take("A", [spec.r, fan_in])?;
                let b = take("B", [out, spec.r])?;
                slots[t.index()] = Some(LoraFactors { a, b });
            }
            layers.push(slots);
        }
        if let Some(extra) = tensors.keys().min() {
            bail!("{} has tensor `{extra}` that does not belong to a targeted layer of this model", weights_path.display());
        }
        Ok(Self { spec, layers })
    }

    /// Writes adapter_config.json and adapter_model.safetensors into `dir`, each through a temporary file that
    /// is renamed into place, so a crash never leaves a half-written adapter. `revision` is the base model's hub
    /// revision when not `main`: PEFT passes it on to `from_pretrained` when it loads the base.
    pub fn save_peft(&self, dir: &Path, base_model: &str, revision: Option<&str>, dtype: DType) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tensors = HashMap::new();
        for (layer, slots) in self.layers.iter().enumerate() {
            for t in ALL_TARGETS {
                if let Some(f) = &slots[t.index()] {
                    tensors.insert(peft_key(layer, t, "A"), f.a.to_dtype(dtype)?);
                    tensors.insert(peft_key(layer, t, "B"), f.b.to_dtype(dtype)?);
                }
            }
        }
        // PEFT writes `{"format": "pt"}`; some loaders (transformers' safe_open checks) expect it.
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        crate::fsutil::write_safetensors(&dir.join("adapter_model.safetensors"), tensors.iter().map(|(k, t)| (k.as_str(), t)), metadata)?;
        crate::fsutil::write_atomic(&dir.join("adapter_config.json"), serde_json::to_string_pretty(&self.peft_config(base_model, revision))?.as_bytes())
    }

    fn peft_config(&self, base_model: &str, revision: Option<&str>) -> Value {
        let targets: Vec<&str> = self.spec.targets.iter().map(|t| t.hf_name()).collect();
        json!({
            "alpha_pattern": {},
            "base_model_name_or_path": base_model,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            // PEFT's config holds an int when alpha is one (lora_alpha: int = 8).
            "lora_alpha": if self.spec.alpha.fract() == 0.0 && self.spec.alpha.abs() < 1e15 { json!(self.spec.alpha as i64) } else { json!(self.spec.alpha) },
            "lora_dropout": self.spec.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.spec.r,
            "rank_pattern": {},
            "revision": revision,
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.spec.rslora,
        })
    }

    /// Every trainable tensor in a fixed order: for each layer, for each target, A then B.
    pub fn tensors(&self) -> Vec<&Tensor> {
        self.layers.iter().flat_map(|s| s.iter().flatten()).flat_map(|f| [&f.a, &f.b]).collect()
    }

    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        self.layers.iter_mut().flat_map(|s| s.iter_mut().flatten()).flat_map(|f| [&mut f.a, &mut f.b]).collect()
    }

    /// PEFT key names in the order of [`Adapter::tensors`].
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (layer, slots) in self.layers.iter().enumerate() {
            for t in ALL_TARGETS {
                if slots[t.index()].is_some() {
                    keys.push(peft_key(layer, t, "A"));
                    keys.push(peft_key(layer, t, "B"));
                }
            }
        }
        keys
    }
}

fn spec_from_peft_config(json: &Value) -> Result<LoraSpec> {
    let field = |k: &str| json.get(k).filter(|v| !v.is_null());
    if let Some(t) = field("peft_type").and_then(|v| v.as_str()) {
        if t != "LORA" {
            bail!("peft_type is `{t}`, only LORA adapters are supported");
        }
    }
    if field("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        bail!("DoRA adapters (use_dora = true) are not supported");
    }
    if let Some(b) = field("bias").and_then(|v| v.as_str()) {
        if b != "none" {
            bail!("bias = `{b}` is not supported, only \"none\"");
        }
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if field(k).and_then(|v| v.as_object()).is_some_and(|o| !o.is_empty()) {
            bail!("`{k}` is not supported");
        }
    }
    if field("layers_to_transform").is_some() {
        bail!("`layers_to_transform` is not supported");
    }
    let r = field("r").and_then(|v| v.as_u64()).filter(|&r| r > 0).context("`r` is missing or not a positive integer")? as usize;
    let alpha = field("lora_alpha").and_then(|v| v.as_f64()).context("`lora_alpha` is missing or not a number")?;
    let dropout = field("lora_dropout").and_then(|v| v.as_f64()).unwrap_or(0.0);
    let names: Vec<String> = match field("target_modules") {
        Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_string).context("`target_modules` entries must be strings")).collect::<Result<_>>()?,
        Some(Value::String(s)) => bail!("`target_modules` is the pattern `{s}`; only a list of module names is supported"),
        _ => bail!("`target_modules` is missing"),
    };
    let mut targets = names
        .iter()
        .map(|n| Target::parse(n).with_context(|| format!("target module `{n}` is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")))
        .collect::<Result<Vec<_>>>()?;
    targets.sort();
    targets.dedup();
    Ok(LoraSpec { r, alpha, dropout, targets, rslora: field("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_peft_kaiming_uniform_and_zero_b() {
        let cfg = ModelConfig::from_json(&crate::testing::llama_config()).unwrap();
        let spec = LoraSpec { r: 8, alpha: 16.0, dropout: 0.05, targets: vec![Target::Q, Target::Down], rslora: false };
        let a = Adapter::init(spec.clone(), &cfg, 1, &Device::Cpu).unwrap();
        for slots in &a.layers {
            for t in [Target::Q, Target::Down] {
                let f = slots[t.index()].as_ref().unwrap();
                let (fan_in, out) = t.dims(&cfg);
                assert_eq!(f.a.dims(), [8, fan_in]);
                assert_eq!(f.b.dims(), [out, 8]);
                assert_eq!(f.b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
                // U(−1/√in, 1/√in): bounded, mean 0, variance bound²/3.
                let v = f.a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let bound = 1.0 / (fan_in as f32).sqrt();
                assert!(v.iter().all(|x| x.abs() <= bound));
                let mean = v.iter().sum::<f32>() / v.len() as f32;
                let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
                assert!(mean.abs() < 0.1 * bound, "mean {mean}");
                assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.15, "var {var}");
            }
            assert!(slots[Target::K.index()].is_none());
        }
        let again = Adapter::init(spec.clone(), &cfg, 1, &Device::Cpu).unwrap();
        let other = Adapter::init(spec, &cfg, 2, &Device::Cpu).unwrap();
        let first = |ad: &Adapter| ad.tensors()[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(first(&a), first(&again));
        assert_ne!(first(&a), first(&other));
    }

    #[test]
    fn scaling_follows_peft() {
        let spec = |rslora| LoraSpec { r: 16, alpha: 32.0, dropout: 0.0, targets: vec![Target::Q], rslora };
        assert_eq!(spec(false).scale(), 2.0);
        assert_eq!(spec(true).scale(), 8.0);
    }

    #[test]
    fn peft_configs_we_cannot_honour_are_refused() {
        let base = json!({"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"]});
        assert_eq!(spec_from_peft_config(&base).unwrap().targets, vec![Target::Q]);
        for (k, v, needle) in [
            ("use_dora", json!(true), "DoRA"),
            ("target_modules", json!("all-linear"), "pattern"),
            ("target_modules", json!(["lm_head"]), "lm_head"),
            ("rank_pattern", json!({"q_proj": 2}), "rank_pattern"),
            ("bias", json!("all"), "bias"),
            ("r", json!(0), "positive integer"),
        ] {
            let mut c = base.clone();
            c[k] = v;
            let e = spec_from_peft_config(&c).unwrap_err().to_string();
            assert!(e.contains(needle), "{k}: {e}");
        }
    }

    #[test]
    fn mixtral_refuses_mlp_targets_naming_what_it_can_adapt() {
        let cfg = ModelConfig::from_json(&serde_json::json!({"architectures":["MixtralForCausalLM"],"hidden_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":8,"vocab_size":10,
            "num_local_experts":2,"num_experts_per_tok":1})).unwrap();
        let spec = LoraSpec { r: 2, alpha: 4.0, dropout: 0.0, targets: vec![Target::Q, Target::Down], rslora: false };
        let e = Adapter::init(spec.clone(), &cfg, 0, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("`down_proj`") && e.contains("q_proj, k_proj, v_proj and o_proj"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let ok = Adapter::init(LoraSpec { targets: vec![Target::Q], ..spec.clone() }, &cfg, 0, &Device::Cpu).unwrap();
        Adapter { spec: spec.clone(), layers: ok.layers }.save_peft(dir.path(), "base", None, DType::F32).unwrap();
        let e = format!("{:#}", Adapter::load_peft(dir.path(), &cfg, &Device::Cpu).unwrap_err());
        assert!(e.contains("adapter_config.json") && e.contains("`down_proj`"), "{e}");
    }
}
