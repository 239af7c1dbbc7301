//! LoRA dropout masks drawn from a counter-keyed ChaCha8 stream: the mask of a given (seed, step, micro-batch,
//! layer, module) is a pure function of that key, so activation recomputation redraws exactly the same mask and a
//! run is reproducible on any machine.

use candle_core::{Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Identifies one dropout application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutKey {
    pub seed: u64,
    pub step: u64,
    pub micro: u64,
    pub layer: u64,
    pub module: u64,
}

impl DropoutKey {
    fn rng(&self) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        // One ChaCha stream per application: bits 0-7 module, 8-23 layer, 24-39 micro-batch, 40-63 step.
        rng.set_stream((self.step << 40) ^ (self.micro << 24) ^ (self.layer << 8) ^ self.module);
        rng
    }
}

/// A `[rows, cols]` mask with entries 0 (dropped, probability `p`) or `1/(1-p)` (kept), like `torch.nn.Dropout`.
pub fn mask(key: DropoutKey, p: f64, rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let mut rng = key.rng();
    let data: Vec<f32> = (0..rows * cols).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
    Tensor::from_vec(data, (rows, cols), device)
}
