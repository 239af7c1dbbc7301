//! Rotary position embeddings in transformers' "rotate half" layout: `y = x*cos + rotate_half(x)*sin` with
//! `rotate_half(x) = cat(-x₂, x₁)`. Positions are explicit per sequence so that packed sequences can restart them.

use candle_core::{DType, Device, Result, Tensor, D};

/// cos/sin tables of shape `[B, 1, T, head_dim]` in `dtype`, broadcast over heads.
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    /// `positions` holds one position per token, `[B][T]`; plain RoPE of base `theta`.
    pub fn new(positions: &[Vec<u32>], head_dim: usize, theta: f64, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_inv_freq(positions, &plain_inv_freq(head_dim, theta), dtype, device)
    }

    /// Tables of any frequency scaling: `inv_freq` holds `head_dim / 2` inverse frequencies
    /// ([`crate::config::ModelConfig::rope_inv_freq`]).
    pub fn from_inv_freq(positions: &[Vec<u32>], inv_freq: &[f32], dtype: DType, device: &Device) -> Result<Self> {
        let b = positions.len();
        let t = positions.first().map_or(0, |p| p.len());
        let head_dim = 2 * inv_freq.len();
        let mut angles = Vec::with_capacity(b * t * head_dim);
        for seq in positions {
            for &p in seq {
                for _ in 0..2 {
                    angles.extend(inv_freq.iter().map(|f| f * p as f32));
                }
            }
        }
        let angles = Tensor::from_vec(angles, (b, 1, t, head_dim), device)?;
        Ok(Self { cos: angles.cos()?.to_dtype(dtype)?, sin: angles.sin()?.to_dtype(dtype)? })
    }
}

/// transformers computes inv_freq and the angles in f32: do the same so long positions agree to the ulp.
pub fn plain_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect()
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// `x`: `[B, H, T, head_dim]`.
pub fn forward(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    x.broadcast_mul(&tables.cos)?.add(&rotate_half(x)?.broadcast_mul(&tables.sin)?)
}

/// The rotation is linear and orthogonal: `dx = dy*cos + rotate_halfᵀ(dy*sin)`, where `rotate_halfᵀ = -rotate_half`.
pub fn backward(dy: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    dy.broadcast_mul(&tables.cos)?.sub(&rotate_half(&dy.broadcast_mul(&tables.sin)?)?)
}

/// The projection output `rows` `[B·T, H·d]` split into heads and rotated: `[B, H, T, d]`. On CUDA one kernel
/// does both, in place of a transpose copy followed by the rotation.
pub fn forward_heads(rows: &Tensor, tables: &RopeTables, heads: usize) -> Result<Tensor> {
    let (b, _, t, d) = tables.cos.dims4()?;
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[rows, &tables.cos]) {
        return crate::cuda::rope_fwd(rows, &tables.cos, &tables.sin, b, t, heads, d);
    }
    forward(&rows.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?, tables)
}

/// Backward of [`forward_heads`]: `dy` `[B, H, T, d]` → `[B·T, H·d]`.
pub fn backward_rows(dy: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[dy, &tables.cos]) {
        return crate::cuda::rope_bwd(dy, &tables.cos, &tables.sin);
    }
    let (b, h, t, d) = dy.dims4()?;
    backward(dy, tables)?.transpose(1, 2)?.reshape((b * t, h * d))
}
