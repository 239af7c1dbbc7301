//! The gated-MLP nonlinearity `h = act(g) ⊙ u` (SwiGLU for Llama/Qwen, GeGLU with tanh-GELU for Gemma).

use crate::config::Activation;
use candle_core::{DType, Result, Tensor};

fn act(g: &Tensor, a: Activation) -> Result<Tensor> {
    match a {
        Activation::Silu => g.silu(),
        Activation::GeluTanh => g.gelu(),
        Activation::Gelu => g.gelu_erf(),
    }
}

/// d act(g) / dg, in f32.
fn act_grad(g: &Tensor, a: Activation) -> Result<Tensor> {
    let g = g.to_dtype(DType::F32)?;
    match a {
        Activation::Silu => {
            let s = candle_nn::ops::sigmoid(&g)?;
            // σ(g) · (1 + g · (1 − σ(g)))
            s.mul(&((&g * (1.0 - &s)?)? + 1.0)?)
        }
        Activation::GeluTanh => {
            const K: f64 = 0.797_884_560_802_865_4; // sqrt(2/π)
            const C: f64 = 0.044_715;
            let g2 = g.sqr()?;
            let inner = ((&g2 * C)? + 1.0)?.mul(&g)?.affine(K, 0.0)?;
            let t = inner.tanh()?;
            let dinner = ((&g2 * (3.0 * C))? + 1.0)?.affine(K, 0.0)?;
            let left = ((&t + 1.0)? * 0.5)?;
            let right = ((1.0 - t.sqr()?)?.mul(&dinner)?.mul(&g)? * 0.5)?;
            left + right
        }
        Activation::Gelu => {
            const INV_SQRT2: f64 = std::f64::consts::FRAC_1_SQRT_2;
            const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
            let cdf = (((&g * INV_SQRT2)?.erf()? + 1.0)? * 0.5)?;
            let pdf = ((g.sqr()? * -0.5)?.exp()? * INV_SQRT_2PI)?;
            cdf + g.mul(&pdf)?
        }
    }
}

#[cfg(feature = "cuda")]
fn kernel_code(a: Activation) -> i32 {
    match a {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
        Activation::Gelu => 2,
    }
}

pub fn forward(g: &Tensor, u: &Tensor, a: Activation) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[g, u]) {
        return crate::cuda::glu_fwd(g, u, kernel_code(a));
    }
    act(g, a)?.mul(u)
}

/// Returns `(dg, du)`.
pub fn backward(dh: &Tensor, g: &Tensor, u: &Tensor, a: Activation) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[dh, g, u]) {
        return crate::cuda::glu_bwd(dh, g, u, kernel_code(a));
    }
    let dt = dh.dtype();
    let du = dh.mul(&act(g, a)?)?;
    let dg = dh
        .to_dtype(DType::F32)?
        .mul(&u.to_dtype(DType::F32)?)?
        .mul(&act_grad(g, a)?)?
        .to_dtype(dt)?;
    Ok((dg, du))
}
