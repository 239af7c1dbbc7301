//! Paths, random models and data shared by unit tests, integration tests and benchmarks.

use std::path::PathBuf;

/// The repository root: where it was built, unless `TRAINER_REPO` says otherwise (test binaries carried to
/// another machine, such as the GPU machine).
pub fn repo_dir() -> PathBuf {
    std::env::var_os("TRAINER_REPO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `../shared` beside the repository (real tokenizers and configs, the study's released data; CI has it). Set
/// `TRAINER_SHARED` to point elsewhere.
pub fn shared_root() -> PathBuf {
    std::env::var_os("TRAINER_SHARED").map(PathBuf::from).unwrap_or_else(|| repo_dir().join("../shared"))
}

/// `need` (a path inside `../shared`), or `None` after one line on the terminal saying the test is skipped and
/// what it needs: a clone of the repository alone has no `../shared`. With `TRAINER_REQUIRE_SHARED=1` (CI)
/// a missing path is a failure instead.
pub fn shared(need: &str) -> Option<PathBuf> {
    let path = shared_root().join(need);
    if path.exists() {
        return Some(path);
    }
    let what = format!("{} not found (../shared beside the repository holds it; set TRAINER_SHARED to point elsewhere)", path.display());
    if std::env::var("TRAINER_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
        panic!("{what}; TRAINER_REQUIRE_SHARED=1 makes this a failure");
    }
    // Straight to the terminal: the test harness captures print! output of passing tests.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped {}: {what}", std::thread::current().name().unwrap_or("a test"));
    None
}

/// `tests/fixtures` (tiny checkpoints, adapters and golden values made by tests/fixtures/gen_fixtures.py).
pub fn fixtures_dir() -> PathBuf {
    repo_dir().join("tests/fixtures")
}

use crate::config::ModelConfig;
use crate::data::batch::Example;
use crate::lora::{Adapter, LoraSpec, Target, ALL_TARGETS};
use crate::model::{LayerWeights, Model};
use crate::ops::linear::{Frozen, LoraFactors};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A tiny random model of the given family (all weights drawn from `seed`), f32 on CPU.
pub fn random_model(config: serde_json::Value, seed: u64) -> Model {
    let cfg = ModelConfig::from_json(&config).unwrap();
    let mut s = seed * 1000;
    let mut next = |shape: &[usize], std: f32| {
        s += 1;
        randn(s, shape, std)
    };
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let norm = |t: Tensor| if cfg.norm_weight_offset == 0.0 { (t + 1.0).unwrap() } else { t };
    let layers = (0..cfg.num_layers)
        .map(|_| LayerWeights {
            qk_norm: cfg.qk_norm.then(|| (norm(next(&[cfg.head_dim], 0.1)), norm(next(&[cfg.head_dim], 0.1)))),
            input_norm: norm(next(&[h], 0.1)),
            post_norm: norm(next(&[h], 0.1)),
            attn_out_norm: cfg.sandwich_norms.then(|| norm(next(&[h], 0.1))),
            mlp_out_norm: cfg.sandwich_norms.then(|| norm(next(&[h], 0.1))),
            proj: ALL_TARGETS.map(|t| {
                if cfg.moe.is_some() && t.block() == "mlp" {
                    return None;
                }
                let (i, o) = t.dims(&cfg);
                let bias = match t {
                    Target::Q | Target::K | Target::V => cfg.qkv_bias,
                    Target::O => cfg.o_bias,
                    _ => cfg.mlp_bias,
                };
                Some(Frozen { w: next(&[o, i], 0.15), b: bias.then(|| next(&[o], 0.05)) })
            }),
            // A router with large weights: the routing probabilities differ clearly, so the routing weights
            // carry gradient worth checking.
            moe: cfg.moe.map(|m| {
                let i = cfg.intermediate_size;
                let experts = (0..m.experts)
                    .map(|_| crate::ops::moe::Expert { w1: next(&[i, h], 0.15), w3: next(&[i, h], 0.15), w2: next(&[h, i], 0.15) })
                    .collect();
                crate::ops::moe::MoeWeights { router: next(&[m.experts, h], 0.5), experts }
            }),
        })
        .collect();
    Model {
        embed: next(&[v, h], 0.5),
        final_norm: norm(next(&[h], 0.1)),
        lm_head: (!cfg.tie_word_embeddings).then(|| next(&[v, h], 0.15)),
        layers,
        dtype: candle_core::DType::F32,
        device: Device::Cpu,
        cfg,
    }
}

/// An adapter with non-zero A and B on `targets`.
pub fn random_adapter(model: &Model, targets: &[Target], r: usize, seed: u64) -> Adapter {
    let spec = LoraSpec { r, alpha: 2.0 * r as f64, dropout: 0.0, targets: targets.to_vec(), rslora: false };
    let mut a = Adapter::init(spec, &model.cfg, seed, &Device::Cpu).unwrap();
    for (i, f) in a.factors_mut().into_iter().enumerate() {
        *f = LoraFactors { a: f.a.clone(), b: randn(seed + i as u64, f.b.dims(), 0.2) };
    }
    a
}

/// `n` random examples of varied lengths, response-only targets.
pub fn random_examples(n: usize, vocab: u32, seed: u64) -> Vec<Example> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(5..12);
            let prompt = rng.random_range(1..len - 2);
            Example::new((0..len).map(|_| rng.random_range(0..vocab)).collect(), (0..len).map(|i| i >= prompt).collect(), false)
        })
        .collect()
}

pub fn llama_config() -> serde_json::Value {
    serde_json::json!({"architectures":["LlamaForCausalLM"],"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"intermediate_size":48,"vocab_size":40,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":false})
}

pub fn gemma_config() -> serde_json::Value {
    serde_json::json!({"architectures":["GemmaForCausalLM"],"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":1,"head_dim":16,"intermediate_size":48,"vocab_size":40,"rms_norm_eps":1e-6,
        "rope_parameters":{"rope_type":"default","rope_theta":10000.0}})
}

/// Gemma-2 with both caps low enough to bind on random weights (scores and logits reach several units), a
/// window of 3 on layer 0 (shorter than every random example) and global attention on layer 1.
pub fn gemma2_config() -> serde_json::Value {
    serde_json::json!({"architectures":["Gemma2ForCausalLM"],"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"head_dim":16,"intermediate_size":48,"vocab_size":40,"rms_norm_eps":1e-6,
        "rope_parameters":{"rope_type":"default","rope_theta":10000.0},"query_pre_attn_scalar":8,
        "attn_logit_softcapping":2.0,"final_logit_softcapping":3.0,"sliding_window":3,
        "layer_types":["sliding_attention","full_attention"]})
}

/// Mixtral with 4 experts, top-2 routing.
pub fn mixtral_config() -> serde_json::Value {
    serde_json::json!({"architectures":["MixtralForCausalLM"],"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"intermediate_size":24,"vocab_size":40,"rms_norm_eps":1e-5,"rope_theta":1000000.0,
        "num_local_experts":4,"num_experts_per_tok":2,"sliding_window":null,"tie_word_embeddings":false})
}

pub fn qwen_config() -> serde_json::Value {
    serde_json::json!({"architectures":["Qwen2ForCausalLM"],"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"intermediate_size":48,"vocab_size":40,"rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":true})
}

/// Llama-3.2-like: llama3 RoPE scaling whose ramp covers one of the four frequencies (θ = 5e5, head_dim 8,
/// original length 256: wavelengths 6, 167, 4443, 118145), tied embeddings.
pub fn llama3_config() -> serde_json::Value {
    serde_json::json!({"architectures":["LlamaForCausalLM"],"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"intermediate_size":48,"vocab_size":40,"rms_norm_eps":1e-5,"tie_word_embeddings":true,
        "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":256}})
}

/// A sliding window of 4, shorter than the random examples (5..12 tokens).
pub fn mistral_config() -> serde_json::Value {
    serde_json::json!({"architectures":["MistralForCausalLM"],"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"intermediate_size":48,"vocab_size":40,"rms_norm_eps":1e-5,"rope_theta":10000.0,"sliding_window":4})
}

/// q/k norm, head_dim 16 ≠ hidden / heads, no q/k/v bias.
pub fn qwen3_config() -> serde_json::Value {
    serde_json::json!({"architectures":["Qwen3ForCausalLM"],"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"head_dim":16,"intermediate_size":48,"vocab_size":40,"rms_norm_eps":1e-6,"attention_bias":false,
        "rope_theta":1000000.0,"tie_word_embeddings":false,"use_sliding_window":false,"max_window_layers":2})
}

/// A deterministic N(0, std²)-ish tensor (sum of uniforms), f32 on CPU.
pub fn randn(seed: u64, shape: &[usize], std: f32) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * std * 1.732).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

