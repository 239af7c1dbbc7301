//! Real published configs (tests/fixtures/configs/<model>.config.json) parse into the settings the model needs,
//! and the trainer's reading of each gives transformers' total parameter count (<model>.parameters.json, made by
//! tests/fixtures/configs/count_parameters.py on the meta device).

use serde_json::Value;
use trainer::config::{Activation, Family, ModelConfig};

fn config(name: &str) -> (ModelConfig, u64) {
    let dir = trainer::testing::fixtures_dir().join("configs");
    let cfg = ModelConfig::from_file(&dir.join(format!("{name}.config.json"))).unwrap();
    let counts: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.parameters.json"))).unwrap()).unwrap();
    (cfg, counts["total"].as_u64().unwrap())
}

#[test]
fn gemma_2_9b_parses_with_its_caps_windows_and_parameter_count() {
    let (c, total) = config("gemma-2-9b");
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
    assert_eq!(c.parameter_count(), total);
    assert_eq!(total, 9_241_705_984);
}

#[test]
fn mixtral_8x7b_parses_with_its_experts_and_parameter_count() {
    let (c, total) = config("mixtral-8x7b-v0.1");
    assert_eq!(c.family, Family::Mixtral);
    assert_eq!((c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size), (4096, 32, 32, 8, 128, 14336));
    assert_eq!(c.moe, Some(trainer::config::MoeConfig { experts: 8, top_k: 2 }));
    assert_eq!(c.activation, Activation::Silu);
    assert_eq!(c.rope_theta, 1e6);
    // sliding_window null: global attention everywhere; plain 1/sqrt(head_dim) scale, no caps.
    assert!((0..32).all(|i| c.layer_window(i).is_none()));
    assert_eq!((c.attn_scale, c.attn_softcap, c.final_softcap), (1.0 / 128f64.sqrt(), None, None));
    assert!(!c.tie_word_embeddings && !c.sandwich_norms);
    assert_eq!(c.parameter_count(), total);
    assert_eq!(total, 46_702_792_704);
}
