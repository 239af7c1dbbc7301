//! The model's `config.json`, reduced to the handful of facts the decoder needs.
//!
//! The families differ only in data (norm offset, activation, embedding scale, biases, q/k norm, RoPE frequency
//! scaling, sliding window), so one [`ModelConfig`] describes all of them. Both the pre-transformers-5 layout
//! (top-level `rope_theta` + `rope_scaling`, `torch_dtype`) and the transformers-5 layout (`rope_parameters`,
//! `dtype`) are accepted.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Gemma,
    Gemma2,
    Qwen2,
    Mistral,
    Qwen3,
    Mixtral,
}

/// `(architectures[0], model_type, family)` of every supported checkpoint class: the parser and the error that
/// lists what is supported both read this table.
const SUPPORTED: &[(&str, &str, Family)] = &[
    ("LlamaForCausalLM", "llama", Family::Llama),
    ("MistralForCausalLM", "mistral", Family::Mistral),
    ("GemmaForCausalLM", "gemma", Family::Gemma),
    ("Gemma2ForCausalLM", "gemma2", Family::Gemma2),
    ("Qwen2ForCausalLM", "qwen2", Family::Qwen2),
    ("Qwen3ForCausalLM", "qwen3", Family::Qwen3),
    ("MixtralForCausalLM", "mixtral", Family::Mixtral),
];

/// The RoPE frequency scalings (`rope_type`) that are implemented; anything else is refused with this list.
const ROPE_TYPES: &str = "default, linear, dynamic (up to max_position_embeddings), llama3";

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
            Family::Qwen2 => "qwen2",
            Family::Mistral => "mistral",
            Family::Qwen3 => "qwen3",
            Family::Mixtral => "mixtral",
        }
    }
}

/// The gate activation of the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`), Gemma's.
    GeluTanh,
    /// Exact (erf) GELU.
    Gelu,
}

/// How RoPE's inverse frequencies are derived from `rope_theta`, as transformers' `modeling_rope_utils` does it.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Dynamic NTK: transformers keeps plain RoPE while the longest position is within `max_position_embeddings`
    /// and only beyond it recomputes θ per forward call from the call's length (state that outlives the call), so
    /// positions beyond it are refused (see [`ModelConfig::rope_position_limit`]).
    Dynamic { factor: f64 },
    /// Llama-3.1/3.2: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub family: Family,
    pub architecture: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Qwen3's RMSNorm over each head of q and k, before RoPE.
    pub qk_norm: bool,
    pub tie_word_embeddings: bool,
    pub activation: Activation,
    /// Gemma's RMSNorm multiplies by (1 + w) instead of w.
    pub norm_weight_offset: f64,
    /// Gemma multiplies embeddings by sqrt(hidden_size) (rounded to the activation dtype).
    pub embedding_scale: Option<f64>,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// The dtype the checkpoint was saved in (`torch_dtype` / `dtype`), if stated.
    pub checkpoint_dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The longest sequence the model was trained for (`max_position_embeddings`), if stated.
    pub max_position_embeddings: Option<usize>,
    /// The attention score scale: 1/sqrt(head_dim), or Gemma-2's 1/sqrt(query_pre_attn_scalar).
    pub attn_scale: f64,
    /// Gemma-2's `attn_logit_softcapping`: scores become cap·tanh(scores/cap) before the mask and softmax.
    pub attn_softcap: Option<f64>,
    /// Gemma-2's `final_logit_softcapping`: logits become cap·tanh(logits/cap).
    pub final_softcap: Option<f64>,
    /// Which layers slide an attention window (a query sees itself and the window − 1 keys before it).
    pub windows: Windows,
    /// Gemma-2's extra RMSNorms on the attention and MLP outputs before their residual adds.
    pub sandwich_norms: bool,
    /// Mixtral's sparse MoE MLP (`intermediate_size` is then each expert's).
    pub moe: Option<MoeConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeConfig {
    /// `num_local_experts`.
    pub experts: usize,
    /// `num_experts_per_tok`.
    pub top_k: usize,
}

/// A token id field (one id or a list); an id that does not fit in u32 is an error, not a wrapped id.
fn token_ids(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Vec<u32>> {
    let id = |x: &Value| x.as_u64().map(|n| u32::try_from(n).with_context(|| format!("`{key}`: {n} is not a token id")));
    match obj.get(key) {
        Some(v @ Value::Number(_)) => id(v).transpose().map(|x| x.into_iter().collect()),
        Some(Value::Array(a)) => a.iter().filter_map(id).collect(),
        _ => Ok(vec![]),
    }
}

/// `(rope_theta, scaling)` from transformers 5's `rope_parameters` or the older top-level `rope_theta` +
/// `rope_scaling`.
fn rope_settings(obj: &serde_json::Map<String, Value>, max_position_embeddings: Option<usize>) -> Result<(f64, RopeScaling)> {
    let params = obj.get("rope_parameters").filter(|v| !v.is_null());
    let (section, scaling) = match params {
        Some(p) => ("rope_parameters", p),
        None => ("rope_scaling", obj.get("rope_scaling").unwrap_or(&Value::Null)),
    };
    if !scaling.is_null() && !scaling.is_object() {
        bail!("`{section}` must be an object");
    }
    let field = |key: &str| scaling.get(key).filter(|v| !v.is_null());
    let number = |key: &str| -> Result<Option<f64>> {
        field(key).map(|v| v.as_f64().with_context(|| format!("`{section}.{key}` must be a number"))).transpose()
    };
    let required = |key: &str, rope_type: &str| -> Result<f64> {
        number(key)?.with_context(|| format!("`{section}.{key}` is required for rope_type `{rope_type}`"))
    };
    let rope_theta = match number("rope_theta")? {
        Some(t) => t,
        None => obj
            .get("rope_theta")
            .map(|v| v.as_f64().context("`rope_theta` must be a number"))
            .transpose()?
            .unwrap_or(10000.0),
    };
    // A partial rotary embedding would rotate only part of each head: refuse rather than rotate all of it.
    if let Some(f) = number("partial_rotary_factor")?.or(obj.get("partial_rotary_factor").and_then(Value::as_f64)) {
        if f != 1.0 {
            bail!("partial_rotary_factor {f} is not supported (only 1.0: RoPE over the whole head)");
        }
    }
    let rope_type = match field("rope_type").or_else(|| field("type")) {
        None => "default",
        Some(v) => v.as_str().with_context(|| format!("`{section}.rope_type` must be a string"))?,
    };
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: required("factor", rope_type)? },
        "dynamic" => {
            if max_position_embeddings.is_none() {
                bail!("rope_type `dynamic` needs `max_position_embeddings` (where its rescaling starts)");
            }
            RopeScaling::Dynamic { factor: required("factor", rope_type)? }
        }
        "llama3" => {
            let (low_freq_factor, high_freq_factor) = (required("low_freq_factor", rope_type)?, required("high_freq_factor", rope_type)?);
            if high_freq_factor <= low_freq_factor {
                bail!("`{section}`: high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})");
            }
            let original = required("original_max_position_embeddings", rope_type)?;
            if original < 1.0 || original.fract() != 0.0 {
                bail!("`{section}.original_max_position_embeddings` must be a positive integer");
            }
            RopeScaling::Llama3 { factor: required("factor", rope_type)?, low_freq_factor, high_freq_factor, original_max_position_embeddings: original as usize }
        }
        other => bail!("rope_type `{other}` (in `{section}`) is not supported: supported are {ROPE_TYPES}"),
    };
    if let RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } | RopeScaling::Llama3 { factor, .. } = scaling {
        if factor.is_nan() || factor <= 0.0 {
            bail!("`{section}.factor` must be positive, not {factor}");
        }
    }
    Ok((rope_theta, scaling))
}

/// The attention window of families that slide it over every layer, as transformers derives it. Mistral's
/// config class defaults `sliding_window` to 4096 when the key is absent (null means none), Mixtral's to none;
/// Qwen2/Qwen3 slide only with `use_sliding_window` and then only in layers from `max_window_layers` on, which is
/// refused here. Gemma-2's per-layer windows are read by [`Gemma2Fields`].
fn sliding_window(obj: &serde_json::Map<String, Value>, family: Family, num_layers: usize) -> Result<Option<usize>> {
    let window = |default: Option<usize>| -> Result<Option<usize>> {
        match obj.get("sliding_window") {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(w) if w > 0 => Ok(Some(w as usize)),
                _ => bail!("field `sliding_window` must be a positive integer or null"),
            },
        }
    };
    match family {
        Family::Mistral => window(Some(4096)),
        Family::Mixtral => window(None),
        Family::Qwen2 | Family::Qwen3 => {
            let used = match obj.get("use_sliding_window") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => bail!("field `use_sliding_window` must be true or false"),
            };
            if !used || window(Some(4096))?.is_none() {
                return Ok(None);
            }
            let sliding_layers = match obj.get("layer_types").and_then(Value::as_array) {
                Some(types) => types.iter().filter(|t| t.as_str() == Some("sliding_attention")).count(),
                None => num_layers.saturating_sub(obj.get("max_window_layers").and_then(Value::as_u64).unwrap_or(28) as usize),
            };
            if sliding_layers > 0 {
                bail!(
                    "use_sliding_window = true with {sliding_layers} sliding-window layer(s) (layer_types, or those from max_window_layers on) is not \
                     supported for {}; Qwen2.5 and Qwen3 checkpoints ship use_sliding_window = false",
                    family.name()
                );
            }
            Ok(None)
        }
        Family::Llama | Family::Gemma | Family::Gemma2 => Ok(None),
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let json: Value = crate::jsonutil::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_json(&json).with_context(|| format!("in model config {}", path.display()))
    }

    pub fn from_json(json: &Value) -> Result<Self> {
        let obj = json.as_object().context("config.json must be a JSON object")?;
        let architecture = obj
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .or_else(|| obj.get("model_type").and_then(|m| m.as_str()).map(str::to_string))
            .context("config.json has neither `architectures` nor `model_type`")?;
        let Some(&(_, _, family)) = SUPPORTED.iter().find(|(arch, model_type, _)| architecture == *arch || architecture == *model_type) else {
            let names: Vec<&str> = SUPPORTED.iter().map(|s| s.0).collect();
            bail!(
                "unsupported architecture `{architecture}`: supported are {} (Qwen1.5 and Qwen2.5 checkpoints use \
                 Qwen2ForCausalLM, Llama-2/3.x LlamaForCausalLM)",
                names.join(", ")
            );
        };
        let usize_field = |key: &str| -> Result<usize> {
            obj.get(key)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .with_context(|| format!("field `{key}` is missing or not a non-negative integer"))
        };
        let opt_usize = |key: &str| obj.get(key).and_then(|v| v.as_u64()).map(|v| v as usize);
        let bool_field = |key: &str, default: bool| -> Result<bool> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => bail!("field `{key}` must be true or false"),
            }
        };

        let hidden_size = usize_field("hidden_size")?;
        let num_heads = usize_field("num_attention_heads")?;
        let num_kv_heads = opt_usize("num_key_value_heads").unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            bail!("num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})");
        }
        let head_dim = match opt_usize("head_dim") {
            Some(d) => d,
            None => {
                if hidden_size % num_heads != 0 {
                    bail!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads} and no head_dim is given");
                }
                hidden_size / num_heads
            }
        };
        if head_dim % 2 != 0 {
            bail!("head_dim {head_dim} must be even for rotary embeddings");
        }

        let max_position_embeddings = opt_usize("max_position_embeddings");
        let (rope_theta, rope_scaling) = rope_settings(obj, max_position_embeddings)?;
        let sliding_window = sliding_window(obj, family, usize_field("num_hidden_layers")?)?;

        let act_name = match family {
            // transformers uses `hidden_activation` for Gemma and falls back to tanh-GELU when it is absent,
            // whatever `hidden_act` says (gemma-2b ships `hidden_act: "gelu"`).
            Family::Gemma | Family::Gemma2 => obj
                .get("hidden_activation")
                .and_then(|v| v.as_str())
                .unwrap_or("gelu_pytorch_tanh")
                .to_string(),
            _ => obj.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("silu").to_string(),
        };
        let activation = match act_name.as_str() {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            other => bail!("activation `{other}` is not supported (silu, gelu, gelu_pytorch_tanh)"),
        };

        let attention_bias = bool_field("attention_bias", false)?;
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            // transformers builds Mistral's projections without bias whatever the config says.
            Family::Mistral => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let mlp_bias = family == Family::Llama && bool_field("mlp_bias", false)?;
        let gemma_like = matches!(family, Family::Gemma | Family::Gemma2);
        let tie_default = gemma_like;
        let checkpoint_dtype = obj
            .get("dtype")
            .or_else(|| obj.get("torch_dtype"))
            .and_then(|v| v.as_str())
            .map(str::to_string);

        let num_layers = usize_field("num_hidden_layers")?;
        let gemma2 = Gemma2Fields::read(obj, family, num_layers, head_dim)?;
        let (attn_scale, attn_softcap, final_softcap) = (gemma2.attn_scale, gemma2.attn_softcap, gemma2.final_softcap);
        let windows = match sliding_window {
            Some(w) => Windows::All(w),
            None => gemma2.windows,
        };
        let moe = if family == Family::Mixtral {
            let experts = usize_field("num_local_experts")?;
            let top_k = usize_field("num_experts_per_tok")?;
            if top_k == 0 || top_k > experts {
                bail!("num_experts_per_tok ({top_k}) must be between 1 and num_local_experts ({experts})");
            }
            if bool_field("output_router_logits", false)? {
                bail!("output_router_logits = true (the router's auxiliary loss) is not supported: LoRA fine-tuning here runs without it, as PEFT does with output_router_logits = false");
            }
            Some(MoeConfig { experts, top_k })
        } else {
            None
        };

        Ok(Self {
            family,
            architecture,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: usize_field("intermediate_size")?,
            vocab_size: usize_field("vocab_size")?,
            rms_norm_eps: obj.get("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            qk_norm: family == Family::Qwen3,
            tie_word_embeddings: bool_field("tie_word_embeddings", tie_default)?,
            activation,
            norm_weight_offset: if gemma_like { 1.0 } else { 0.0 },
            embedding_scale: gemma_like.then(|| (hidden_size as f64).sqrt()),
            qkv_bias,
            o_bias,
            mlp_bias,
            checkpoint_dtype,
            bos_token_id: token_ids(obj, "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(obj, "eos_token_id")?,
            pad_token_id: token_ids(obj, "pad_token_id")?.first().copied(),
            max_position_embeddings,
            attn_scale,
            attn_softcap,
            final_softcap,
            windows,
            sandwich_norms: family == Family::Gemma2,
            moe,
        })
    }

    /// RoPE's inverse frequencies (`head_dim / 2` of them), in f32 as transformers computes them so that long
    /// positions agree to the ulp.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let plain = crate::ops::rope::plain_inv_freq(self.head_dim, self.rope_theta).into_iter();
        match self.rope_scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => plain.collect(),
            RopeScaling::Linear { factor } => plain.map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (factor, low, high) = (factor as f32, low_freq_factor as f32, high_freq_factor as f32);
                let old_len = original_max_position_embeddings as f32;
                let (low_wavelen, high_wavelen) = (old_len / low, old_len / high);
                plain
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        if wavelen < high_wavelen || wavelen > low_wavelen {
                            return scaled;
                        }
                        let smooth = (old_len / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    })
                    .collect()
            }
        }
    }

    /// The number of positions the RoPE tables may cover, where the scaling makes longer ones undefined here.
    pub fn rope_position_limit(&self) -> Option<usize> {
        match self.rope_scaling {
            RopeScaling::Dynamic { .. } => self.max_position_embeddings,
            _ => None,
        }
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameters of the whole model as transformers counts them (`model.parameters()`: tied embeddings once,
    /// biases and every norm included), for plans and for checking a reading of a real config.
    pub fn num_parameters(&self) -> u64 {
        // Saturating: a config is read before its checkpoint confirms the sizes, so they may be absurd.
        let m = |xs: &[usize]| xs.iter().fold(1u64, |acc, &x| acc.saturating_mul(x as u64));
        let sum = |xs: &[u64]| xs.iter().fold(0u64, |acc, &x| acc.saturating_add(x));
        let (h, q, kv, i, v) = (self.hidden_size, self.q_dim(), self.kv_dim(), self.intermediate_size, self.vocab_size);
        let on = |b: bool, n: u64| if b { n } else { 0 };
        let attention = sum(&[m(&[2, h, q]), m(&[2, h, kv]), on(self.qkv_bias, sum(&[q as u64, m(&[2, kv])])), on(self.o_bias, h as u64)]);
        let mlp = match self.moe {
            Some(e) => m(&[e.experts]).saturating_mul(sum(&[m(&[3, h, i]), h as u64])),
            None => sum(&[m(&[3, h, i]), on(self.mlp_bias, sum(&[m(&[2, i]), h as u64]))]),
        };
        let norms = sum(&[m(&[if self.sandwich_norms { 4 } else { 2 }, h]), on(self.qk_norm, m(&[2, self.head_dim]))]);
        let layers = m(&[self.num_layers]).saturating_mul(sum(&[attention, mlp, norms]));
        sum(&[m(&[v, h]), layers, h as u64, on(!self.tie_word_embeddings, m(&[v, h]))])
    }

    /// Layer `li`'s sliding window, `None` for global attention.
    pub fn layer_window(&self, li: usize) -> Option<usize> {
        match &self.windows {
            Windows::None => None,
            Windows::All(w) => Some(*w),
            Windows::EvenLayers(w) => (li % 2 == 0).then_some(*w),
            Windows::PerLayer(v) => v.get(li).copied().flatten(),
        }
    }
}

/// The sliding windows of a model's layers, as a rule rather than a list: a config's `num_hidden_layers` is
/// not trusted to size an allocation before the checkpoint confirms it.
#[derive(Debug, Clone, PartialEq)]
pub enum Windows {
    /// Global attention everywhere.
    None,
    /// Every layer slides (Mistral; Mixtral with `sliding_window` set).
    All(usize),
    /// Even layers slide, odd ones are global (Gemma-2's default `layer_types`).
    EvenLayers(usize),
    /// As `layer_types` lists them, one entry per layer.
    PerLayer(Vec<Option<usize>>),
}

/// What Gemma-2 adds to the config; other families get plain attention (1/sqrt(head_dim), no caps, no windows).
struct Gemma2Fields {
    attn_scale: f64,
    attn_softcap: Option<f64>,
    final_softcap: Option<f64>,
    windows: Windows,
}

impl Gemma2Fields {
    fn read(obj: &serde_json::Map<String, Value>, family: Family, num_layers: usize, head_dim: usize) -> Result<Self> {
        let plain = Self { attn_scale: 1.0 / (head_dim as f64).sqrt(), attn_softcap: None, final_softcap: None, windows: Windows::None };
        if family != Family::Gemma2 {
            return Ok(plain);
        }
        // A present number is used, null switches the feature off, absence takes transformers' default.
        let positive = |key: &str, default: Option<f64>| -> Result<Option<f64>> {
            match obj.get(key) {
                None => Ok(default),
                Some(Value::Null) => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x > 0.0 => Ok(Some(x)),
                    _ => bail!("field `{key}` must be a positive number or null"),
                },
            }
        };
        let scalar = positive("query_pre_attn_scalar", Some(256.0))?.context("field `query_pre_attn_scalar` must not be null")?;
        let window = match obj.get("sliding_window") {
            None => Some(4096),
            Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(w) if w > 0 => Some(w as usize),
                _ => bail!("field `sliding_window` must be a positive integer or null"),
            },
        };
        // transformers' Gemma2Config: without `layer_types`, even layers (0, 2, ..) slide and odd ones are global.
        // A window of None (sliding_window null) makes a sliding layer global, as transformers' mask does.
        let windows = match (obj.get("layer_types"), window) {
            (None | Some(Value::Null), Some(w)) => Windows::EvenLayers(w),
            (None | Some(Value::Null), None) => Windows::None,
            (Some(Value::Array(a)), _) => {
                if a.len() != num_layers {
                    bail!("field `layer_types` has {} entries for num_hidden_layers = {num_layers}", a.len());
                }
                let per_layer = a
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(None),
                        Some("sliding_attention") => Ok(window),
                        Some(other) => bail!("`layer_types` entry `{other}` is not supported (full_attention, sliding_attention)"),
                        None => bail!("field `layer_types` must be a list of strings"),
                    })
                    .collect::<Result<_>>()?;
                Windows::PerLayer(per_layer)
            }
            (Some(_), _) => bail!("field `layer_types` must be a list of strings"),
        };
        Ok(Self {
            attn_scale: 1.0 / scalar.sqrt(),
            attn_softcap: positive("attn_logit_softcapping", Some(50.0))?,
            final_softcap: positive("final_logit_softcapping", Some(30.0))?,
            windows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_rope_layouts_are_read() {
        let old = json!({"architectures":["LlamaForCausalLM"],"hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":96,"vocab_size":10,"rope_theta":5e5,"torch_dtype":"bfloat16"});
        let new = json!({"architectures":["LlamaForCausalLM"],"hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":96,"vocab_size":10,
            "rope_parameters":{"rope_type":"default","rope_theta":5e5},"dtype":"bfloat16"});
        for j in [old, new] {
            let c = ModelConfig::from_json(&j).unwrap();
            assert_eq!(c.rope_theta, 5e5);
            assert_eq!(c.checkpoint_dtype.as_deref(), Some("bfloat16"));
            assert_eq!(c.head_dim, 16);
            assert!(!c.tie_word_embeddings);
        }
    }

    #[test]
    fn token_ids_that_do_not_fit_are_errors_not_wrapped() {
        let mut j = json!({"architectures":["LlamaForCausalLM"],"hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":96,"vocab_size":10,"eos_token_id":[2, 7]});
        assert_eq!(ModelConfig::from_json(&j).unwrap().eos_token_ids, [2, 7]);
        j["eos_token_id"] = json!(4294967296u64);
        let e = format!("{:#}", ModelConfig::from_json(&j).unwrap_err());
        assert!(e.contains("`eos_token_id`: 4294967296 is not a token id"), "{e}");
        j["eos_token_id"] = json!([2, 4294967297u64]);
        assert!(ModelConfig::from_json(&j).is_err());
    }

    #[test]
    fn unknown_architecture_is_named_with_the_supported_ones() {
        let j = json!({"architectures":["FalconForCausalLM"],"hidden_size":64});
        let e = ModelConfig::from_json(&j).unwrap_err().to_string();
        assert!(e.contains("FalconForCausalLM"), "{e}");
        for (arch, _, _) in SUPPORTED {
            assert!(e.contains(arch), "{e}");
        }
    }

    #[test]
    fn real_gemma_config_uses_tanh_gelu_and_offsets() {
        let Some(path) = crate::testing::shared("tokenizers/configs/gemma-2b.config.json") else { return };
        let c = ModelConfig::from_file(&path).unwrap();
        assert_eq!(c.family, Family::Gemma);
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(c.head_dim, 256);
        assert_eq!(c.num_kv_heads, 1);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.norm_weight_offset, 1.0);
        assert_eq!(c.embedding_scale, Some(2048f64.sqrt()));
    }

    fn tiny(extra: Value) -> Value {
        let mut j = json!({"architectures":["LlamaForCausalLM"],"hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":96,"vocab_size":10,"max_position_embeddings":512});
        j.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        j
    }

    #[test]
    fn gemma2_fields_are_read_and_bad_ones_named() {
        let mut j = json!({"architectures":["Gemma2ForCausalLM"],"hidden_size":64,"num_hidden_layers":3,
            "num_attention_heads":4,"head_dim":32,"intermediate_size":96,"vocab_size":10,"sliding_window":8,
            "query_pre_attn_scalar":16,"attn_logit_softcapping":null,
            "layer_types":["full_attention","sliding_attention","sliding_attention"]});
        let c = ModelConfig::from_json(&j).unwrap();
        assert_eq!(c.windows, Windows::PerLayer(vec![None, Some(8), Some(8)]));
        assert_eq!((0..3).map(|i| c.layer_window(i)).collect::<Vec<_>>(), [None, Some(8), Some(8)]);
        assert_eq!(c.attn_scale, 0.25);
        // null switches a cap off; absence takes transformers' default.
        assert_eq!((c.attn_softcap, c.final_softcap), (None, Some(30.0)));
        assert!(c.sandwich_norms && c.tie_word_embeddings && c.norm_weight_offset == 1.0);
        j["layer_types"] = json!(["full_attention", "sliding_attention"]);
        let e = format!("{:#}", ModelConfig::from_json(&j).unwrap_err());
        assert!(e.contains("`layer_types` has 2 entries for num_hidden_layers = 3"), "{e}");
        j["layer_types"] = json!(["full_attention", "chunked_attention", "full_attention"]);
        let e = format!("{:#}", ModelConfig::from_json(&j).unwrap_err());
        assert!(e.contains("chunked_attention") && e.contains("sliding_attention"), "{e}");
        j["layer_types"] = Value::Null;
        j["attn_logit_softcapping"] = json!(-1.0);
        let e = format!("{:#}", ModelConfig::from_json(&j).unwrap_err());
        assert!(e.contains("`attn_logit_softcapping` must be a positive number or null"), "{e}");
        j["attn_logit_softcapping"] = json!(50.0);
        j["sliding_window"] = json!(0);
        let e = format!("{:#}", ModelConfig::from_json(&j).unwrap_err());
        assert!(e.contains("`sliding_window` must be a positive integer or null"), "{e}");
        // Other families keep plain attention whatever Gemma-2 keys they carry.
        j["architectures"] = json!(["LlamaForCausalLM"]);
        let c = ModelConfig::from_json(&j).unwrap();
        assert_eq!((c.attn_scale, c.attn_softcap, c.final_softcap), (1.0 / 32f64.sqrt(), None, None));
        assert!(c.windows == Windows::None && !c.sandwich_norms);
    }

    #[test]
    fn mixtral_fields_are_read_and_bad_ones_named() {
        let mut j = json!({"architectures":["MixtralForCausalLM"],"hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":96,"vocab_size":10,
            "num_local_experts":4,"num_experts_per_tok":2,"sliding_window":null});
        let c = ModelConfig::from_json(&j).unwrap();
        assert_eq!(c.moe, Some(MoeConfig { experts: 4, top_k: 2 }));
        assert_eq!(c.windows, Windows::None);
        j["sliding_window"] = json!(32);
        assert_eq!(ModelConfig::from_json(&j).unwrap().windows, Windows::All(32));
        // A layer count no checkpoint could have allocates nothing before the checkpoint is read.
        j["num_hidden_layers"] = json!(1u64 << 40);
        assert_eq!(ModelConfig::from_json(&j).unwrap().layer_window(5), Some(32));
        j["num_experts_per_tok"] = json!(5);
        let e = format!("{:#}", ModelConfig::from_json(&j).unwrap_err());
        assert!(e.contains("num_experts_per_tok (5) must be between 1 and num_local_experts (4)"), "{e}");
        j["num_experts_per_tok"] = json!(2);
        j["output_router_logits"] = json!(true);
        let e = format!("{:#}", ModelConfig::from_json(&j).unwrap_err());
        assert!(e.contains("output_router_logits"), "{e}");
        j["output_router_logits"] = json!(false);
        j.as_object_mut().unwrap().remove("num_local_experts");
        let e = format!("{:#}", ModelConfig::from_json(&j).unwrap_err());
        assert!(e.contains("`num_local_experts` is missing"), "{e}");
    }

    #[test]
    fn unknown_rope_type_lists_the_supported_ones() {
        for j in [tiny(json!({"rope_scaling":{"rope_type":"yarn","factor":2.0}})),
                  tiny(json!({"rope_parameters":{"rope_type":"yarn","rope_theta":1e4,"factor":2.0}}))] {
            let e = ModelConfig::from_json(&j).unwrap_err().to_string();
            assert!(e.contains("`yarn`") && e.contains(ROPE_TYPES), "{e}");
        }
        let e = ModelConfig::from_json(&tiny(json!({"rope_scaling":{"rope_type":"llama3","factor":8.0}}))).unwrap_err().to_string();
        assert!(e.contains("`rope_scaling.low_freq_factor` is required"), "{e}");
    }

    #[test]
    fn both_layouts_give_the_same_scaling() {
        let llama3 = json!({"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64});
        let old = tiny(json!({"rope_theta":5e5,"rope_scaling":llama3.clone()}));
        let mut params = llama3.clone();
        params["rope_theta"] = json!(5e5);
        let new = tiny(json!({"rope_parameters":params}));
        let (a, b) = (ModelConfig::from_json(&old).unwrap(), ModelConfig::from_json(&new).unwrap());
        assert_eq!((a.rope_theta, &a.rope_scaling), (b.rope_theta, &b.rope_scaling));
        assert!(matches!(a.rope_scaling, RopeScaling::Llama3 { original_max_position_embeddings: 64, .. }));
        // Old files name the key `type`.
        let c = ModelConfig::from_json(&tiny(json!({"rope_scaling":{"type":"linear","factor":2.0}}))).unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        let plain = ModelConfig::from_json(&tiny(json!({}))).unwrap().rope_inv_freq();
        assert!(c.rope_inv_freq().iter().zip(&plain).all(|(s, p)| *s == p / 2.0));
    }

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        // head_dim 16, θ = 5e5, original length 64: wavelengths run from 2π to ~2π·5e5^(7/8).
        let j = tiny(json!({"rope_theta":5e5,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":64}}));
        let c = ModelConfig::from_json(&j).unwrap();
        let plain = ModelConfig::from_json(&tiny(json!({"rope_theta":5e5}))).unwrap().rope_inv_freq();
        let scaled = c.rope_inv_freq();
        let mut kinds = [0; 3];
        for (s, p) in scaled.iter().zip(&plain) {
            let wavelen = 2.0 * std::f32::consts::PI / p;
            if wavelen < 16.0 {
                assert_eq!(s, p);
                kinds[0] += 1;
            } else if wavelen > 64.0 {
                assert_eq!(*s, p / 8.0);
                kinds[1] += 1;
            } else {
                assert!(*s < *p && *s > p / 8.0);
                kinds[2] += 1;
            }
        }
        assert!(kinds.iter().all(|&k| k > 0), "every branch is exercised: {kinds:?}");
    }

    #[test]
    fn dynamic_rope_is_plain_within_max_positions_and_limited_there() {
        let c = ModelConfig::from_json(&tiny(json!({"rope_scaling":{"rope_type":"dynamic","factor":2.0}}))).unwrap();
        assert_eq!(c.rope_inv_freq(), ModelConfig::from_json(&tiny(json!({}))).unwrap().rope_inv_freq());
        assert_eq!(c.rope_position_limit(), Some(512));
    }

    #[test]
    fn sliding_windows_follow_transformers_defaults() {
        let mistral = |extra: Value| {
            let mut j = tiny(extra);
            j["architectures"] = json!(["MistralForCausalLM"]);
            ModelConfig::from_json(&j)
        };
        assert_eq!(mistral(json!({})).unwrap().windows, Windows::All(4096));
        assert_eq!(mistral(json!({"sliding_window":null})).unwrap().windows, Windows::None);
        assert_eq!(mistral(json!({"sliding_window":16,"attention_bias":true})).unwrap().windows, Windows::All(16));
        assert!(!mistral(json!({"attention_bias":true})).unwrap().qkv_bias);
        let qwen = |extra: Value| {
            let mut j = tiny(extra);
            j["architectures"] = json!(["Qwen2ForCausalLM"]);
            ModelConfig::from_json(&j)
        };
        // Qwen2.5 ships a window but use_sliding_window = false: no window.
        assert_eq!(qwen(json!({"use_sliding_window":false,"sliding_window":131072,"max_window_layers":28})).unwrap().windows, Windows::None);
        // Sliding only from layer max_window_layers on, beyond the last layer: none either.
        assert_eq!(qwen(json!({"use_sliding_window":true,"sliding_window":64,"max_window_layers":2})).unwrap().windows, Windows::None);
        let e = qwen(json!({"use_sliding_window":true,"sliding_window":64,"max_window_layers":1})).unwrap_err().to_string();
        assert!(e.contains("use_sliding_window = true with 1 sliding-window layer"), "{e}");
    }

    #[test]
    fn qwen3_normalises_q_and_k_without_bias() {
        let mut j = tiny(json!({"head_dim":32,"attention_bias":false}));
        j["architectures"] = json!(["Qwen3ForCausalLM"]);
        let c = ModelConfig::from_json(&j).unwrap();
        assert!(c.qk_norm && !c.qkv_bias && !c.o_bias);
        assert_eq!((c.head_dim, c.q_dim()), (32, 128));
    }
}
