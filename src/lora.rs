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

/// What LoRA can adapt in a decoder layer: the seven projections of the attention and the dense MLP and, in a
/// mixture-of-experts layer (Mixtral), the router and each expert's w1 (gate), w2 (down) and w3 (up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    Router,
    W1,
    W2,
    W3,
}

/// The dense projections, in slot order.
pub const ALL_TARGETS: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

/// One LoRA per layer for each of these (the dense projections, then the router), indexed by [`Target::index`].
pub const LAYER_SLOTS: usize = 8;
pub const SLOT_TARGETS: [Target; LAYER_SLOTS] =
    [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down, Target::Router];

/// One LoRA per expert for each of these, indexed by [`Target::expert_index`].
pub const EXPERT_TARGETS: [Target; 3] = [Target::W1, Target::W2, Target::W3];

impl Target {
    /// The slot of a per-layer target (one of [`SLOT_TARGETS`]).
    pub fn index(self) -> usize {
        debug_assert!(!self.is_expert(), "{self:?} has one LoRA per expert, not per layer");
        self as usize
    }

    pub fn is_expert(self) -> bool {
        matches!(self, Target::W1 | Target::W2 | Target::W3)
    }

    /// Mixtral's router and experts, which exist only in a mixture-of-experts layer.
    pub fn is_moe(self) -> bool {
        self.is_expert() || self == Target::Router
    }

    /// The slot of an expert target (one of [`EXPERT_TARGETS`]) within an expert.
    pub fn expert_index(self) -> usize {
        debug_assert!(self.is_expert());
        self as usize - Target::W1 as usize
    }

    /// The module name in transformers' modelling code, which is what PEFT's `target_modules` matches
    /// (Mixtral's router is the module `gate`).
    pub fn hf_name(self) -> &'static str {
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate", "w1", "w2", "w3"][self as usize]
    }

    pub fn block(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
            Target::Router | Target::W1 | Target::W2 | Target::W3 => "block_sparse_moe",
        }
    }

    /// A recipe's name: `q` or `q_proj` (and so on; `gate` is the dense `gate_proj`), `router`, `w1`, `w2`, `w3`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "router" => return Some(Target::Router),
            "w1" => return Some(Target::W1),
            "w2" => return Some(Target::W2),
            "w3" => return Some(Target::W3),
            _ => {}
        }
        let short = s.strip_suffix("_proj").unwrap_or(s);
        ALL_TARGETS.iter().copied().find(|t| t.hf_name().strip_suffix("_proj") == Some(short))
    }

    /// `(in_features, out_features)` of this projection (one expert's, for an expert target).
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        match self {
            Target::Q => (h, q),
            Target::K | Target::V => (h, kv),
            Target::O => (q, h),
            Target::Gate | Target::Up | Target::W1 | Target::W3 => (h, i),
            Target::Down | Target::W2 => (i, h),
            Target::Router => (h, cfg.moe.map_or(0, |m| m.experts)),
        }
    }
}

/// Where one LoRA sits: a layer's projection, or (for an expert target) one expert's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    pub layer: usize,
    pub target: Target,
    pub expert: Option<usize>,
}

impl Site {
    /// The adapted module's name in the checkpoint, e.g. `model.layers.0.block_sparse_moe.experts.3.w2`.
    pub fn module(&self) -> String {
        let expert = self.expert.map(|e| format!("experts.{e}.")).unwrap_or_default();
        format!("model.layers.{}.{}.{expert}{}", self.layer, self.target.block(), self.target.hf_name())
    }

    /// The factor's key in PEFT's adapter_model.safetensors (`factor`: "A" or "B").
    pub fn peft_key(&self, factor: &str) -> String {
        format!("base_model.model.{}.lora_{factor}.weight", self.module())
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
    pub layers: Vec<[Option<LoraFactors>; LAYER_SLOTS]>,
    /// Per layer, per expert, w1/w2/w3's factors by [`Target::expert_index`]; empty vectors when no expert
    /// target is adapted.
    pub experts: Vec<Vec<[Option<LoraFactors>; 3]>>,
}

/// The PEFT key of a per-layer target's factor.
pub fn peft_key(layer: usize, target: Target, factor: &str) -> String {
    Site { layer, target, expert: None }.peft_key(factor)
}

/// Every site `spec` adapts in a model of `cfg`, in the order of [`Adapter::sites`].
fn sites_of(spec: &LoraSpec, cfg: &ModelConfig) -> Vec<Site> {
    let experts = cfg.moe.map_or(0, |m| m.experts);
    let mut out = Vec::new();
    for layer in 0..cfg.num_layers {
        out.extend(SLOT_TARGETS.iter().filter(|t| spec.targets.contains(t)).map(|&target| Site { layer, target, expert: None }));
        for e in 0..experts {
            out.extend(EXPERT_TARGETS.iter().filter(|t| spec.targets.contains(t)).map(|&target| Site { layer, target, expert: Some(e) }));
        }
    }
    out
}

/// A target must exist in the model: a mixture-of-experts layer has a router and experts instead of the dense
/// MLP's projections, and a dense layer has neither.
pub fn check_targets(targets: &[Target], cfg: &ModelConfig) -> Result<()> {
    let moe = cfg.moe.is_some();
    if let Some(t) = targets.iter().find(|t| t.block() == if moe { "mlp" } else { "block_sparse_moe" }) {
        if moe {
            bail!(
                "LoRA target `{}` does not exist in {}: its MLP is a mixture of experts; the targets are q_proj, k_proj, \
                 v_proj, o_proj, each expert's w1, w2 and w3, and the router (`router` in a recipe, `gate` in PEFT's \
                 target_modules)",
                t.hf_name(),
                cfg.architecture
            );
        }
        bail!(
            "LoRA target `{}` exists only in a mixture-of-experts model (Mixtral); {} has q_proj, k_proj, v_proj, \
             o_proj, gate_proj, up_proj and down_proj",
            if *t == Target::Router { "router" } else { t.hf_name() },
            cfg.architecture
        );
    }
    Ok(())
}

impl Adapter {
    /// PEFT's default init: A ~ Kaiming-uniform(a=√5) = U(−1/√in, 1/√in), B = 0, from a seeded ChaCha8 stream
    /// (per layer, the targets in order; an expert target draws expert by expert).
    pub fn init(spec: LoraSpec, cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        check_targets(&spec.targets, cfg)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |t: Target| -> Result<LoraFactors> {
            let (fan_in, out) = t.dims(cfg);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let a: Vec<f32> = (0..spec.r * fan_in).map(|_| rng.random_range(-bound..bound) as f32).collect();
            Ok(LoraFactors { a: Tensor::from_vec(a, (spec.r, fan_in), device)?, b: Tensor::zeros((out, spec.r), DType::F32, device)? })
        };
        let mut adapter = Adapter::empty(spec.clone(), cfg);
        for layer in 0..cfg.num_layers {
            for &target in &spec.targets {
                let experts: Vec<Option<usize>> = if target.is_expert() { (0..adapter.experts[layer].len()).map(Some).collect() } else { vec![None] };
                for expert in experts {
                    *adapter.slot_mut(Site { layer, target, expert }) = Some(draw(target)?);
                }
            }
        }
        Ok(adapter)
    }

    /// Every adapted site with its factors, in the fixed order of [`Adapter::tensors`]: per layer, the
    /// per-layer slots, then expert by expert w1, w2, w3.
    pub fn sites(&self) -> Vec<(Site, &LoraFactors)> {
        let mut out = Vec::new();
        for (layer, slots) in self.layers.iter().enumerate() {
            for t in SLOT_TARGETS {
                if let Some(f) = &slots[t.index()] {
                    out.push((Site { layer, target: t, expert: None }, f));
                }
            }
            for (e, slots) in self.experts.get(layer).into_iter().flatten().enumerate() {
                for t in EXPERT_TARGETS {
                    if let Some(f) = &slots[t.expert_index()] {
                        out.push((Site { layer, target: t, expert: Some(e) }, f));
                    }
                }
            }
        }
        out
    }

    /// The factors at every site, mutable, in the order of [`Adapter::sites`].
    pub fn factors_mut(&mut self) -> Vec<&mut LoraFactors> {
        let mut out = Vec::new();
        let mut experts = self.experts.iter_mut();
        for slots in self.layers.iter_mut() {
            // Slots are stored in SLOT_TARGETS order.
            out.extend(slots.iter_mut().flatten());
            for e in experts.next().into_iter().flatten() {
                out.extend(e.iter_mut().flatten());
            }
        }
        out
    }

    /// An adapter with the spec's layout and no factors yet.
    fn empty(spec: LoraSpec, cfg: &ModelConfig) -> Self {
        let experts = if spec.targets.iter().any(|t| t.is_expert()) { cfg.moe.map_or(0, |m| m.experts) } else { 0 };
        let layers = (0..cfg.num_layers).map(|_| Default::default()).collect();
        let per_layer = || (0..experts).map(|_| Default::default()).collect();
        Self { spec, layers, experts: (0..cfg.num_layers).map(|_| per_layer()).collect() }
    }

    fn slot_mut(&mut self, site: Site) -> &mut Option<LoraFactors> {
        match site.expert {
            None => &mut self.layers[site.layer][site.target.index()],
            Some(e) => &mut self.experts[site.layer][e][site.target.expert_index()],
        }
    }

    /// The factors of a site, if it is adapted.
    pub fn get(&self, site: Site) -> Option<&LoraFactors> {
        match site.expert {
            None => self.layers.get(site.layer)?[site.target.index()].as_ref(),
            Some(e) => self.experts.get(site.layer)?.get(e)?[site.target.expert_index()].as_ref(),
        }
    }

    /// Reads a PEFT LoRA adapter directory written by PEFT or by [`Adapter::save_peft`].
    pub fn load_peft(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read adapter config {}", config_path.display()))?;
        let json: Value =
            crate::jsonutil::from_str(&text).with_context(|| format!("{} is not valid JSON", config_path.display()))?;
        let spec = spec_from_peft_config(&json, cfg.moe.is_some()).with_context(|| format!("in {}", config_path.display()))?;
        check_targets(&spec.targets, cfg).with_context(|| format!("in {}", config_path.display()))?;
        let weights_path = dir.join("adapter_model.safetensors");
        if !weights_path.is_file() {
            bail!("adapter directory {} has no adapter_model.safetensors", dir.display());
        }
        let mut tensors = candle_core::safetensors::load(&weights_path, device)
            .with_context(|| format!("cannot read {}", weights_path.display()))?;
        // Every site the spec adapts is read from the file by its key, shapes checked before anything is kept.
        let mut adapter = Adapter::empty(spec.clone(), cfg);
        for site in sites_of(&spec, cfg) {
            let (fan_in, out) = site.target.dims(cfg);
            let mut take = |factor: &str, shape: [usize; 2]| -> Result<Tensor> {
                let key = site.peft_key(factor);
                let tensor = tensors.remove(&key).with_context(|| format!("{} is missing tensor `{key}`", weights_path.display()))?;
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
            *adapter.slot_mut(site) = Some(LoraFactors { a: take("A", [spec.r, fan_in])?, b: take("B", [out, spec.r])? });
        }
        if let Some(extra) = tensors.keys().min() {
            bail!("{} has tensor `{extra}` that does not belong to a targeted layer of this model", weights_path.display());
        }
        Ok(adapter)
    }

    /// Writes adapter_config.json and adapter_model.safetensors into `dir`, each through a temporary file that
    /// is renamed into place, so a crash never leaves a half-written adapter. `revision` is the base model's hub
    /// revision when not `main`: PEFT passes it on to `from_pretrained` when it loads the base.
    pub fn save_peft(&self, dir: &Path, base_model: &str, revision: Option<&str>, dtype: DType) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tensors = HashMap::new();
        for (site, f) in self.sites() {
            tensors.insert(site.peft_key("A"), f.a.to_dtype(dtype)?);
            tensors.insert(site.peft_key("B"), f.b.to_dtype(dtype)?);
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

    /// Every trainable tensor in the order of [`Adapter::sites`], A then B.
    pub fn tensors(&self) -> Vec<&Tensor> {
        self.sites().into_iter().flat_map(|(_, f)| [&f.a, &f.b]).collect()
    }

    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        self.factors_mut().into_iter().flat_map(|f| [&mut f.a, &mut f.b]).collect()
    }

    /// PEFT key names in the order of [`Adapter::tensors`].
    pub fn keys(&self) -> Vec<String> {
        self.sites().into_iter().flat_map(|(s, _)| [s.peft_key("A"), s.peft_key("B")]).collect()
    }
}

/// `moe`: the model's MLP is a mixture of experts, where PEFT's `gate` is the router.
fn spec_from_peft_config(json: &Value, moe: bool) -> Result<LoraSpec> {
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
        .map(|n| match n.as_str() {
            "gate" if moe => Ok(Target::Router),
            "router" => bail!("target module `router` is not a module name; Mixtral's router is `gate`"),
            _ => Target::parse(n).with_context(|| format!("target module `{n}` is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (dense MLP) or w1, w2, w3, gate (Mixtral's experts and router)")),
        })
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
        assert_eq!(spec_from_peft_config(&base, false).unwrap().targets, vec![Target::Q]);
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
            let e = spec_from_peft_config(&c, false).unwrap_err().to_string();
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
        assert!(e.contains("`down_proj`") && e.contains("each expert's w1, w2 and w3, and the router"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let ok = Adapter::init(LoraSpec { targets: vec![Target::Q], ..spec.clone() }, &cfg, 0, &Device::Cpu).unwrap();
        Adapter { spec: spec.clone(), layers: ok.layers, experts: ok.experts }.save_peft(dir.path(), "base", None, DType::F32).unwrap();
        let e = format!("{:#}", Adapter::load_peft(dir.path(), &cfg, &Device::Cpu).unwrap_err());
        assert!(e.contains("adapter_config.json") && e.contains("`down_proj`"), "{e}");
    }

    fn mixtral(experts: usize) -> ModelConfig {
        ModelConfig::from_json(&serde_json::json!({"architectures":["MixtralForCausalLM"],"hidden_size":16,
            "num_hidden_layers":2,"num_attention_heads":2,"intermediate_size":8,"vocab_size":10,
            "num_local_experts":experts,"num_experts_per_tok":2})).unwrap()
    }

    #[test]
    fn expert_and_router_factors_have_peft_names_and_round_trip() {
        let cfg = mixtral(3);
        let spec = LoraSpec { r: 2, alpha: 4.0, dropout: 0.0, targets: vec![Target::Q, Target::Router, Target::W1, Target::W2, Target::W3], rslora: false };
        let mut a = Adapter::init(spec, &cfg, 3, &Device::Cpu).unwrap();
        let keys = a.keys();
        // Per layer: q and the router (A, B each), then 3 experts × w1, w2, w3.
        assert_eq!(keys.len(), 2 * (2 * 2 + 3 * 3 * 2));
        assert_eq!(&keys[..6], [
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
            "base_model.model.model.layers.0.block_sparse_moe.gate.lora_A.weight",
            "base_model.model.model.layers.0.block_sparse_moe.gate.lora_B.weight",
            "base_model.model.model.layers.0.block_sparse_moe.experts.0.w1.lora_A.weight",
            "base_model.model.model.layers.0.block_sparse_moe.experts.0.w1.lora_B.weight",
        ]);
        assert!(keys.contains(&"base_model.model.model.layers.1.block_sparse_moe.experts.2.w2.lora_B.weight".to_string()));
        let shapes: Vec<Vec<usize>> = a.tensors().iter().map(|t| t.dims().to_vec()).collect();
        // Router A [r, H], B [E, r]; w1 A [r, H], B [I, r]; w2 A [r, I], B [H, r].
        assert_eq!(&shapes[2..8], [vec![2, 16], vec![3, 2], vec![2, 16], vec![8, 2], vec![2, 8], vec![16, 2]]);
        for (i, t) in a.tensors_mut().into_iter().enumerate() {
            *t = (t.ones_like().unwrap() * (i as f64 + 1.0)).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        a.save_peft(dir.path(), "base", None, DType::F32).unwrap();
        let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(config["target_modules"], json!(["q_proj", "gate", "w1", "w2", "w3"]), "PEFT's names: the router is `gate`");
        let back = Adapter::load_peft(dir.path(), &cfg, &Device::Cpu).unwrap();
        assert_eq!(back.spec.targets, a.spec.targets);
        assert_eq!(back.keys(), keys);
        for (x, y) in back.tensors().iter().zip(a.tensors()) {
            assert_eq!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }

    #[test]
    fn gate_means_the_router_only_in_a_mixture_of_experts() {
        let c = json!({"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["gate","w2"]});
        assert_eq!(spec_from_peft_config(&c, true).unwrap().targets, vec![Target::Router, Target::W2]);
        assert_eq!(spec_from_peft_config(&c, false).unwrap().targets, vec![Target::Gate, Target::W2]);
        // A dense model has no experts or router: the error names what it has.
        let dense = ModelConfig::from_json(&crate::testing::llama_config()).unwrap();
        for t in [Target::W2, Target::Router] {
            let spec = LoraSpec { r: 2, alpha: 4.0, dropout: 0.0, targets: vec![Target::Q, t], rslora: false };
            let e = Adapter::init(spec, &dense, 0, &Device::Cpu).unwrap_err().to_string();
            assert!(e.contains("exists only in a mixture-of-experts model") && e.contains("gate_proj, up_proj and down_proj"), "{e}");
        }
        assert_eq!(Target::parse("router"), Some(Target::Router));
        assert_eq!(Target::parse("gate"), Some(Target::Gate));
        assert_eq!(Target::parse("w3"), Some(Target::W3));
    }
}
