//! LoRA dropout with masks that are never stored: whether element `i` of one application is dropped is a pure
//! function of a 64-bit key (seed, step, micro-batch, layer, module) and `i` (a SplitMix64 hash, the same in
//! kernels/dropout.cu). Backward and activation recomputation redraw exactly the same mask, a run is reproducible
//! on any machine, and CPU and CUDA drop the same elements.

use candle_core::{Device, Result, Tensor};

/// Identifies one dropout application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutKey {
    pub seed: u64,
    pub step: u64,
    pub micro: u64,
    pub layer: u64,
    pub module: u64,
}

fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl DropoutKey {
    /// The 64-bit stream key: bits 0-7 module, 8-23 layer, 24-39 micro-batch, 40-63 step, under the seed.
    pub fn hash(&self) -> u64 {
        mix64(self.seed) ^ mix64((self.step << 40) ^ (self.micro << 24) ^ (self.layer << 8) ^ self.module)
    }
}

/// Uniform in [0, 1) with 24 bits, for element `i` of the application keyed `key`.
fn uniform(key: u64, i: u64) -> f32 {
    (mix64(key ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// A `[rows, cols]` mask with entries 0 (dropped, probability `p`) or `1/(1-p)` (kept), like `torch.nn.Dropout`.
pub fn mask(key: DropoutKey, p: f64, rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
    let (h, p32, keep) = (key.hash(), p as f32, (1.0 / (1.0 - p)) as f32);
    let data: Vec<f32> = (0..(rows * cols) as u64).map(|i| if uniform(h, i) < p32 { 0.0 } else { keep }).collect();
    Tensor::from_vec(data, (rows, cols), device)
}

/// `x` (`[rows, cols]`) with dropout applied: on CUDA fused into one pass with no mask tensor.
pub fn apply(x: &Tensor, key: DropoutKey, p: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[x]) {
        return crate::cuda::dropout(x, key.hash(), p as f32, (1.0 / (1.0 - p)) as f32);
    }
    let (rows, cols) = x.dims2()?;
    x.mul(&mask(key, p, rows, cols, x.device())?.to_dtype(x.dtype())?)
}
