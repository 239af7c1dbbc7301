//! A frozen linear layer with an optional LoRA branch:
//! `y = x Wᵀ + b + s · (drop(x) Aᵀ) Bᵀ`, with `s` = alpha/r (or alpha/√r for rsLoRA).
//!
//! Backward returns the input gradient and the LoRA factor gradients only: `W` and `b` are frozen and never
//! differentiated (no `dW` GEMM, no weight-sized buffer).

use super::dropout::DropoutKey;
use super::gemm::matmul;
use candle_core::{DType, Result, Tensor};

/// A frozen projection, `w`: `[out, in]`.
#[derive(Debug, Clone)]
pub struct Frozen {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

/// The trainable factors (f32 master copies): `a`: `[r, in]`, `b`: `[out, r]`.
#[derive(Debug, Clone)]
pub struct LoraFactors {
    pub a: Tensor,
    pub b: Tensor,
}

/// What LoRA's backward needs beyond the layer input.
pub struct LoraSaved {
    /// The dropout applied to the LoRA input, when active: its key and probability (the mask is redrawn).
    pub dropout: Option<(DropoutKey, f64)>,
    /// `drop(x) Aᵀ`, `[N, r]`.
    pub xa: Tensor,
}

/// The LoRA branch as applied in one forward: factors, scale and (optional) dropout.
pub struct LoraApply<'a> {
    pub factors: &'a LoraFactors,
    pub scale: f64,
    pub dropout: Option<(DropoutKey, f64)>,
}

fn dropped(x: &Tensor, dropout: Option<(DropoutKey, f64)>) -> Result<Tensor> {
    match dropout {
        Some((key, p)) => super::dropout::apply(x, key, p),
        None => Ok(x.clone()),
    }
}

/// `x`: `[N, in]`. Returns `y` `[N, out]` and the LoRA state backward needs.
pub fn forward(x: &Tensor, frozen: &Frozen, lora: Option<LoraApply>) -> Result<(Tensor, Option<LoraSaved>)> {
    let mut y = matmul(x, &frozen.w.t()?)?;
    if let Some(b) = &frozen.b {
        y = y.broadcast_add(b)?;
    }
    let Some(l) = lora else { return Ok((y, None)) };
    let dt = x.dtype();
    let xa = matmul(&dropped(x, l.dropout)?, &l.factors.a.to_dtype(dt)?.t()?)?;
    let delta = (matmul(&xa, &l.factors.b.to_dtype(dt)?.t()?)? * l.scale)?;
    Ok((y.add(&delta)?, Some(LoraSaved { dropout: l.dropout, xa })))
}

/// LoRA gradients in f32: `(dA [r, in], dB [out, r])`.
pub struct LoraGrads {
    pub da: Tensor,
    pub db: Tensor,
}

/// Returns `dx` and, when the layer has a LoRA branch, the factor gradients.
pub fn backward(
    dy: &Tensor,
    x: &Tensor,
    frozen: &Frozen,
    lora: Option<(&LoraFactors, f64, &LoraSaved)>,
) -> Result<(Tensor, Option<LoraGrads>)> {
    let mut dx = matmul(dy, &frozen.w)?;
    let Some((factors, scale, saved)) = lora else { return Ok((dx, None)) };
    let dt = dy.dtype();
    let dys = (dy * scale)?;
    let db = matmul(&dys.t()?, &saved.xa)?;
    let dxa = matmul(&dys, &factors.b.to_dtype(dt)?)?;
    let xd = dropped(x, saved.dropout)?;
    let da = matmul(&dxa.t()?, &xd)?;
    let dxd = matmul(&dxa, &factors.a.to_dtype(dt)?)?;
    dx = dx.add(&dropped(&dxd, saved.dropout)?)?;
    Ok((dx, Some(LoraGrads { da: da.to_dtype(DType::F32)?, db: db.to_dtype(DType::F32)? })))
}
