//! The LM head fused with next-token cross-entropy, processed in row chunks so that the `[N, vocab]` logits of a
//! whole micro-batch never exist at once (256k-vocab models would need gigabytes for them).
//!
//! Targets are given per row (`None` = ignored row). Loss and gradient are in f32 whatever the compute dtype.
//! `softcap` caps the logits (`cap · tanh(logits / cap)`, Gemma-2's `final_logit_softcapping`) before the softmax.

use super::gemm::matmul;
use super::softcap;
use candle_core::{DType, Result, Tensor, D};

/// Rows per chunk such that one chunk's f32 logits stay near 64 Mi elements.
fn chunk_rows(vocab: usize, rows: usize) -> usize {
    ((64 << 20) / vocab.max(1)).clamp(1, rows.max(1))
}

/// Per-row target ids (0 where ignored) and validity weights (1/0), on the device.
fn target_tensors(targets: &[Option<u32>], device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let ids: Vec<u32> = targets.iter().map(|t| t.unwrap_or(0)).collect();
    let valid: Vec<f32> = targets.iter().map(|t| if t.is_some() { 1.0 } else { 0.0 }).collect();
    let n = targets.len();
    Ok((Tensor::from_vec(ids, (n, 1), device)?, Tensor::from_vec(valid, (n, 1), device)?))
}

/// Per-row negative log-likelihoods `[n, 1]` (f32; 0 on ignored rows) and, when asked for, the softmax with
/// the (capped) f32 logits it came from, which the cap's backward needs.
fn chunk_nll(h: &Tensor, w: &Tensor, ids: &Tensor, valid: &Tensor, want_softmax: bool, cap: Option<f64>) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let logits = softcap::maybe(matmul(h, &w.t()?)?.to_dtype(DType::F32)?, cap)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let exp = shifted.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    let nll = sum.log()?.sub(&shifted.gather(ids, D::Minus1)?)?.mul(valid)?;
    let softmax = if want_softmax { Some((exp.broadcast_div(&sum)?, logits)) } else { None };
    Ok((nll, softmax))
}

/// Each row's target NLL (0 on ignored rows), chunked like the training loss: for log-likelihood scoring.
pub fn row_nll(h: &Tensor, w: &Tensor, targets: &[Option<u32>], cap: Option<f64>) -> Result<Vec<f32>> {
    let n = h.dim(0)?;
    let step = chunk_rows(w.dim(0)?, n);
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        let (ids, valid) = target_tensors(&targets[start..start + len], h.device())?;
        let (nll, _) = chunk_nll(&h.narrow(0, start, len)?, w, &ids, &valid, false, cap)?;
        out.extend(nll.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Sum of target NLLs over the rows of `h` (`[N, H]`, the final-norm output) against head `w` (`[V, H]`), as a
/// scalar f32 tensor built from differentiable Candle ops (so autograd can serve as the oracle of the whole model).
pub fn nll_sum(h: &Tensor, w: &Tensor, targets: &[Option<u32>], cap: Option<f64>) -> Result<Tensor> {
    let n = h.dim(0)?;
    let step = chunk_rows(w.dim(0)?, n);
    let mut parts = Vec::new();
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        let (ids, valid) = target_tensors(&targets[start..start + len], h.device())?;
        parts.push(chunk_nll(&h.narrow(0, start, len)?, w, &ids, &valid, false, cap)?.0.sum_all()?);
    }
    Tensor::stack(&parts, 0)?.sum_all()
}

pub fn forward(h: &Tensor, w: &Tensor, targets: &[Option<u32>], cap: Option<f64>) -> Result<f64> {
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[h, w]) {
        return fused(h, w, targets, None, cap).map(|(loss, _)| loss);
    }
    Ok(nll_sum(h, w, targets, cap)?.to_scalar::<f32>()? as f64)
}

/// The CUDA path: per chunk, the head GEMM on cuBLAS, then one kernel for the row log-sum-exp, the NLL and
/// (with `scale`) the logits' gradient, then the GEMM back to `dh`. A soft-cap is applied around the kernel with
/// Candle ops (tanh forward, its derivative on the kernel's gradient): the kernel itself knows no cap.
#[cfg(feature = "cuda")]
fn fused(h: &Tensor, w: &Tensor, targets: &[Option<u32>], scale: Option<f64>, cap: Option<f64>) -> Result<(f64, Option<Tensor>)> {
    let (n, vocab) = (h.dim(0)?, w.dim(0)?);
    if let Some(t) = targets.iter().flatten().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("target id {t} is outside the vocabulary ({vocab})");
    }
    let step = chunk_rows(vocab, n);
    let mut nlls = Vec::new();
    let mut dhs = Vec::new();
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        let ids: Vec<u32> = targets[start..start + len].iter().map(|t| t.unwrap_or(u32::MAX)).collect();
        let ids = Tensor::from_vec(ids, len, h.device())?;
        let hc = h.narrow(0, start, len)?;
        let logits = softcap::maybe(matmul(&hc, &w.t()?)?, cap)?;
        let (nll, dlogits) = crate::cuda::cross_entropy(&logits, &ids, scale)?;
        nlls.push(nll);
        if let Some(dl) = dlogits {
            let dl = match cap {
                Some(c) => softcap::backward(&dl.to_dtype(DType::F32)?, &logits.to_dtype(DType::F32)?, c)?.to_dtype(dl.dtype())?,
                None => dl,
            };
            dhs.push(matmul(&dl, w)?);
        }
    }
    // One device-to-host read for the whole batch.
    let loss = Tensor::cat(&nlls, 0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    let dh = if scale.is_some() { Some(Tensor::cat(&dhs, 0)?) } else { None };
    Ok((loss, dh))
}

/// Forward and backward at once: returns the NLL sum and `dh = d(scale · Σ nll)/dh` (`[N, H]`, dtype of `h`).
/// `scale` is 1 / (target tokens of the whole optimizer batch), which makes accumulated micro-batch gradients
/// equal to the gradient of the batch's token-weighted mean loss.
pub fn forward_backward(h: &Tensor, w: &Tensor, targets: &[Option<u32>], scale: f64, cap: Option<f64>) -> Result<(f64, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::applies(&[h, w]) {
        let (loss, dh) = fused(h, w, targets, Some(scale), cap)?;
        return Ok((loss, dh.expect("asked for the gradient")));
    }
    let n = h.dim(0)?;
    let vocab = w.dim(0)?;
    let step = chunk_rows(vocab, n);
    let mut total = 0f64;
    let mut dhs = Vec::new();
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        let (ids, valid) = target_tensors(&targets[start..start + len], h.device())?;
        let (nll, softmax) = chunk_nll(&h.narrow(0, start, len)?, w, &ids, &valid, true, cap)?;
        total += nll.sum_all()?.to_scalar::<f32>()? as f64;
        let (softmax, capped) = softmax.expect("asked for");
        let classes = Tensor::arange(0u32, vocab as u32, h.device())?.unsqueeze(0)?;
        let onehot = classes.broadcast_eq(&ids)?.to_dtype(DType::F32)?;
        let dlogits = (softmax.sub(&onehot)?.broadcast_mul(&valid)? * scale)?;
        let dlogits = match cap {
            Some(c) => softcap::backward(&dlogits, &capped, c)?,
            None => dlogits,
        };
        dhs.push(matmul(&dlogits.to_dtype(h.dtype())?, w)?);
    }
    Ok((total, Tensor::cat(&dhs, 0)?))
}
