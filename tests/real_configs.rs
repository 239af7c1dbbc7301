//! The published config.json of current checkpoints (tests/fixtures/configs) parse, and the trainer counts the
//! same parameters as transformers does for each (param_counts.json, from param_counts.py instantiating each on
//! the meta device): every entry exactly, and the families' own settings as the checkpoints mean them; and RoPE
//! frequency scalings against transformers' at real sizes.

use serde_json::Value;
use trainer::config::{Activation, Family, ModelConfig, MoeConfig, RopeScaling, Windows};

fn configs_dir() -> std::path::PathBuf {
    trainer::testing::fixtures_dir().join("configs")
}

fn load(name: &str) -> ModelConfig {
    ModelConfig::from_file(&configs_dir().join(format!("{name}.config.json"))).unwrap()
}

#[test]
fn every_real_config_counts_the_parameters_transformers_counts() {
    let counts: Value = serde_json::from_str(&std::fs::read_to_string(configs_dir().join("param_counts.json")).unwrap()).unwrap();
    let counts = counts["counts"].as_object().unwrap();
    let files = std::fs::read_dir(configs_dir()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".config.json")).count();
    assert_eq!(counts.len(), files, "param_counts.json covers every config (rerun param_counts.py)");
    assert!(counts.len() >= 4);
    for (name, want) in counts {
        let cfg = load(name);
        assert_eq!(cfg.architecture, want["architecture"].as_str().unwrap(), "{name}");
        assert_eq!(cfg.num_parameters(), want["parameters"].as_u64().unwrap(), "{name}");
    }
}

/// transformers' count of one config (param_counts.json).
fn count(name: &str) -> u64 {
    let counts: Value = serde_json::from_str(&std::fs::read_to_string(configs_dir().join("param_counts.json")).unwrap()).unwrap();
    counts["counts"][name]["parameters"].as_u64().unwrap()
}

#[test]
fn gemma_2_9b_parses_with_its_caps_windows_and_parameter_count() {
    let (c, total) = (load("gemma-2-9b"), count("gemma-2-9b"));
    assert_eq!(c.family, Family::Gemma2);
    assert_eq!((c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim), (3584, 42, 16, 8, 256));
    assert_eq!(c.activation, Activation::GeluTanh);
    assert_eq!(c.attn_scale, 1.0 / 16.0, "1/sqrt(query_pre_attn_scalar = 256)");
    assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
    assert!(c.sandwich_norms && c.tie_word_embeddings);
    assert_eq!(c.norm_weight_offset, 1.0);
    // transformers' default layer_types: even layers slide over 4096 positions, odd ones are global.
    for i in 0..42 {
        assert_eq!(c.layer_window(i), (i % 2 == 0).then_some(4096), "layer {i}");
    }
    assert_eq!(c.num_parameters(), total);
    assert_eq!(total, 9_241_705_984);
}

#[test]
fn mixtral_8x7b_parses_with_its_experts_and_parameter_count() {
    let (c, total) = (load("mixtral-8x7b-v0.1"), count("mixtral-8x7b-v0.1"));
    assert_eq!(c.family, Family::Mixtral);
    assert_eq!((c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size), (4096, 32, 32, 8, 128, 14336));
    assert_eq!(c.moe, Some(MoeConfig { experts: 8, top_k: 2 }));
    assert_eq!(c.activation, Activation::Silu);
    assert_eq!(c.rope_theta, 1e6);
    // sliding_window null: global attention everywhere; plain 1/sqrt(head_dim) scale, no caps.
    assert!((0..32).all(|i| c.layer_window(i).is_none()));
    assert_eq!((c.attn_scale, c.attn_softcap, c.final_softcap), (1.0 / 128f64.sqrt(), None, None));
    assert!(!c.tie_word_embeddings && !c.sandwich_norms);
    assert_eq!(c.num_parameters(), total);
    assert_eq!(total, 46_702_792_704);
}

#[test]
fn published_sizes_in_billions() {
    for (name, billions) in [("Llama-3.1-8B", 8.03), ("Mistral-7B-v0.3", 7.25), ("Qwen2.5-7B", 7.62), ("Qwen3-8B", 8.19)] {
        let n = load(name).num_parameters() as f64 / 1e9;
        assert!((n - billions).abs() < 0.005, "{name}: {n:.3}B");
    }
}

#[test]
fn each_family_reads_its_own_settings() {
    let llama = load("Llama-3.1-8B");
    assert_eq!(llama.family, Family::Llama);
    assert_eq!(
        llama.rope_scaling,
        RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 }
    );
    assert_eq!(llama.rope_theta, 5e5);
    // Mistral-7B-v0.3 says `sliding_window: null`: full attention (v0.1's 4096 window is gone).
    let mistral = load("Mistral-7B-v0.3");
    assert_eq!((mistral.family, &mistral.windows, mistral.qkv_bias), (Family::Mistral, &Windows::None, false));
    // Qwen2.5 ships a window with use_sliding_window = false: none is used; q/k/v keep their bias.
    let qwen25 = load("Qwen2.5-7B");
    assert_eq!((qwen25.family, &qwen25.windows, qwen25.qkv_bias, qwen25.head_dim), (Family::Qwen2, &Windows::None, true, 128));
    let qwen3 = load("Qwen3-8B");
    assert_eq!((qwen3.family, qwen3.qk_norm, qwen3.qkv_bias, qwen3.head_dim, qwen3.rope_scaling.clone()), (Family::Qwen3, true, false, 128, RopeScaling::None));
}

/// `rope_inv_freq` against transformers' `LlamaRotaryEmbedding.inv_freq` (golden/rope-inv-freq.json, from
/// `gen_fixtures.py gen-families`) for plain, linear, dynamic (read after a forward over max_position_embeddings
/// positions) and llama3 at Llama-3.1-8B's and Llama-3.2-1B's settings: within 2 ulp (f32 `powf` and torch's `pow`
/// may round differently by one; every later step is the same f32 arithmetic).
#[test]
fn rope_frequencies_match_transformers() {
    let g: Value = serde_json::from_str(&std::fs::read_to_string(trainer::testing::fixtures_dir().join("golden/rope-inv-freq.json")).unwrap()).unwrap();
    let cases = g["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 5);
    for (name, case) in cases {
        let ours = ModelConfig::from_json(&case["config"]).unwrap().rope_inv_freq();
        let want: Vec<f32> = case["inv_freq"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(ours.len(), want.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 2.0 * f32::EPSILON * b.abs(), "{name} frequency {i}: {a:e} vs transformers {b:e}");
        }
    }
}
