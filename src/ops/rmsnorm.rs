//! RMSNorm: `y = x / sqrt(mean(x²) + eps) * (w + offset)`, computed in f32 like transformers
//! (offset 0 for Llama/Qwen, 1 for Gemma's `(1 + w)`).

use candle_core::{DType, Result, Tensor, D};

/// Returns `(y, rstd)` with `rstd = 1/sqrt(mean(x²)+eps)` of shape `[.., 1]` in f32, which backward needs.
pub fn forward(x: &Tensor, w: &Tensor, offset: f64, eps: f64) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[x, w]) {
        let (y, _, rstd) = crate::cuda::rmsnorm_fwd(x, None, w, offset, eps)?;
        return Ok((y, rstd));
    }
    let xf = x.to_dtype(DType::F32)?;
    let rstd = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let wf = (w.to_dtype(DType::F32)? + offset)?;
    let y = xf.broadcast_mul(&rstd)?.broadcast_mul(&wf)?.to_dtype(x.dtype())?;
    Ok((y, rstd))
}

/// `dx = rstd * (g - x̂ * mean(g ⊙ x̂))` with `g = dy ⊙ (w + offset)` and `x̂ = x * rstd`.
pub fn backward(dy: &Tensor, x: &Tensor, w: &Tensor, offset: f64, rstd: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[dy, x, w]) {
        return crate::cuda::rmsnorm_bwd(dy, x, w, offset, rstd, None);
    }
    let wf = (w.to_dtype(DType::F32)? + offset)?;
    let g = dy.to_dtype(DType::F32)?.broadcast_mul(&wf)?;
    let xhat = x.to_dtype(DType::F32)?.broadcast_mul(rstd)?;
    let proj = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
    let dx = g.sub(&xhat.broadcast_mul(&proj)?)?.broadcast_mul(rstd)?;
    dx.to_dtype(x.dtype())
}

/// The residual add before a pre-norm fused with the norm: returns `(s = a + b, y, rstd)` with `y = rmsnorm(s)`.
pub fn add_forward(a: &Tensor, b: &Tensor, w: &Tensor, offset: f64, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[a, b, w]) {
        let (y, s, rstd) = crate::cuda::rmsnorm_fwd(a, Some(b), w, offset, eps)?;
        return Ok((s.expect("asked for the sum"), y, rstd));
    }
    let s = a.add(b)?;
    let (y, rstd) = forward(&s, w, offset, eps)?;
    Ok((s, y, rstd))
}

/// `dadd + backward(dy, ..)`: the norm's input gradient joined with the residual stream's, in one pass on CUDA.
pub fn backward_add(dy: &Tensor, x: &Tensor, w: &Tensor, offset: f64, rstd: &Tensor, dadd: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[dy, x, w, dadd]) {
        return crate::cuda::rmsnorm_bwd(dy, x, w, offset, rstd, Some(dadd));
    }
    dadd.add(&backward(dy, x, w, offset, rstd)?)
}
