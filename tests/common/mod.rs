//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A deterministic N(0, std²)-ish tensor (sum of uniforms), f32 on CPU.
pub fn randn(seed: u64, shape: &[usize], std: f32) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * std * 1.732).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

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
