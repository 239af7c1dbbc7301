//! Scaled dot-product attention with a causal + key-padding mask and grouped KV heads (GQA/MQA).
//!
//! Forward saves only the row log-sum-exp of the scores, as flash attention does; backward recomputes the
//! probabilities from it instead of keeping the `[B, H, T, T]` matrix alive between forward and backward.

use super::gemm::matmul;
use candle_core::{DType, Device, Result, Tensor, D};

/// Additive mask `[B, 1, T, T]` (f32): 0 where query `i` may attend key `j` (`j ≤ i`, key not padding and in
/// the same packed segment), `f32::MIN` elsewhere — transformers' eager convention, so a row with no visible key
/// degrades to a uniform row instead of NaN.
pub fn mask(key_valid: &[Vec<bool>], segments: Option<&[Vec<u32>]>, device: &Device) -> Result<Tensor> {
    let b = key_valid.len();
    let t = key_valid.first().map_or(0, |r| r.len());
    let mut m = vec![f32::MIN; b * t * t];
    for (bi, valid) in key_valid.iter().enumerate() {
        for i in 0..t {
            for j in 0..=i {
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

fn scores(q: &Tensor, k_rep: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let s = matmul(q, &k_rep.t()?)?;
    (s.to_dtype(DType::F32)? * scale)?.broadcast_add(mask)
}

/// `q`: `[B, Hq, T, d]`, `k`/`v`: `[B, Hkv, T, d]`. Returns `(o [B, Hq, T, d], lse [B, Hq, T, 1] f32)`.
pub fn forward(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let s = scores(q, &repeat_kv(k, n_rep)?, mask, scale)?;
    let max = s.max_keepdim(D::Minus1)?;
    let lse = s.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()?.add(&max)?;
    let p = s.broadcast_sub(&lse)?.exp()?.to_dtype(q.dtype())?;
    let o = matmul(&p, &repeat_kv(v, n_rep)?)?;
    Ok((o, lse))
}

/// Returns `(dq, dk, dv)` given the output gradient `do_` and what forward produced.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    do_: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dt = q.dtype();
    let n_rep = q.dim(1)? / k.dim(1)?;
    let k_rep = repeat_kv(k, n_rep)?;
    let v_rep = repeat_kv(v, n_rep)?;
    let p = scores(q, &k_rep, mask, scale)?.broadcast_sub(lse)?.exp()?;
    let dv = fold_kv(&matmul(&p.to_dtype(dt)?.t()?, do_)?, n_rep)?;
    let dp = matmul(do_, &v_rep.t()?)?.to_dtype(DType::F32)?;
    // rowsum(dP ⊙ P) equals rowsum(dO ⊙ O): the cheaper form.
    let delta = do_.to_dtype(DType::F32)?.mul(&o.to_dtype(DType::F32)?)?.sum_keepdim(D::Minus1)?;
    let ds = (p.mul(&dp.broadcast_sub(&delta)?)? * scale)?.to_dtype(dt)?;
    let dq = matmul(&ds, &k_rep)?;
    let dk = fold_kv(&matmul(&ds.t()?, q)?, n_rep)?;
    Ok((dq, dk, dv))
}
