//! RMSNorm: `y = x / sqrt(mean(x²) + eps) * (w + offset)`, computed in f32 like transformers
//! (offset 0 for Llama/Qwen, 1 for Gemma's `(1 + w)`).

use candle_core::{DType, Result, Tensor, D};

/// Returns `(y, rstd)` with `rstd = 1/sqrt(mean(x²)+eps)` of shape `[.., 1]` in f32, which backward needs.
pub fn forward(x: &Tensor, w: &Tensor, offset: f64, eps: f64) -> Result<(Tensor, Tensor)> {
    let xf = x.to_dtype(DType::F32)?;
    let rstd = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let wf = (w.to_dtype(DType::F32)? + offset)?;
    let y = xf.broadcast_mul(&rstd)?.broadcast_mul(&wf)?.to_dtype(x.dtype())?;
    Ok((y, rstd))
}

/// `dx = rstd * (g - x̂ * mean(g ⊙ x̂))` with `g = dy ⊙ (w + offset)` and `x̂ = x * rstd`.
pub fn backward(dy: &Tensor, x: &Tensor, w: &Tensor, offset: f64, rstd: &Tensor) -> Result<Tensor> {
    let wf = (w.to_dtype(DType::F32)? + offset)?;
    let g = dy.to_dtype(DType::F32)?.broadcast_mul(&wf)?;
    let xhat = x.to_dtype(DType::F32)?.broadcast_mul(rstd)?;
    let proj = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
    let dx = g.sub(&xhat.broadcast_mul(&proj)?)?.broadcast_mul(rstd)?;
    dx.to_dtype(x.dtype())
}
