//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::Tensor;
#[allow(unused_imports)]
pub use trainer::testing::*;

/// Largest |a − b| and largest |b|.
pub fn max_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let m = b.iter().map(|x| x.abs()).fold(0f32, f32::max);
    (d, m)
}

/// Asserts `|a − b| ≤ rel · max|b| + abs` elementwise-max.
#[track_caller]
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, rel: f32, abs: f32) {
    let (d, m) = max_diff(a, b);
    assert!(d <= rel * m + abs, "{what}: max |diff| {d:e} > {rel:e}·{m:e} + {abs:e}");
}


use trainer::data::batch::{Batch, Example};

pub fn batch(examples: &[Example]) -> Batch {
    let refs: Vec<&Example> = examples.iter().collect();
    Batch::pad(&refs, 0)
}

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (where `cargo test` runs from).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `trainer` binary to the end.
pub fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("trainer runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A JSON file, or a panic naming it.
pub fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A golden fixture's model and adapter folders, as its golden/<name>.json names them (several adapters may share
/// one model: mixtral-experts adapts mixtral-moe's experts).
pub fn fixture_dirs(name: &str) -> (PathBuf, PathBuf) {
    let root = trainer::testing::fixtures_dir();
    let g = json(&root.join("golden").join(format!("{name}.json")));
    let dir = |key: &str| {
        let rel = g[key].as_str().unwrap_or_else(|| panic!("golden/{name}.json has no {key}"));
        root.join(rel.strip_prefix("tests/fixtures/").unwrap_or_else(|| panic!("{key} `{rel}` is outside tests/fixtures")))
    };
    (dir("model_dir"), dir("adapter_dir"))
}
