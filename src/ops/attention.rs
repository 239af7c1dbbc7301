//! Scaled dot-product attention with a causal + key-padding mask and grouped KV heads (GQA/MQA), optionally with
//! a sliding window (per layer) and tanh soft-capping of the scores (Gemma-2).
//!
//! Forward saves only the row log-sum-exp of the scores, as flash attention does; backward recomputes the
//! probabilities from it instead of keeping the `[B, H, T, T]` matrix alive between forward and backward.

use super::attention_backend::key_lengths;
use super::gemm::matmul;
use candle_core::{DType, Device, Result, Tensor, D};
use std::sync::{Mutex, OnceLock};

/// How one layer turns raw scores `q·kᵀ` into probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnOpts {
    pub scale: f64,
    /// Scores become `cap · tanh(scale·s / cap)` before the mask (Gemma-2's `attn_logit_softcapping`).
    pub softcap: Option<f64>,
    /// Query `i` sees keys `j` with `i − window < j ≤ i` only (transformers' `sliding_window_overlay`).
    pub window: Option<usize>,
}

impl AttnOpts {
    /// Plain causal attention with this score scale.
    pub fn scaled(scale: f64) -> Self {
        Self { scale, softcap: None, window: None }
    }
}

/// Which keys each query may see, in the two forms the two paths use, each built on first use: the dense
/// additive mask of the Candle reference, and the per-token key validity and packed-example ids (u32 `[B, T]`)
/// that the CUDA kernels read.
pub struct AttnMask {
    key_valid: Vec<Vec<bool>>,
    segments: Option<Vec<Vec<u32>>>,
    device: Device,
    /// Dense masks built so far, one per window (layers of one model use at most two).
    dense: Mutex<Vec<(Option<usize>, Tensor)>>,
    tokens: OnceLock<(Tensor, Tensor)>,
    /// cuDNN's form: each row's valid length, or why the mask has none (see [`key_lengths`]).
    lengths: OnceLock<std::result::Result<Option<Vec<u32>>, String>>,
    length_tensors: OnceLock<(Tensor, Tensor)>,
}

impl AttnMask {
    pub fn new(key_valid: &[Vec<bool>], segments: Option<&[Vec<u32>]>, device: &Device) -> Self {
        Self {
            key_valid: key_valid.to_vec(),
            segments: segments.map(|s| s.to_vec()),
            device: device.clone(),
            dense: Mutex::new(Vec::new()),
            tokens: OnceLock::new(),
            lengths: OnceLock::new(),
            length_tensors: OnceLock::new(),
        }
    }

    /// The additive mask `[B, 1, T, T]` for a window (see [`mask`]).
    pub fn dense(&self, window: Option<usize>) -> Result<Tensor> {
        let mut built = self.dense.lock().expect("no panic while building a mask");
        if let Some((_, m)) = built.iter().find(|(w, _)| *w == window) {
            return Ok(m.clone());
        }
        let m = mask(&self.key_valid, self.segments.as_deref(), window, &self.device)?;
        built.push((window, m.clone()));
        Ok(m)
    }

    /// Whether `window` hides any key of these rows: only then does the mask differ from the causal one (a
    /// Mistral window longer than the batch keeps the fused kernels).
    pub fn window_applies(&self, window: Option<usize>) -> bool {
        window.is_some_and(|w| w < self.key_valid.first().map_or(0, |r| r.len()))
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

    /// Each row's valid length when the batch is right-padded (`None`: no padding at all), or why the mask is
    /// not of that form (packed rows): the mask as cuDNN's fused attention takes it.
    pub fn key_lengths(&self) -> std::result::Result<Option<&[u32]>, &str> {
        let lens = self.lengths.get_or_init(|| key_lengths(&self.key_valid, self.segments.is_some()));
        match lens {
            Ok(l) => Ok(l.as_deref()),
            Err(why) => Err(why),
        }
    }

    /// `(seq_len_q, seq_len_kv)`, u32 `[B]` on the device, of a padded batch: every query position is computed
    /// (T) and keys stop at the row's valid length, which is the dense mask's meaning for padding rows too.
    pub fn length_tensors(&self) -> Result<&(Tensor, Tensor)> {
        if let Some(t) = self.length_tensors.get() {
            return Ok(t);
        }
        let Ok(Some(lens)) = self.key_lengths() else { candle_core::bail!("the attention mask has no per-row lengths") };
        let t = self.key_valid.first().map_or(0, |r| r.len()) as u32;
        let pair = (Tensor::from_vec(vec![t; lens.len()], lens.len(), &self.device)?, Tensor::from_vec(lens.to_vec(), lens.len(), &self.device)?);
        Ok(self.length_tensors.get_or_init(|| pair))
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

/// Whether the fused CUDA kernels serve these inputs (CUDA, f32/bf16, an instantiated head dim, not tracked).
/// The kernels know neither soft-capping nor sliding windows: such layers (or a window that hides keys of this
/// batch) take the Candle-op reference on the GPU instead (dense mask, `[B, H, T, T]` scores in memory),
/// explicitly here rather than wrongly in a kernel.
#[cfg(feature = "cuda")]
fn use_cuda_kernels(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, opts: &AttnOpts) -> Result<bool> {
    Ok(opts.softcap.is_none()
        && !mask.window_applies(opts.window)
        && crate::cuda::applies(&[q, k, v])
        && crate::cuda::ATTENTION_HEAD_DIMS.contains(&q.dim(D::Minus1)?))
}

/// Additive mask `[B, 1, T, T]` (f32): 0 where query `i` may attend key `j` (`j ≤ i`, within the window if
/// any, key not padding and in the same packed segment), `f32::MIN` elsewhere — transformers' eager convention,
/// so a row with no visible key degrades to a uniform row instead of NaN. Rows are right-padded and packed
/// examples restart their positions, so index distance is position distance wherever a key is visible.
pub fn mask(key_valid: &[Vec<bool>], segments: Option<&[Vec<u32>]>, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let b = key_valid.len();
    let t = key_valid.first().map_or(0, |r| r.len());
    let mut m = vec![f32::MIN; b * t * t];
    for (bi, valid) in key_valid.iter().enumerate() {
        for i in 0..t {
            let first = window.map_or(0, |w| (i + 1).saturating_sub(w));
            for j in first..=i {
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
pub fn forward(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, opts: &AttnOpts) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if use_cuda_kernels(q, k, v, mask, opts)? {
        if let Some(out) = crate::cuda::cudnn_sdpa::forward(q, k, v, mask, opts.scale)? {
            return Ok(out);
        }
        let (valid, seg) = mask.tokens()?;
        return if use_tensor_cores(q)? {
            crate::cuda::attention_fwd_chunked(q, k, v, valid, seg, opts.scale, None)
        } else {
            crate::cuda::attention_fwd(q, k, v, valid, seg, opts.scale)
        };
    }
    forward_with(q, k, v, &mask.dense(opts.window)?, opts, use_cpu_kernels(q, k, v))
}

/// [`forward`] as Candle ops (the oracle of the fused kernels).
pub fn forward_reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, opts: &AttnOpts) -> Result<(Tensor, Tensor)> {
    forward_with(q, k, v, &mask.dense(opts.window)?, opts, false)
}

fn forward_with(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, opts: &AttnOpts, fused: bool) -> Result<(Tensor, Tensor)> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let s = matmul(q, &repeat_kv(k, n_rep)?.t()?)?;
    let (p, lse) = if fused { cpu::softmax_lse(&s, mask, opts)? } else { softmax_lse(&s, mask, opts)? };
    let o = matmul(&p, &repeat_kv(v, n_rep)?)?;
    Ok((o, lse))
}

/// Returns `(dq, dk, dv)` given the output gradient `do_` and what forward produced.
#[allow(clippy::too_many_arguments)]
pub fn backward(do_: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, mask: &AttnMask, opts: &AttnOpts) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if use_cuda_kernels(q, k, v, mask, opts)? {
        if let Some(grads) = crate::cuda::cudnn_sdpa::backward(do_, q, k, v, o, lse, mask, opts.scale)? {
            return Ok(grads);
        }
        let (valid, seg) = mask.tokens()?;
        let delta = do_.to_dtype(DType::F32)?.mul(&o.to_dtype(DType::F32)?)?.sum_keepdim(D::Minus1)?;
        return if use_tensor_cores(q)? {
            crate::cuda::attention_bwd_chunked(do_, q, k, v, lse, &delta, valid, seg, opts.scale, None)
        } else {
            crate::cuda::attention_bwd(do_, q, k, v, lse, &delta, valid, seg, opts.scale)
        };
    }
    backward_with(do_, q, k, v, o, lse, &mask.dense(opts.window)?, opts, use_cpu_kernels(q, k, v))
}

/// [`backward`] as Candle ops (the oracle of the fused kernels).
#[allow(clippy::too_many_arguments)]
pub fn backward_reference(do_: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, mask: &AttnMask, opts: &AttnOpts) -> Result<(Tensor, Tensor, Tensor)> {
    backward_with(do_, q, k, v, o, lse, &mask.dense(opts.window)?, opts, false)
}

#[allow(clippy::too_many_arguments)]
fn backward_with(do_: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, mask: &Tensor, opts: &AttnOpts, fused: bool) -> Result<(Tensor, Tensor, Tensor)> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let k_rep = repeat_kv(k, n_rep)?;
    let v_rep = repeat_kv(v, n_rep)?;
    let s = matmul(q, &k_rep.t()?)?;
    let dp = matmul(do_, &v_rep.t()?)?;
    // rowsum(dP ⊙ P) equals rowsum(dO ⊙ O): the cheaper form.
    let delta = do_.to_dtype(DType::F32)?.mul(&o.to_dtype(DType::F32)?)?.sum_keepdim(D::Minus1)?;
    let (p, ds) = if fused {
        cpu::softmax_backward(&s, &dp, lse, &delta, mask, opts)?
    } else {
        softmax_backward(&s, &dp, lse, &delta, mask, opts)?
    };
    let dv = fold_kv(&matmul(&p.t()?, do_)?, n_rep)?;
    let dq = matmul(&ds, &k_rep)?;
    let dk = fold_kv(&matmul(&ds.t()?, q)?, n_rep)?;
    Ok((dq, dk, dv))
}

/// The scaled (and soft-capped) scores in f32, before the mask.
fn capped_scores(s: &Tensor, opts: &AttnOpts) -> Result<Tensor> {
    let x = (s.to_dtype(DType::F32)? * opts.scale)?;
    match opts.softcap {
        Some(cap) => (x / cap)?.tanh()? * cap,
        None => Ok(x),
    }
}

/// Scale (+ cap) + mask + softmax over raw scores `s`, in f32; returns `(P in s's dtype, lse)`.
fn softmax_lse(s: &Tensor, mask: &Tensor, opts: &AttnOpts) -> Result<(Tensor, Tensor)> {
    let x = capped_scores(s, opts)?.broadcast_add(mask)?;
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    let lse = sum.log()?.add(&max)?;
    // Normalised by the sum, not exp(x − lse): a row that sees no key has lse = f32::MIN + ln n, which rounds
    // to f32::MIN, while its forward must stay transformers' uniform row.
    let p = e.broadcast_div(&sum)?.to_dtype(s.dtype())?;
    Ok((p, lse))
}

/// Recomputes `P = exp(c(s) + mask − lse)` and returns `(P, dS = P ⊙ (dP − δ) · c'(s))` in s's dtype, where
/// `c(s) = scale·s`, or `cap·tanh(scale·s/cap)` with `c'(s) = scale·(1 − tanh²)` when soft-capped.
fn softmax_backward(s: &Tensor, dp: &Tensor, lse: &Tensor, delta: &Tensor, mask: &Tensor, opts: &AttnOpts) -> Result<(Tensor, Tensor)> {
    let dt = s.dtype();
    let x = capped_scores(s, opts)?;
    let p = x.broadcast_add(mask)?.broadcast_sub(lse)?.exp()?;
    let ds = (p.mul(&dp.to_dtype(DType::F32)?.broadcast_sub(delta)?)? * opts.scale)?;
    let ds = match opts.softcap {
        Some(cap) => ds.mul(&(x / cap)?.sqr()?.affine(-1.0, 1.0)?)?,
        None => ds,
    };
    Ok((p.to_dtype(dt)?, ds.to_dtype(dt)?))
}

/// Row-parallel f32 CPU kernels of [`softmax_lse`] and [`softmax_backward`], fused into one pass per row.
/// Rows are independent, so they run on all cores with rayon.
mod cpu {
    use super::AttnOpts;
    use candle_core::{Result, Tensor};
    use rayon::prelude::*;

    fn data(t: &Tensor) -> Result<Vec<f32>> {
        t.flatten_all()?.to_vec1::<f32>()
    }

    /// `s`: `[B, H, T, T]` raw scores, `mask`: `[B, 1, T, T]`. Returns `(P, lse [B, H, T, 1])`.
    pub fn softmax_lse(s: &Tensor, mask: &Tensor, opts: &AttnOpts) -> Result<(Tensor, Tensor)> {
        let (b, h, t, _) = s.dims4()?;
        let mut p = data(s)?;
        let mask = data(mask)?;
        let mut lse = vec![0f32; b * h * t];
        let (scale, cap) = (opts.scale as f32, opts.softcap.map(|c| c as f32));
        p.par_chunks_mut(t).zip(lse.par_iter_mut()).enumerate().for_each(|(row, (x, l))| {
            let (bi, i) = (row / (h * t), row % t);
            let m = &mask[(bi * t + i) * t..][..t];
            let mut max = f32::NEG_INFINITY;
            for (xj, mj) in x.iter_mut().zip(m) {
                *xj = capped(*xj, scale, cap) + mj;
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

    /// `scale·s`, or `cap·tanh(scale·s/cap)`.
    fn capped(s: f32, scale: f32, cap: Option<f32>) -> f32 {
        match cap {
            Some(c) => c * (s * scale / c).tanh(),
            None => s * scale,
        }
    }

    /// Recomputes `P = exp(c(s) + mask − lse)` and returns `(P, dS)`.
    pub fn softmax_backward(s: &Tensor, dp: &Tensor, lse: &Tensor, delta: &Tensor, mask: &Tensor, opts: &AttnOpts) -> Result<(Tensor, Tensor)> {
        let (b, h, t, _) = s.dims4()?;
        let mut p = data(s)?;
        let mut ds = data(dp)?;
        let (lse, delta, mask) = (data(lse)?, data(delta)?, data(mask)?);
        let (scale, cap) = (opts.scale as f32, opts.softcap.map(|c| c as f32));
        p.par_chunks_mut(t).zip(ds.par_chunks_mut(t)).enumerate().for_each(|(row, (pr, dr))| {
            let (bi, i) = (row / (h * t), row % t);
            let m = &mask[(bi * t + i) * t..][..t];
            let (l, d) = (lse[row], delta[row]);
            for ((pj, dj), mj) in pr.iter_mut().zip(dr.iter_mut()).zip(m) {
                let x = capped(*pj, scale, cap);
                // d capped / d s = scale · (1 − tanh²), tanh = x / cap.
                let slope = cap.map_or(scale, |c| scale * (1.0 - (x / c) * (x / c)));
                *pj = (x + mj - l).exp();
                *dj = *pj * (*dj - d) * slope;
            }
        });
        let shape = (b, h, t, t);
        Ok((Tensor::from_vec(p, shape, s.device())?, Tensor::from_vec(ds, shape, s.device())?))
    }
}
