//! The model's `config.json`, reduced to the handful of facts the decoder needs.
//!
//! The three families differ only in data (norm offset, activation, embedding scale, biases), so one
//! [`ModelConfig`] describes all of them. Both the pre-transformers-5 layout (top-level `rope_theta`,
//! `torch_dtype`) and the transformers-5 layout (`rope_parameters.rope_theta`, `dtype`) are accepted.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Gemma,
    Gemma2,
    Qwen2,
    Mixtral,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
            Family::Qwen2 => "qwen2",
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
        let family = match architecture.as_str() {
            "LlamaForCausalLM" | "llama" => Family::Llama,
            "GemmaForCausalLM" | "gemma" => Family::Gemma,
            "Gemma2ForCausalLM" | "gemma2" => Family::Gemma2,
            "Qwen2ForCausalLM" | "qwen2" => Family::Qwen2,
            "MixtralForCausalLM" | "mixtral" => Family::Mixtral,
            other => bail!(
                "unsupported architecture `{other}`: supported are LlamaForCausalLM, GemmaForCausalLM, \
                 Gemma2ForCausalLM, Qwen2ForCausalLM (Qwen1.5 checkpoints use Qwen2ForCausalLM), MixtralForCausalLM"
            ),
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

        // transformers 5 moved rope settings into `rope_parameters`; older files keep `rope_theta` (+ `rope_scaling`).
        let rope_params = obj.get("rope_parameters").filter(|v| !v.is_null());
        let rope_theta = rope_params
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| obj.get("rope_theta"))
            .map(|v| v.as_f64().context("`rope_theta` must be a number"))
            .transpose()?
            .unwrap_or(10000.0);
        let rope_type = rope_params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .or_else(|| obj.get("rope_scaling").filter(|v| !v.is_null()).and_then(|s| s.get("rope_type").or_else(|| s.get("type"))))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        if rope_type != "default" {
            bail!("rope scaling type `{rope_type}` is not supported (only plain RoPE)");
        }
        if bool_field("use_sliding_window", false)? {
            bail!("use_sliding_window = true is not supported");
        }

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
        let (attn_scale, attn_softcap, final_softcap, mut windows) =
            (gemma2.attn_scale, gemma2.attn_softcap, gemma2.final_softcap, gemma2.windows);
        let moe = if family == Family::Mixtral {
            let experts = usize_field("num_local_experts")?;
            let top_k = usize_field("num_experts_per_tok")?;
            if top_k == 0 || top_k > experts {
                bail!("num_experts_per_tok ({top_k}) must be between 1 and num_local_experts ({experts})");
            }
            if bool_field("output_router_logits", false)? {
                bail!("output_router_logits = true (the router's auxiliary loss) is not supported: LoRA fine-tuning here runs without it, as PEFT does with output_router_logits = false");
            }
            // Mixtral's attention slides on every layer when `sliding_window` is set (v0.1 ships null).
            if let Some(v) = obj.get("sliding_window").filter(|v| !v.is_null()) {
                let w = v.as_u64().filter(|&w| w > 0).context("field `sliding_window` must be a positive integer or null")?;
                windows = Windows::All(w as usize);
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
            max_position_embeddings: opt_usize("max_position_embeddings"),
            attn_scale,
            attn_softcap,
            final_softcap,
            windows,
            sandwich_norms: family == Family::Gemma2,
            moe,
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameters of the whole model as transformers counts them (`model.parameters()`: tied embeddings once,
    /// biases and every norm included), for plans and for checking a reading of a real config.
    pub fn parameter_count(&self) -> u64 {
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
        let norms = m(&[if self.sandwich_norms { 4 } else { 2 }, h]);
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
    /// Every layer slides (Mixtral with `sliding_window` set).
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
    fn unknown_architecture_is_named() {
        let j = json!({"architectures":["MistralForCausalLM"],"hidden_size":64});
        let e = ModelConfig::from_json(&j).unwrap_err().to_string();
        assert!(e.contains("MistralForCausalLM"), "{e}");
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
    fn scaled_rope_is_refused() {
        let j = json!({"architectures":["LlamaForCausalLM"],"hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":96,"vocab_size":10,
            "rope_scaling":{"rope_type":"linear","factor":2.0}});
        assert!(ModelConfig::from_json(&j).unwrap_err().to_string().contains("linear"));
    }
}
