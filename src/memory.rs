//! Memory a training run needs, estimated from config.json alone (no weights are read), so `trainer plan` can say
//! whether a model fits before a run is launched.
//!
//! The terms follow what the trainer holds (src/model/, src/train.rs, src/optim.rs):
//! - the frozen weights, resident in the run's dtype (every projection of every layer, the embeddings, the head
//!   when it is not tied);
//! - the LoRA state in f32: factors, their gradients and AdamW's two moments (16 bytes a parameter);
//! - the activations one micro-batch keeps for its backward: per layer what `LayerCache` holds (inputs, normed
//!   inputs, q/k/v after RoPE, the attention output and its transposed copy, the MLP's gate, up and product, each
//!   LoRA branch's `x·Aᵀ`, f32 norm statistics and log-sum-exps); with `gradient_checkpointing` only each layer's
//!   input plus one layer's cache, rebuilt just before its backward;
//! - the largest temporaries of a step: the attention's backward (on the CPU four `[B, heads, T, T]` buffers —
//!   scores, probabilities and their gradients — which the CUDA kernels never build; on both the repeated k/v
//!   and the q/k/v/o-sized gradients), the LM-head chunk's f32 logits and softmax, or the MLP's gradients.
//!
//! Sizes are for full micro-batches of `max_seq_len` tokens, the most a step can hold (shorter batches are padded
//! only to their longest sequence). Sparse-MoE configs (`num_local_experts`) count every expert's weights; their
//! activations are counted as for a dense MLP of the expert's width times `num_experts_per_tok` (each token passes
//! through that many experts).

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

/// The sizes of a decoder, read from config.json as transformers names them.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub tied: bool,
    /// Biases of q/k/v (Qwen2 always; others when `attention_bias`), of o (`attention_bias`), of the MLP.
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Experts per MoE layer (1: a dense MLP) and experts each token passes through.
    pub experts: usize,
    pub experts_per_token: usize,
}

impl Shape {
    pub fn from_config(json: &Value) -> Result<Self> {
        // Multimodal configs (Gemma 3 and the like) nest the decoder's numbers under text_config.
        let cfg = json.get("text_config").filter(|v| v.is_object()).unwrap_or(json);
        let num = |key: &str| -> Result<usize> {
            cfg.get(key).and_then(Value::as_u64).map(|n| n as usize).with_context(|| format!("config.json has no number `{key}`"))
        };
        let opt = |key: &str| cfg.get(key).and_then(Value::as_u64).map(|n| n as usize);
        let flag = |key: &str| cfg.get(key).and_then(Value::as_bool);
        let hidden = num("hidden_size")?;
        let heads = num("num_attention_heads")?;
        let architecture = json.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str).unwrap_or("");
        let attention_bias = flag("attention_bias").unwrap_or(false);
        let experts = opt("num_local_experts").or_else(|| opt("num_experts")).unwrap_or(1).max(1);
        let intermediate = if experts > 1 { opt("moe_intermediate_size").map_or_else(|| num("intermediate_size"), Ok)? } else { num("intermediate_size")? };
        Ok(Self {
            hidden,
            intermediate,
            layers: num("num_hidden_layers")?,
            heads,
            kv_heads: opt("num_key_value_heads").unwrap_or(heads),
            head_dim: opt("head_dim").unwrap_or(hidden / heads.max(1)),
            vocab: num("vocab_size")?,
            tied: flag("tie_word_embeddings").unwrap_or(architecture.starts_with("Gemma")),
            qkv_bias: architecture == "Qwen2ForCausalLM" || attention_bias,
            o_bias: attention_bias,
            mlp_bias: flag("mlp_bias").unwrap_or(false),
            experts,
            experts_per_token: if experts > 1 { opt("num_experts_per_tok").unwrap_or(2) } else { 1 },
        })
    }

    /// (fan_in, fan_out) of the LoRA-capable projections q, k, v, o, gate, up, down (a MoE layer's gate/up/down
    /// are one expert's w1/w3/w2) and the router (none in a dense model).
    fn projections(&self) -> [(usize, usize); 8] {
        let (h, i) = (self.hidden, self.intermediate);
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let router = if self.experts > 1 { (h, self.experts) } else { (0, 0) };
        [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h), router]
    }

    /// Every parameter of the checkpoint.
    pub fn parameters(&self) -> u64 {
        let p = self.projections();
        let attention: usize = p[..4].iter().map(|(a, b)| a * b).sum::<usize>()
            + if self.qkv_bias { p[0].1 + p[1].1 + p[2].1 } else { 0 }
            + if self.o_bias { self.hidden } else { 0 };
        let expert: usize = p[4..7].iter().map(|(a, b)| a * b).sum::<usize>() + if self.mlp_bias { 2 * self.intermediate + self.hidden } else { 0 };
        let router = if self.experts > 1 { self.experts * self.hidden } else { 0 };
        let layer = attention + self.experts * expert + router + 2 * self.hidden;
        let embeddings = self.vocab * self.hidden * if self.tied { 1 } else { 2 };
        (self.layers * layer + embeddings + self.hidden) as u64
    }

    /// LoRA parameters of rank `r` on `targets` (indices into q, k, v, o, gate, up, down, router) in every
    /// layer; MLP targets of a MoE layer (w1, w3, w2) are adapted in each expert.
    pub fn lora_parameters(&self, r: usize, targets: &[usize]) -> u64 {
        let p = self.projections();
        let per_layer: usize = targets.iter().map(|&t| r * (p[t].0 + p[t].1) * if is_mlp(t) { self.experts } else { 1 }).sum();
        (self.layers * per_layer) as u64
    }
}

/// What one training step of a micro-batch holds, in bytes.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub dtype: String,
    pub device: String,
    pub parameters: u64,
    pub weights_bytes: u64,
    pub lora_parameters: u64,
    /// Factors, gradients and AdamW moments, all f32.
    pub lora_state_bytes: u64,
    pub micro_batch_sequences: usize,
    pub micro_batch_tokens: usize,
    /// Activations kept for backward without recomputation, and with it (`gradient_checkpointing`).
    pub activations_bytes: u64,
    pub activations_recompute_bytes: u64,
    /// The largest temporaries of a step (attention scores on the CPU, the LM-head chunk, one layer's gradients).
    pub temporaries_bytes: u64,
    /// The recipe's setting, and the peak it gives: weights + LoRA state + activations (as set) + temporaries.
    pub gradient_checkpointing: bool,
    pub peak_bytes: u64,
    /// The same peak with the other setting of gradient_checkpointing.
    pub peak_other_setting_bytes: u64,
}

/// Where a LoRA target sits in [`RunShape::targets`]' list: Mixtral's w1/w3/w2 take the places of the dense
/// gate/up/down, whose shapes they have.
pub fn projection_index(t: crate::lora::Target) -> usize {
    use crate::lora::Target;
    match t {
        Target::W1 => Target::Gate.index(),
        Target::W3 => Target::Up.index(),
        Target::W2 => Target::Down.index(),
        t => t.index(),
    }
}

/// Whether a [`RunShape::targets`] index is an MLP projection (in a MoE layer, one per expert).
fn is_mlp(t: usize) -> bool {
    (4..7).contains(&t)
}

/// Inputs of an estimate beside the shape.
#[derive(Debug, Clone)]
pub struct RunShape {
    /// Bytes per activation and weight element: 4 (f32) or 2 (bf16).
    pub dtype_bytes: usize,
    pub dtype: String,
    pub cuda: bool,
    pub micro_batch: usize,
    pub seq_len: usize,
    pub lora_r: usize,
    /// Indices into q, k, v, o, gate, up, down, router; a MoE model's w1, w3, w2 are gate, up, down.
    pub targets: Vec<usize>,
    pub recompute: bool,
}

/// Activation bytes one layer keeps for its backward (`LayerCache`), for `n` tokens.
fn layer_cache(s: &Shape, run: &RunShape, n: u64) -> u64 {
    let a = run.dtype_bytes as u64;
    let (h, q, kv) = (s.hidden as u64, (s.heads * s.head_dim) as u64, (s.kv_heads * s.head_dim) as u64);
    let mlp = (s.intermediate * s.experts_per_token) as u64;
    // x, n1, x1, n2; q (after RoPE), o, its transposed copy o2; k, v; g, u, h; each LoRA branch's x·Aᵀ (an
    // expert's for each of the token's experts).
    let lora: usize = run.targets.iter().map(|&t| run.lora_r * if is_mlp(t) { s.experts_per_token } else { 1 }).sum();
    // A MoE layer keeps each expert's activation too when w2 has LoRA (its factor gradient needs w2's input).
    let w2_input = if s.experts > 1 && run.targets.contains(&6) { mlp } else { 0 };
    let dtype_elems = 4 * h + 3 * q + 2 * kv + 3 * mlp + w2_input + lora as u64;
    // Two norms' 1/rms and the attention's log-sum-exp per head, in f32.
    let f32_elems = 2 + s.heads as u64;
    n * (a * dtype_elems + 4 * f32_elems)
}

pub fn estimate(s: &Shape, run: &RunShape) -> MemoryEstimate {
    let a = run.dtype_bytes as u64;
    let n = (run.micro_batch * run.seq_len) as u64;
    let (b, t) = (run.micro_batch as u64, run.seq_len as u64);
    let h = s.hidden as u64;
    let weights = s.parameters() * a;
    let lora_parameters = s.lora_parameters(run.lora_r, &run.targets);
    let lora_state = 16 * lora_parameters;
    let cache = layer_cache(s, run, n);
    // The last hidden state, its norm and the norm's statistics stay through the loss.
    let head_input = n * (2 * a * h + 4);
    let activations = s.layers as u64 * cache + head_input;
    let activations_recompute = s.layers as u64 * n * a * h + cache + head_input;
    // Temporaries, whichever is largest at its moment. The attention's backward (the last layer's, with every
    // cache still kept) holds on the CPU the recomputed scores, their output gradient, the probabilities and the
    // score gradient — four `[B, heads, T, T]` — beside the dense f32 mask and its copy; on either device the
    // repeated k and v, the output gradient in two layouts, dq, dk and dv before GQA's fold, and the layer's two
    // hidden-state gradients. The LM head holds an f32 logits chunk and its softmax; the MLP's backward the
    // gradients of its three projections.
    let (q, heads) = ((s.heads * s.head_dim) as u64, s.heads as u64);
    let scores = if run.cuda { 0 } else { 4 * b * heads * t * t * a + 2 * b * t * t * 4 };
    let attention = scores + n * a * (7 * q + 2 * h);
    let vocab = s.vocab as u64;
    let chunk = ((64u64 << 20) / vocab.max(1)).clamp(1, n.max(1));
    let head = 2 * chunk * vocab * 4 + n * h * 4;
    let backward = n * a * (3 * (s.intermediate * s.experts_per_token) as u64 + 2 * h);
    let temporaries = attention.max(head).max(backward);
    let peak = |recompute: bool| weights + lora_state + if recompute { activations_recompute } else { activations } + temporaries;
    MemoryEstimate {
        dtype: run.dtype.clone(),
        device: if run.cuda { "cuda".into() } else { "cpu".into() },
        parameters: s.parameters(),
        weights_bytes: weights,
        lora_parameters,
        lora_state_bytes: lora_state,
        micro_batch_sequences: run.micro_batch,
        micro_batch_tokens: n as usize,
        activations_bytes: activations,
        activations_recompute_bytes: activations_recompute,
        temporaries_bytes: temporaries,
        gradient_checkpointing: run.recompute,
        peak_bytes: peak(run.recompute),
        peak_other_setting_bytes: peak(!run.recompute),
    }
}

/// `1.50 GB` / `12.3 MB` style, decimal units as GPU memory is quoted.
pub fn format_bytes(bytes: u64) -> String {
    match bytes as f64 {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b => format!("{:.1} kB", b / 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(json: &str) -> Shape {
        Shape::from_config(&serde_json::from_str(json).unwrap()).unwrap()
    }

    /// Published parameter counts of real checkpoints (their config.json numbers, as on the Hub).
    #[test]
    fn parameter_counts_of_real_configs() {
        let llama2 = shape(r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":11008,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":32000,"tie_word_embeddings":false}"#);
        assert_eq!(llama2.parameters(), 6_738_415_616, "Llama-2-7B");
        let mixtral = shape(r#"{"architectures":["MixtralForCausalLM"],"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":32000,"num_local_experts":8,"num_experts_per_tok":2,"tie_word_embeddings":false}"#);
        assert_eq!(mixtral.parameters(), 46_702_792_704, "Mixtral-8x7B");
        // bf16: ~93.4 GB of weights, the figure the README's "what fits where" starts from.
        assert_eq!(mixtral.parameters() * 2 / 1_000_000_000, 93);
        let gemma = shape(r#"{"architectures":["GemmaForCausalLM"],"hidden_size":2048,"intermediate_size":16384,"num_hidden_layers":18,"num_attention_heads":8,"num_key_value_heads":1,"head_dim":256,"vocab_size":256000}"#);
        assert_eq!(gemma.parameters(), 2_506_172_416, "Gemma-2B (tied head)");
        let qwen = shape(r#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":3584,"intermediate_size":18944,"num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,"vocab_size":152064,"tie_word_embeddings":false}"#);
        assert_eq!(qwen.parameters(), 7_615_616_512, "Qwen2-7B (q/k/v biases)");
        // LoRA r=8 on q, k, v of Llama-2-7B: 32 layers × 3 × 8 × (4096 + 4096).
        assert_eq!(llama2.lora_parameters(8, &[0, 1, 2]), 6_291_456);
    }

    /// LoRA on Mixtral's experts and router counts each expert's w1/w2/w3 and the router once per layer: the
    /// estimate's count is the adapter's own element count, and Mixtral-8x7B's figure is the arithmetic below.
    #[test]
    fn expert_and_router_lora_parameters_match_the_adapter() {
        use crate::lora::{Adapter, LoraSpec, Target};
        let config = crate::testing::mixtral_config();
        let s = Shape::from_config(&config).unwrap();
        let cfg = crate::config::ModelConfig::from_json(&config).unwrap();
        let targets = vec![Target::Q, Target::Router, Target::W1, Target::W2, Target::W3];
        let spec = LoraSpec { r: 4, alpha: 8.0, dropout: 0.0, targets: targets.clone(), rslora: false };
        let adapter = Adapter::init(spec, &cfg, 0, &candle_core::Device::Cpu).unwrap();
        let numel: usize = adapter.tensors().iter().map(|t| t.elem_count()).sum();
        let indices: Vec<usize> = targets.iter().map(|&t| projection_index(t)).collect();
        assert_eq!(s.lora_parameters(4, &indices), numel as u64);
        let mixtral = shape(r#"{"architectures":["MixtralForCausalLM"],"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":32000,"num_local_experts":8,"num_experts_per_tok":2,"tie_word_embeddings":false}"#);
        // 32 layers × (8 experts × 3 × 8 × (4096 + 14336) + 8 × (4096 + 8)).
        assert_eq!(mixtral.lora_parameters(8, &[4, 5, 6, 7]), 114_296_832);
    }

    #[test]
    fn recomputation_keeps_less_and_cuda_builds_no_attention_scores() {
        let s = shape(r#"{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":300}"#);
        let run = RunShape { dtype_bytes: 4, dtype: "f32".into(), cuda: false, micro_batch: 2, seq_len: 128, lora_r: 8, targets: vec![0, 1, 2], recompute: false };
        let e = estimate(&s, &run);
        assert!(e.activations_recompute_bytes < e.activations_bytes);
        assert_eq!(e.peak_bytes, e.weights_bytes + e.lora_state_bytes + e.activations_bytes + e.temporaries_bytes);
        let gpu = estimate(&s, &RunShape { cuda: true, dtype_bytes: 2, ..run });
        assert!(gpu.temporaries_bytes < e.temporaries_bytes && gpu.weights_bytes * 2 == e.weights_bytes);
    }

    /// The README's "what fits where" for Mixtral-8x7B: bf16 on CUDA, LoRA r=8 on q/k/v/o, 8×512 tokens.
    #[test]
    fn mixtral_fits_an_h200_and_not_an_80_gb_card() {
        let mixtral = shape(r#"{"architectures":["MixtralForCausalLM"],"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":32000,"num_local_experts":8,"num_experts_per_tok":2,"tie_word_embeddings":false}"#);
        let run = RunShape { dtype_bytes: 2, dtype: "bf16".into(), cuda: true, micro_batch: 8, seq_len: 512, lora_r: 8, targets: vec![0, 1, 2, 3], recompute: false };
        let e = estimate(&mixtral, &run);
        assert!(e.weights_bytes > 80_000_000_000, "the weights alone exceed an 80 GB card");
        // 141 GB less about 1 GB of CUDA context and cuBLAS workspaces.
        assert!(e.peak_bytes < 140_000_000_000 && e.peak_other_setting_bytes < e.peak_bytes, "{e:?}");
        assert_eq!((e.weights_bytes / 100_000_000, e.peak_bytes / 100_000_000, e.peak_other_setting_bytes / 100_000_000), (934, 1249, 963));
    }
}
