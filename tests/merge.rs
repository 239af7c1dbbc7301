//! `trainer merge` against transformers + PEFT: the merged checkpoint of every fixture family (GQA, MQA, sharded,
//! tied), loaded as a plain model, gives PEFT's base+adapter logits (tests/fixtures/golden, from
//! gen_fixtures.py) within 1e-4 in f32; shards, index, config and tokenizer come across, untouched tensors byte
//! for byte. `python3 tests/fixtures/gen_fixtures.py check-merge` checks the same with transformers loading it.

mod common;

use candle_core::{DType, Device, Tensor};
use common::max_diff;
use std::path::Path;
use std::process::Command;
use trainer::data::batch::{Batch, Example};
use trainer::data::format::Format;
use trainer::data::TrainOn;
use trainer::session::Session;

const MODELS: &[&str] = &[
    "llama-gqa", "gemma-mqa", "qwen2-gqa-sharded", "qwen2-tied", "llama3-tied", "mistral-swa", "qwen3-qknorm", "gemma2-swa", "mixtral-moe",
    "mixtral-experts",
];

fn merge(model: &Path, adapter: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["merge", "--model", model.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap()
}

fn tensors(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(e.path()).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in st.tensors() {
                out.insert(format!("{}:{name}", e.file_name().to_string_lossy()), view.data().to_vec());
            }
        }
    }
    out
}

#[test]
fn merged_checkpoints_give_peft_logits() {
    let root = trainer::testing::fixtures_dir();
    for &name in MODELS {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged");
        let (model, adapter) = common::fixture_dirs(name);
        let o = merge(&model, &adapter, &out);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));

        // Same files (shards and index included), config and tokenizer copied as they were.
        let list = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.ends_with(".md")).collect();
            v.sort();
            v
        };
        assert_eq!(list(&out), list(&model), "{name}");
        for f in ["config.json", "tokenizer.json"] {
            assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(model.join(f)).unwrap(), "{name}: {f}");
        }
        // Only the adapted projections changed.
        let (before, after) = (tensors(&model), tensors(&out));
        assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "{name}: same tensors in the same shards");
        for (k, v) in &before {
            let adapted = ["self_attn.", "mlp.", "block_sparse_moe."].iter().any(|p| k.contains(p)) && !k.contains("norm");
            let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
            let targeted = adapted && cfg["target_modules"].as_array().unwrap().iter().any(|t| k.contains(&format!("{}.weight", t.as_str().unwrap())));
            assert_eq!(&after[k] == v, !targeted, "{name} {k}: changed iff the adapter targets it");
        }

        // Logits of the merged model alone = PEFT's base + adapter.
        let session = Session::open(out.to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
        let examples = session.text.examples(&root.join("data/alpaca.json"), Format::Alpaca, "alpaca", 512, TrainOn::Response).unwrap();
        let refs: Vec<&Example> = examples[..4].iter().collect();
        let batch = Batch::pad(&refs, 0);
        let golden = candle_core::safetensors::load(root.join("golden").join(format!("{name}.safetensors")), &Device::Cpu).unwrap();
        let ours = session.model.logits(&batch, None).unwrap();
        let mask: Tensor = golden["attention_mask"].to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
        let (d, m) = max_diff(&ours.broadcast_mul(&mask).unwrap(), &golden["logits"].broadcast_mul(&mask).unwrap());
        assert!(d <= 1e-4, "{name}: merged logits max |diff| {d:e} from PEFT's (max |logit| {m})");
    }
}

#[test]
fn merge_mistakes_get_one_clear_error() {
    let root = trainer::testing::fixtures_dir();
    let dir = tempfile::tempdir().unwrap();
    // An adapter made for another model: shapes do not fit.
    let o = merge(&root.join("models/llama-gqa"), &root.join("adapters/gemma-mqa"), &dir.path().join("x"));
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--adapter") && e.contains("shape"), "{e}");
    // Never over an existing checkpoint (or into any folder that is not empty, without --force).
    let o = merge(&root.join("models/llama-gqa"), &root.join("adapters/llama-gqa"), &root.join("models/qwen2-tied"));
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("qwen2-tied is not empty (it holds") && e.contains("--force"), "{e}");
}
