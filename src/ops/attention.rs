//! Scaled dot-product attention with a causal + key-padding mask and grouped KV heads (GQA/MQA).
//!
//! Forward saves only the row log-sum-exp of the scores, as flash attention does; backward recomputes the
//! probabilities from it instead of keeping the `[B, H, T, T]` matrix alive between forward and backward.

use super::gemm::matmul;
use candle_core::{DType, Device, Result, Tensor, D};
use std::sync::OnceLock;

/// Which keys each query may see, in the two forms the two paths use, each built on first use: the dense
/// additive mask of the Candle reference, and the per-token key validity and packed-example ids (u32 `[B, T]`)
/// that the CUDA kernels read.
pub struct AttnMask {
    key_valid: Vec<Vec<bool>>,
    segments: Option<Vec<Vec<u32>>>,
    /// Sliding window: query `i` sees key `j` only if `i - j < window`.
    window: Option<usize>,
    device: Device,
    dense: OnceLock<Tensor>,
    tokens: OnceLock<(Tensor, Tensor)>,
}

impl AttnMask {
    pub fn new(key_valid: &[Vec<bool>], segments: Option<&[Vec<u32>]>, device: &Device) -> Self {
        Self {
            key_valid: key_valid.to_vec(),
            segments: segments.map(|s| s.to_vec()),
            window: None,
            device: device.clone(),
            dense: OnceLock::new(),
            tokens: OnceLock::new(),
        }
    }

    /// Limits every query to the keys fewer than `window` tokens back (itself included), as transformers'
    /// `sliding_window_overlay` does (`kv_idx > q_idx - window`).
    pub fn with_window(mut self, window: Option<usize>) -> Self {
        self.window = window;
        self
    }

    /// Whether the window hides any key: only then does the mask differ from the causal one. The fused CUDA
    /// kernels know no window, so such masks take the Candle-op path there.
    pub fn window_applies(&self) -> bool {
        self.window.is_some_and(|w| w < self.key_valid.first().map_or(0, |r| r.len()))
    }

    /// The additive mask `[B, 1, T, T]` (see [`mask`]).
    pub fn dense(&self) -> Result<&Tensor> {
        if let Some(m) = self.dense.get() {
            return Ok(m);
        }
        let m = windowed_mask(&self.key_valid, self.segments.as_deref(), self.window, &self.device)?;
        Ok(self.dense.get_or_init(|| m))
    }

    /// `(valid, segment)` per token, u32 `[B, T]`.
    pub fn tokens(&self) -> Result<&(Tensor, Tensor)> {
        if let Some(t) = self.tokens.get() {
            return Ok(t);
        }
        let (b, t) = (self.key_valid.len(), self.key_valid.first().map_or(0, |r| r.len()));
        let valid: Vec<u32> = self.key_valid.iter().flatten().map(|&v| v as u32).collect();
        let seg: Vec<u32> = match &self.segments {
            Some(s) => s.iter().flatten().copied().collect(),
            None => vec![0; b * t],
        };
        let pair = (Tensor::from_vec(valid, (b, t), &self.device)?, Tensor::from_vec(seg, (b, t), &self.device)?);
        Ok(self.tokens.get_or_init(|| pair))
    }
}

/// bf16 sequences of at least this many tokens take the tensor-core path (cuBLAS score blocks + row kernels):
/// measured on the H100 (BENCHMARKS.md), the one-kernel flash path runs on CUDA cores and is several times
/// slower there; shorter sequences and f32 keep it.
#[cfg(feature = "cuda")]
pub const TENSOR_CORE_MIN_LEN: usize = 128;

#[cfg(feature = "cuda")]
fn use_tensor_cores(q: &Tensor) -> Result<bool> {
    Ok(q.dtype() == DType::BF16 && q.dim(2)? >= TENSOR_CORE_MIN_LEN)
}

/// Whether the fused CUDA kernels serve these inputs (CUDA, f32/bf16, an instantiated head dim, not tracked, no
/// sliding window that hides keys: that falls back to the Candle ops over the dense mask).
#[cfg(feature = "cuda")]
fn use_cuda_kernels(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Result<bool> {
    Ok(crate::cuda::applies(&[q, k, v]) && crate::cuda::ATTENTION_HEAD_DIMS.contains(&q.dim(D::Minus1)?) && !mask.window_applies())
}

/// Additive mask `[B, 1, T, T]` (f32): 0 where query `i` may attend key `j` (`j ≤ i`, key not padding and in
/// the same packed segment; see [`windowed_mask`] for a sliding window), `f32::MIN` elsewhere — transformers' eager convention, so a row with no visible key
/// degrades to a uniform row instead of NaN.
pub fn mask(key_valid: &[Vec<bool>], segments: Option<&[Vec<u32>]>, device: &Device) -> Result<Tensor> {
    windowed_mask(key_valid, segments, None, device)
}

/// [`mask`] with a sliding window: key `j` is visible to query `i` only if also `i - j < window`.
pub fn windowed_mask(key_valid: &[Vec<bool>], segments: Option<&[Vec<u32>]>, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let b = key_valid.len();
    let t = key_valid.first().map_or(0, |r| r.len());
    let window = window.unwrap_or(usize::MAX);
    let mut m = vec![f32::MIN; b * t * t];
    for (bi, valid) in key_valid.iter().enumerate() {
        for i in 0..t {
            for j in (i + 1).saturating_sub(window)..=i {
                let same_segment = segments.is_none_or(|s| s[bi][i] == s[bi][j]);
                if valid[j] && same_segment {
                    m[(bi * t + i) * t + j] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, t, t), device)
}

fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, h, n_rep, t, d))?.contiguous()?.reshape((b, h * n_rep, t, d))
}

/// Sums the gradient of repeated KV heads back onto their source head.
fn fold_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, hq, t, d) = x.dims4()?;
    x.reshape((b, hq / n_rep, n_rep, t, d))?.sum(2)
}

/// The fused CPU kernels serve f32 on CPU. Every other case takes the Candle-op reference, and so do inputs that
/// Candle's autograd is tracking (the kernels are opaque to it; the tests use autograd as the oracle of whole
/// models).
fn use_cpu_kernels(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32 && ![q, k, v].iter().any(|t| t.track_op())
}

/// `q`: `[B, Hq, T, d]`, `k`/`v`: `[B, Hkv, T, d]`. Returns `(o [B, Hq, T, d], lse [B, Hq, T, 1] f32)`.
pub fn forward(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, scale: f64) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if use_cuda_kernels(q, k, v, mask)? {
        let (valid, seg) = mask.tokens()?;
        return if use_tensor_cores(q)? {
            crate::cuda::attention_fwd_chunked(q, k, v, valid, seg, scale, None)
        } else {
            crate::cuda::attention_fwd(q, k, v, valid, seg, scale)
        };
    }
    forward_with(q, k, v, mask.dense()?, scale, use_cpu_kernels(q, k, v))
}

/// [`forward`] as Candle ops (the oracle of the fused kernels).
pub fn forward_reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, scale: f64) -> Result<(Tensor, Tensor)> {
    forward_with(q, k, v, mask.dense()?, scale, false)
}

fn forward_with(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, fused: bool) -> Result<(Tensor, Tensor)> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let s = matmul(q, &repeat_kv(k, n_rep)?.t()?)?;
    let (p, lse) = if fused { cpu::softmax_lse(&s, mask, scale)? } else { softmax_lse(&s, mask, scale)? };
    let o = matmul(&p, &repeat_kv(v, n_rep)?)?;
    Ok((o, lse))
}

/// Returns `(dq, dk, dv)` given the output gradient `do_` and what forward produced.
#[allow(clippy::too_many_arguments)]
pub fn backward(do_: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, mask: &AttnMask, scale: f64) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if use_cuda_kernels(q, k, v, mask)? {
        let (valid, seg) = mask.tokens()?;
        let delta = do_.to_dtype(DType::F32)?.mul(&o.to_dtype(DType::F32)?)?.sum_keepdim(D::Minus1)?;
        return if use_tensor_cores(q)? {
            crate::cuda::attention_bwd_chunked(do_, q, k, v, lse, &delta, valid, seg, scale, None)
        } else {
            crate::cuda::attention_bwd(do_, q, k, v, lse, &delta, valid, seg, scale)
        };
    }
    backward_with(do_, q, k, v, o, lse, mask.dense()?, scale, use_cpu_kernels(q, k, v))
}

/// [`backward`] as Candle ops (the oracle of the fused kernels).
#[allow(clippy::too_many_arguments)]
pub fn backward_reference(do_: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, mask: &AttnMask, scale: f64) -> Result<(Tensor, Tensor, Tensor)> {
    backward_with(do_, q, k, v, o, lse, mask.dense()?, scale, false)
}

#[allow(clippy::too_many_arguments)]
fn backward_with(do_: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, mask: &Tensor, scale: f64, fused: bool) -> Result<(Tensor, Tensor, Tensor)> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let k_rep = repeat_kv(k, n_rep)?;
    let v_rep = repeat_kv(v, n_rep)?;
    let s = matmul(q, &k_rep.t()?)?;
    let dp = matmul(do_, &v_rep.t()?)?;
    // rowsum(dP ⊙ P) equals rowsum(dO ⊙ O): the cheaper form.
    let delta = do_.to_dtype(DType::F32)?.mul(&o.to_dtype(DType::F32)?)?.sum_keepdim(D::Minus1)?;
    let (p, ds) = if fused {
        cpu::softmax_backward(&s, &dp, lse, &delta, mask, scale)?
    } else {
        softmax_backward(&s, &dp, lse, &delta, mask, scale)?
    };
    let dv = fold_kv(&matmul(&p.t()?, do_)?, n_rep)?;
    let dq = matmul(&ds, &k_rep)?;
    let dk = fold_kv(&matmul(&ds.t()?, q)?, n_rep)?;
    Ok((dq, dk, dv))
}

/// Scale + mask + softmax over raw scores `s`, in f32; returns `(P in s's dtype, lse)`.
fn softmax_lse(s: &Tensor, mask: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    let x = (s.to_dtype(DType::F32)? * scale)?.broadcast_add(mask)?;
    let max = x.max_keepdim(D::Minus1)?;
    let lse = x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()?.add(&max)?;
    let p = x.broadcast_sub(&lse)?.exp()?.to_dtype(s.dtype())?;
    Ok((p, lse))
}

/// Recomputes `P = exp(s·scale + mask − lse)` and returns `(P, dS = P ⊙ (dP − δ) · scale)` in s's dtype.
fn softmax_backward(s: &Tensor, dp: &Tensor, lse: &Tensor, delta: &Tensor, mask: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    let dt = s.dtype();
    let p = (s.to_dtype(DType::F32)? * scale)?.broadcast_add(mask)?.broadcast_sub(lse)?.exp()?;
    let ds = (p.mul(&dp.to_dtype(DType::F32)?.broadcast_sub(delta)?)? * scale)?.to_dtype(dt)?;
    Ok((p.to_dtype(dt)?, ds))
}

/// Row-parallel f32 CPU kernels of [`softmax_lse`] and [`softmax_backward`], fused into one pass per row.
/// Rows are independent, so they run on all cores with rayon.
mod cpu {
    use candle_core::{Result, Tensor};
    use rayon::prelude::*;

    fn data(t: &Tensor) -> Result<Vec<f32>> {
        t.flatten_all()?.to_vec1::<f32>()
    }

    /// `s`: `[B, H, T, T]` raw scores, `mask`: `[B, 1, T, T]`. Returns `(P, lse [B, H, T, 1])`.
    pub fn softmax_lse(s: &Tensor, mask: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
        let (b, h, t, _) = s.dims4()?;
        let mut p = data(s)?;
        let mask = data(mask)?;
        let mut lse = vec![0f32; b * h * t];
        let scale = scale as f32;
        p.par_chunks_mut(t).zip(lse.par_iter_mut()).enumerate().for_each(|(row, (x, l))| {
            let (bi, i) = (row / (h * t), row % t);
            let m = &mask[(bi * t + i) * t..][..t];
            let mut max = f32::NEG_INFINITY;
            for (xj, mj) in x.iter_mut().zip(m) {
                *xj = *xj * scale + mj;
                max = max.max(*xj);
            }
            let mut sum = 0f32;
            for xj in x.iter_mut() {
                *xj = (*xj - max).exp();
                sum += *xj;
            }
            let inv = 1.0 / sum;
            x.iter_mut().for_each(|xj| *xj *= inv);
            *l = max + sum.ln();
        });
        Ok((Tensor::from_vec(p, (b, h, t, t), s.device())?, Tensor::from_vec(lse, (b, h, t, 1), s.device())?))
    }

    /// Recomputes `P = exp(s·scale + mask − lse)` and returns `(P, dS)`.
    pub fn softmax_backward(s: &Tensor, dp: &Tensor, lse: &Tensor, delta: &Tensor, mask: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
        let (b, h, t, _) = s.dims4()?;
        let mut p = data(s)?;
        let mut ds = data(dp)?;
        let (lse, delta, mask) = (data(lse)?, data(delta)?, data(mask)?);
        let scale = scale as f32;
        p.par_chunks_mut(t).zip(ds.par_chunks_mut(t)).enumerate().for_each(|(row, (pr, dr))| {
            let (bi, i) = (row / (h * t), row % t);
            let m = &mask[(bi * t + i) * t..][..t];
            let (l, d) = (lse[row], delta[row]);
            for ((pj, dj), mj) in pr.iter_mut().zip(dr.iter_mut()).zip(m) {
                *pj = (*pj * scale + mj - l).exp();
                *dj = *pj * (*dj - d) * scale;
            }
        });
        let shape = (b, h, t, t);
        Ok((Tensor::from_vec(p, shape, s.device())?, Tensor::from_vec(ds, shape, s.device())?))
    }
}
