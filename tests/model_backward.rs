//! The decoder's explicit backward, end to end, against Candle autograd over the same forward; gradient
//! accumulation; activation recomputation; and proof that frozen weights are never differentiated.

mod common;

use candle_core::{Tensor, Var};
use common::*;
use trainer::lora::{Adapter, Target, ALL_TARGETS};
use trainer::model::{Grads, Model, StepCtx};
use trainer::ops::gemm;
use trainer::ops::linear::LoraFactors;

fn ctx(dropout: f64, recompute: bool) -> StepCtx {
    StepCtx { seed: 3, step: 0, micro: 0, dropout, recompute }
}

fn explicit_grads(model: &Model, adapter: &Adapter, examples: &[trainer::data::batch::Example], micro: usize, c: StepCtx) -> (f64, Vec<Tensor>) {
    let total: usize = examples.iter().map(|e| e.target_tokens()).sum();
    let mut grads = Grads::new(model.cfg.num_layers);
    let mut nll = 0.0;
    for (i, chunk) in examples.chunks(micro).enumerate() {
        nll += model.forward_backward(&batch(chunk), adapter, &mut grads, StepCtx { micro: i as u64, ..c }, 1.0 / total as f64).unwrap();
    }
    (nll, grads.tensors(adapter).unwrap())
}

/// Autograd reference: LoRA factors as Vars, gradient of (Σ nll)/tokens through `loss_tensor`.
fn autograd_grads(model: &Model, adapter: &Adapter, examples: &[trainer::data::batch::Example]) -> (f64, Vec<Tensor>) {
    let mut vars = Vec::new();
    let mut with_vars = adapter.clone();
    for f in with_vars.factors_mut() {
        let (a, b) = (Var::from_tensor(&f.a).unwrap(), Var::from_tensor(&f.b).unwrap());
        *f = LoraFactors { a: a.as_tensor().clone(), b: b.as_tensor().clone() };
        vars.extend([a, b]);
    }
    let b = batch(examples);
    let loss = model.loss_tensor(&b, Some(&with_vars)).unwrap();
    let nll = loss.to_scalar::<f32>().unwrap() as f64;
    let store = (loss / b.target_tokens() as f64).unwrap().backward().unwrap();
    (nll, vars.iter().map(|v| store.get(v).expect("every factor gets a gradient").clone()).collect())
}

#[test]
fn explicit_backward_matches_autograd_for_every_family() {
    let attention = [Target::Q, Target::K, Target::V, Target::O];
    let moe_targets = [Target::Q, Target::V, Target::Router, Target::W1, Target::W2, Target::W3];
    let families = [
        ("llama", llama_config(), &ALL_TARGETS[..]),
        ("gemma", gemma_config(), &ALL_TARGETS[..]),
        ("gemma2", gemma2_config(), &ALL_TARGETS[..]),
        ("qwen2", qwen_config(), &ALL_TARGETS[..]),
        ("llama3", llama3_config(), &ALL_TARGETS[..]),
        ("mistral", mistral_config(), &ALL_TARGETS[..]),
        ("qwen3", qwen3_config(), &ALL_TARGETS[..]),
        // Mixtral with LoRA on attention only: its gradient reaches every layer's attention through the frozen
        // experts and the routing weights of the layers above. Then on the router and every expert's w1/w2/w3 too.
        ("mixtral", mixtral_config(), &attention[..]),
        ("mixtral experts", mixtral_config(), &moe_targets[..]),
    ];
    for (name, config, targets) in families {
        let model = random_model(config, 1);
        let adapter = random_adapter(&model, targets, 4, 5);
        let examples = random_examples(3, 40, 9);
        let (nll, ours) = explicit_grads(&model, &adapter, &examples, 3, ctx(0.0, false));
        let (nll_ref, want) = autograd_grads(&model, &adapter, &examples);
        assert!((nll - nll_ref).abs() < 1e-4 * nll_ref, "{name}: nll {nll} vs {nll_ref}");
        for (key, (g, w)) in adapter.keys().iter().zip(ours.iter().zip(&want)) {
            // 1e-4 relative to the largest entry of that gradient: f32 reassociation, not a tuned bound.
            assert_close(&format!("{name} {key}"), g, w, 1e-4, 1e-7);
        }
    }
}

#[test]
fn micro_batches_accumulate_the_full_batch_gradient() {
    let model = random_model(llama_config(), 2);
    let adapter = random_adapter(&model, &[Target::Q, Target::V, Target::Down], 4, 6);
    let examples = random_examples(6, 40, 10);
    let (nll_full, full) = explicit_grads(&model, &adapter, &examples, 6, ctx(0.0, false));
    for micro in [1, 2, 3] {
        let (nll, acc) = explicit_grads(&model, &adapter, &examples, micro, ctx(0.0, false));
        assert!((nll - nll_full).abs() < 1e-4 * nll_full);
        for (g, w) in acc.iter().zip(&full) {
            assert_close(&format!("micro {micro}"), g, w, 1e-5, 1e-7);
        }
    }
}

#[test]
fn recomputation_reproduces_gradients_including_dropout() {
    let moe_targets = [Target::Q, Target::Router, Target::W1, Target::W2, Target::W3];
    for (name, config, targets) in [("gemma", gemma_config(), &ALL_TARGETS[..]), ("mixtral experts", mixtral_config(), &moe_targets[..])] {
        let model = random_model(config, 3);
        let adapter = random_adapter(&model, targets, 2, 7);
        let examples = random_examples(4, 40, 11);
        let (_, kept) = explicit_grads(&model, &adapter, &examples, 2, ctx(0.1, false));
        let (_, recomputed) = explicit_grads(&model, &adapter, &examples, 2, ctx(0.1, true));
        for (g, w) in recomputed.iter().zip(&kept) {
            assert_close(&format!("{name} recompute"), g, w, 0.0, 0.0);
        }
        // Dropout really is applied: the gradient differs from the dropout-free one.
        let (_, no_dropout) = explicit_grads(&model, &adapter, &examples, 2, ctx(0.0, false));
        assert!(kept.iter().zip(&no_dropout).any(|(a, b)| max_diff(a, b).0 > 1e-4), "{name}");
    }
}

#[test]
fn frozen_weights_are_never_differentiated() {
    let model = random_model(qwen_config(), 4);
    let targets = [Target::Q, Target::K, Target::V];
    let adapter = random_adapter(&model, &targets, 4, 8);
    let examples = random_examples(2, 40, 12);
    let b = batch(&examples);
    let rows = b.size() * b.seq_len();
    gemm::start_recording();
    let mut grads = Grads::new(model.cfg.num_layers);
    model.forward_backward(&b, &adapter, &mut grads, ctx(0.0, false), 0.1).unwrap();
    let log = gemm::take_recording();

    let mut frozen_shapes: Vec<Vec<usize>> = vec![model.embed.dims().to_vec()];
    for t in ALL_TARGETS {
        let (i, o) = t.dims(&model.cfg);
        frozen_shapes.push(vec![o, i]);
        frozen_shapes.push(vec![i, o]);
    }
    for rec in &log {
        assert!(!frozen_shapes.contains(&rec.out), "a GEMM produced a frozen-weight-shaped result: {rec:?}");
        // 2-D results are activation-sized ([rows, ·]) or LoRA-factor-sized ([r, in] / [out, r]).
        assert!(rec.out.len() != 2 || rec.out[0] == rows || rec.out[0] == 4 || rec.out[1] == 4, "unexpected GEMM {rec:?}");
    }
    // Exactly: per layer 7 frozen projections forward + 7 input-gradient GEMMs backward, 2 + 4 per LoRA target,
    // QKᵀ and PV forward, QKᵀ (recomputed) + 4 attention GEMMs backward; then the LM head forward and backward.
    let layers = model.cfg.num_layers;
    let per_layer = 7 + 7 + targets.len() * (2 + 4) + 2 + 5;
    assert_eq!(log.len(), layers * per_layer + 2, "{log:#?}");
}

#[test]
fn packed_examples_do_not_see_each_other() {
    let model = random_model(llama_config(), 5);
    let adapter = random_adapter(&model, &ALL_TARGETS, 2, 9);
    let examples = random_examples(5, 40, 13);
    let alone: f64 = examples.iter().map(|e| model.loss_sum(&batch(std::slice::from_ref(e)), Some(&adapter)).unwrap()).sum();
    let packed = trainer::data::batch::pack(&examples, 24);
    assert!(packed.len() < examples.len(), "something was packed");
    let together = model.loss_sum(&batch(&packed), Some(&adapter)).unwrap();
    assert!((together - alone).abs() < 1e-4 * alone, "packed {together} vs one by one {alone}");
}

#[test]
fn dynamic_rope_is_plain_rope_up_to_max_positions_and_refused_beyond() {
    let plain = llama_config();
    let mut dynamic = plain.clone();
    dynamic["max_position_embeddings"] = serde_json::json!(8);
    dynamic["rope_scaling"] = serde_json::json!({"rope_type": "dynamic", "factor": 4.0});
    let (a, b) = (random_model(plain, 6), random_model(dynamic, 6));
    let short = trainer::data::batch::Example::new((0..8).collect(), vec![true; 8], false);
    let (la, lb) = (a.logits(&batch(std::slice::from_ref(&short)), None).unwrap(), b.logits(&batch(&[short]), None).unwrap());
    assert_eq!(max_diff(&la, &lb).0, 0.0, "within max_position_embeddings transformers keeps plain RoPE");
    let long = trainer::data::batch::Example::new((0..9).collect(), vec![true; 9], false);
    let e = format!("{:#}", b.logits(&batch(&[long]), None).expect_err("9 positions > 8"));
    assert!(e.contains("reaches 9 positions, beyond max_position_embeddings = 8") && e.contains("`dynamic`"), "{e}");
}
