//! Parity with transformers + PEFT on tiny random checkpoints of every family (tests/fixtures, made by
//! tests/fixtures/gen_fixtures.py): tokenization, logits, eval loss, LoRA gradients and three AdamW steps.
//!
//! Tolerances are the issue's: logits and eval loss within 1e-4 absolute, gradients within 1e-4 relative to the
//! largest entry of each tensor, the adapter after 3 steps within 2e-3 absolute.

mod common;

use candle_core::{Device, Tensor};
use common::max_diff;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use trainer::data::batch::{Batch, Example};
use trainer::data::{format::Format, TrainOn};
use trainer::lora::Adapter;
use trainer::model::{Grads, StepCtx};
use trainer::optim::{AdamWConfig, Schedule};
use trainer::session::Session;
use trainer::train::{train, TrainPlan};

/// The original families, then those `gen_fixtures.py gen-families` added: llama3 RoPE (old layout, tied),
/// a Mistral sliding window shorter than the batch, Qwen3's q/k norm, Gemma-2 (caps, per-layer windows, extra
/// norms) and Mixtral (MoE).
const MODELS: &[&str] = &[
    "llama-gqa", "gemma-mqa", "qwen2-gqa-sharded", "qwen2-tied", "llama3-tied", "mistral-swa", "qwen3-qknorm", "gemma2-swa", "mixtral-moe",
    "mixtral-experts",
];

struct Fixture {
    session: Session,
    adapter: Adapter,
    examples: Vec<Example>,
    golden: HashMap<String, Tensor>,
    json: Value,
}

fn fixture(name: &'static str) -> Fixture {
    let root = trainer::testing::fixtures_dir();
    let (model_dir, adapter_dir) = common::fixture_dirs(name);
    let session = Session::open(model_dir.to_str().unwrap(), None, candle_core::DType::F32, &Device::Cpu).unwrap();
    let adapter = Adapter::load_peft(&adapter_dir, &session.model.cfg, &Device::Cpu).unwrap();
    let examples = session.text.examples(&root.join("data/alpaca.json"), Format::Alpaca, "alpaca", 512, TrainOn::Response).unwrap();
    let golden = candle_core::safetensors::load(root.join("golden").join(format!("{name}.safetensors")), &Device::Cpu).unwrap();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(root.join("golden").join(format!("{name}.json"))).unwrap()).unwrap();
    Fixture { session, adapter, examples, golden, json }
}

fn first_batch(f: &Fixture) -> Batch {
    let refs: Vec<&Example> = f.examples[..4].iter().collect();
    Batch::pad(&refs, 0)
}

#[test]
fn tokenization_matches_transformers() {
    for &name in MODELS {
        let f = fixture(name);
        let records = f.json["records"].as_array().unwrap();
        assert_eq!(records.len(), f.examples.len());
        for (i, (r, e)) in records.iter().zip(&f.examples).enumerate() {
            let ids: Vec<u32> = r["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let targets: Vec<bool> = r["labels"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() != -100).collect();
            assert_eq!(e.ids, ids, "{name} record {i} ids");
            assert_eq!(e.is_target, targets, "{name} record {i} targets");
        }
    }
}

#[test]
fn logits_match_peft_within_1e4() {
    for &name in MODELS {
        let f = fixture(name);
        let batch = first_batch(&f);
        let ours = f.session.model.logits(&batch, Some(&f.adapter)).unwrap();
        let want = &f.golden["logits"];
        assert_eq!(ours.dims(), want.dims(), "{name}");
        // Compare real (non-padding) positions: padding rows are never scored.
        let mask = f.golden["attention_mask"].to_dtype(candle_core::DType::F32).unwrap().unsqueeze(2).unwrap();
        let (d, m) = max_diff(&ours.broadcast_mul(&mask).unwrap(), &want.broadcast_mul(&mask).unwrap());
        assert!(d <= 1e-4, "{name}: logits max |diff| {d:e} (max |logit| {m})");
        // The adapter matters: without it the logits are clearly different.
        let base = f.session.model.logits(&batch, None).unwrap();
        assert!(max_diff(&base.broadcast_mul(&mask).unwrap(), &want.broadcast_mul(&mask).unwrap()).0 > 1e-2, "{name}: adapter has no effect");
    }
}

#[test]
fn eval_loss_matches_peft_within_1e4() {
    for &name in MODELS {
        let f = fixture(name);
        let r = trainer::eval::evaluate(&f.session.model, Some(&f.adapter), &f.examples, 4, f.session.text.pad_id).unwrap();
        let want = f.json["eval"]["loss"].as_f64().unwrap();
        assert_eq!(r.tokens as u64, f.json["eval"]["tokens"].as_u64().unwrap(), "{name}");
        assert!((r.loss - want).abs() <= 1e-4, "{name}: eval loss {} vs {want}", r.loss);
    }
}

#[test]
fn lora_gradients_match_peft_within_1e4_relative() {
    for &name in MODELS {
        let f = fixture(name);
        let batch = first_batch(&f);
        let mut grads = Grads::new(f.session.model.cfg.num_layers);
        let ctx = StepCtx { seed: 0, step: 0, micro: 0, dropout: 0.0, recompute: false };
        f.session.model.forward_backward(&batch, &f.adapter, &mut grads, ctx, 1.0 / batch.target_tokens() as f64).unwrap();
        let ours = grads.tensors(&f.adapter).unwrap();
        for (key, g) in f.adapter.keys().iter().zip(&ours) {
            let want = &f.golden[&format!("grad.{key}")];
            let (d, m) = max_diff(g, want);
            assert!(m > 0.0, "{name} {key}: golden gradient is zero");
            assert!(d <= 1e-4 * m, "{name} {key}: max |diff| {d:e} > 1e-4 · {m:e}");
        }
    }
}

#[test]
fn three_adamw_steps_match_torch_within_2e3() {
    for &name in MODELS {
        let mut f = fixture(name);
        let t = &f.json["train"];
        let num = |k: &str| t[k].as_f64().unwrap();
        let plan = TrainPlan {
            lr: num("lr"),
            total_steps: num("steps") as usize,
            batch_size: num("batch_size") as usize,
            micro_batch_size: num("micro_batch_size") as usize,
            schedule: Schedule::parse(t["scheduler"].as_str().unwrap()).unwrap(),
            warmup_steps: num("warmup_steps") as usize,
            adamw: AdamWConfig { beta1: t["betas"][0].as_f64().unwrap(), beta2: t["betas"][1].as_f64().unwrap(), eps: num("eps"), weight_decay: num("weight_decay") },
            max_grad_norm: num("max_grad_norm"),
            shuffle: false,
            seed: 0,
            dropout: 0.0,
            recompute: name == "gemma-mqa" || name == "qwen3-qknorm",
            group_by_length: false,
        };
        let per_step = t["per_step"].as_array().unwrap().clone();
        let mut step = 0;
        let pad = f.session.text.pad_id;
        train(&f.session.model, &mut f.adapter, &f.examples, &plan, pad, |m| {
            let want = &per_step[step];
            assert_eq!(m.tokens as u64, want["tokens"].as_u64().unwrap(), "{name} step {step} tokens");
            assert!((m.loss - want["loss"].as_f64().unwrap()).abs() < 1e-4, "{name} step {step}: loss {} vs {}", m.loss, want["loss"]);
            let gn = want["grad_norm"].as_f64().unwrap();
            assert!((m.grad_norm - gn).abs() < 1e-4 * gn, "{name} step {step}: grad norm {} vs {gn}", m.grad_norm);
            assert!((m.lr - want["lr"].as_f64().unwrap()).abs() < 1e-12, "{name} step {step}: lr {} vs {}", m.lr, want["lr"]);
            step += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(step, 3);
        let mut worst = 0f32;
        for (key, p) in f.adapter.keys().iter().zip(f.adapter.tensors()) {
            worst = worst.max(max_diff(p, &f.golden[&format!("trained.{key}")]).0);
        }
        assert!(worst <= 2e-3, "{name}: trained adapter max |diff| {worst:e}");
        // The 2e-3 bound cannot see a wrong clipping coefficient or bias correction (Adam is nearly
        // scale-invariant: such errors move these tensors by 1e-4..4e-4). f32 rounding over three steps stays
        // near 1e-6, so 2e-5 also holds and does catch them.
        assert!(worst <= 2e-5, "{name}: trained adapter max |diff| {worst:e} > 2e-5");
        // And the steps really moved the adapter away from its start.
        let start = fixture(name).adapter;
        let moved = f.adapter.tensors().iter().zip(start.tensors()).map(|(a, b)| max_diff(a, b).0).fold(0f32, f32::max);
        assert!(moved > 2e-2, "{name}: adapter barely moved ({moved:e}), the 2e-3 parity check would be vacuous");
    }
}

#[test]
fn exported_adapter_reloads_identically() {
    let f = fixture("qwen2-gqa-sharded");
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("adapter");
    f.adapter.save_peft(&out, "tests/fixtures/models/qwen2-gqa-sharded", None, candle_core::DType::F32).unwrap();
    let back = Adapter::load_peft(&out, &f.session.model.cfg, &Device::Cpu).unwrap();
    assert_eq!(back.spec, f.adapter.spec);
    for (a, b) in back.tensors().iter().zip(f.adapter.tensors()) {
        assert_eq!(max_diff(a, b).0, 0.0);
    }
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["use_rslora"], true);
    assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj", "k_proj", "v_proj"]));
}
