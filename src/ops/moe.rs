//! Mixtral's sparse MoE MLP: a router picks the top-k of E experts per token, and the token's output is the
//! sum of those experts' gated MLPs weighted by the router's softmax renormalised over the chosen k
//! (transformers' `MixtralTopKRouter`: softmax over all experts in f32, top-k, divide by their sum).
//!
//! The experts and the router are frozen. Backward returns the input gradient along both paths: through the
//! chosen experts, and through the routing weights into the router's logits (which is how attention's LoRA
//! below sees the routing). Router auxiliary loss is not computed (PEFT LoRA with output_router_logits=False).

use super::activation;
use super::gemm::matmul;
use crate::config::Activation;
use candle_core::{DType, Result, Tensor, D};

/// One expert's frozen projections, as the checkpoint names them: w1 (gate, `[I, H]`), w3 (up, `[I, H]`),
/// w2 (down, `[H, I]`).
pub struct Expert {
    pub w1: Tensor,
    pub w3: Tensor,
    pub w2: Tensor,
}

pub struct MoeWeights {
    /// `[E, H]`.
    pub router: Tensor,
    pub experts: Vec<Expert>,
}

/// What one expert computed for the tokens routed to it.
struct Routed {
    /// Token rows (u32 `[n]`) and which of each token's k slots chose this expert.
    rows: Tensor,
    slots: Vec<usize>,
    g: Tensor,
    u: Tensor,
    /// The expert's output before weighting, `[n, H]`.
    out: Tensor,
}

/// What backward needs.
pub struct MoeSaved {
    /// Router softmax over all experts, f32 `[N, E]` (kept on the host: it is small and read row by row).
    probs: Vec<f32>,
    /// Per token, the k chosen experts (descending probability) and their renormalised weights.
    chosen: Vec<Vec<usize>>,
    weights: Vec<Vec<f32>>,
    routed: Vec<Option<Routed>>,
}

/// Top-k of one row, as `torch.topk`: descending values, ties to the lower index.
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// `x`: `[N, H]`. Returns `(y [N, H], saved)`. Written in differentiable Candle ops given the (discrete) choice
/// of experts, so that autograd over it is the oracle of [`backward`].
pub fn forward(x: &Tensor, w: &MoeWeights, k: usize, act: Activation) -> Result<(Tensor, MoeSaved)> {
    let (n, _) = x.dims2()?;
    let e = w.experts.len();
    let logits = matmul(x, &w.router.t()?)?.to_dtype(DType::F32)?;
    // The composite softmax (not the fused last-dim kernel, which autograd cannot see through).
    let probs_t = candle_nn::ops::softmax(&logits, D::Minus1)?;
    let probs = probs_t.flatten_all()?.to_vec1::<f32>()?;
    let chosen: Vec<Vec<usize>> = probs.chunks(e).map(|r| top_k(r, k)).collect();
    // The renormalised weights as tensor ops on the probabilities (gather, sum, divide): differentiable.
    let idx: Vec<u32> = chosen.iter().flatten().map(|&i| i as u32).collect();
    let idx = Tensor::from_vec(idx, (n, k), x.device())?;
    let top = probs_t.gather(&idx, D::Minus1)?;
    let weights_t = top.broadcast_div(&top.sum_keepdim(D::Minus1)?)?;
    let weights: Vec<Vec<f32>> = weights_t.to_vec2::<f32>()?;
    let flat_w = weights_t.flatten_all()?;
    let mut y = x.zeros_like()?;
    let mut routed = Vec::with_capacity(e);
    // Experts in ascending order, each adding into its tokens' rows: transformers' summation order.
    for (ei, ex) in w.experts.iter().enumerate() {
        let mut rows = Vec::new();
        let mut slots = Vec::new();
        let mut flat = Vec::new();
        for (t, c) in chosen.iter().enumerate() {
            if let Some(s) = c.iter().position(|&c| c == ei) {
                rows.push(t as u32);
                slots.push(s);
                flat.push((t * k + s) as u32);
            }
        }
        if rows.is_empty() {
            routed.push(None);
            continue;
        }
        let len = rows.len();
        let rows = Tensor::from_vec(rows, len, x.device())?;
        let xe = x.index_select(&rows, 0)?;
        let g = matmul(&xe, &ex.w1.t()?)?;
        let u = matmul(&xe, &ex.w3.t()?)?;
        let h = activation::forward(&g, &u, act)?;
        let out = matmul(&h, &ex.w2.t()?)?;
        let we = flat_w.index_select(&Tensor::from_vec(flat, len, x.device())?, 0)?.unsqueeze(1)?;
        let ye = out.to_dtype(DType::F32)?.broadcast_mul(&we)?.to_dtype(x.dtype())?;
        y = y.index_add(&rows, &ye, 0)?;
        routed.push(Some(Routed { rows, slots, g, u, out }));
    }
    Ok((y, MoeSaved { probs, chosen, weights, routed }))
}

/// `dy`: `[N, H]`; returns `dx` `[N, H]` through the experts and through the routing weights.
pub fn backward(dy: &Tensor, w: &MoeWeights, saved: &MoeSaved, act: Activation) -> Result<Tensor> {
    let (n, _) = dy.dims2()?;
    let e = w.experts.len();
    let mut dx = dy.zeros_like()?;
    // d loss / d weight[t][slot], filled expert by expert.
    let mut dweights: Vec<Vec<f32>> = saved.weights.iter().map(|r| vec![0.0; r.len()]).collect();
    for (ex, r) in w.experts.iter().zip(&saved.routed) {
        let Some(r) = r else { continue };
        let dye = dy.index_select(&r.rows, 0)?;
        let rows = r.rows.to_vec1::<u32>()?;
        let we: Vec<f32> = rows.iter().zip(&r.slots).map(|(&t, &s)| saved.weights[t as usize][s]).collect();
        let we = Tensor::from_vec(we, (rows.len(), 1), dy.device())?;
        // y_t = Σ w · out: d out = w · dy, d w = ⟨out, dy⟩.
        let dye_f = dye.to_dtype(DType::F32)?;
        let dw = r.out.to_dtype(DType::F32)?.mul(&dye_f)?.sum(D::Minus1)?.to_vec1::<f32>()?;
        for ((&t, &s), d) in rows.iter().zip(&r.slots).zip(dw) {
            dweights[t as usize][s] = d;
        }
        let dout = dye_f.broadcast_mul(&we)?.to_dtype(dy.dtype())?;
        let dh = matmul(&dout, &ex.w2)?;
        let (dg, du) = activation::backward(&dh, &r.g, &r.u, act)?;
        let dxe = matmul(&dg, &ex.w1)?.add(&matmul(&du, &ex.w3)?)?;
        dx = dx.index_add(&r.rows, &dxe, 0)?;
    }
    // Routing: w_i = p_i / S over the chosen i (S = Σ chosen p), p = softmax(logits).
    // dp_i = (dw_i − Σ_j w_j dw_j) / S on chosen experts, 0 elsewhere; dlogits = p ⊙ (dp − ⟨p, dp⟩).
    let mut dlogits = vec![0f32; n * e];
    for t in 0..n {
        let p = &saved.probs[t * e..(t + 1) * e];
        let (c, wt, dwt) = (&saved.chosen[t], &saved.weights[t], &dweights[t]);
        let s: f32 = c.iter().map(|&i| p[i]).sum();
        let mean: f32 = wt.iter().zip(dwt).map(|(a, b)| a * b).sum();
        let mut dp = vec![0f32; e];
        for (slot, &i) in c.iter().enumerate() {
            dp[i] = (dwt[slot] - mean) / s;
        }
        let dot: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
        for i in 0..e {
            dlogits[t * e + i] = p[i] * (dp[i] - dot);
        }
    }
    let dlogits = Tensor::from_vec(dlogits, (n, e), dy.device())?.to_dtype(dy.dtype())?;
    dx.add(&matmul(&dlogits, &w.router)?)
}

