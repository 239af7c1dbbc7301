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
