//! Mixtral's sparse MoE MLP: a router picks the top-k of E experts per token, and the token's output is the
//! sum of those experts' gated MLPs weighted by the router's softmax renormalised over the chosen k
//! (transformers' `MixtralTopKRouter`: softmax over all experts in f32, top-k, divide by their sum).
//!
//! The experts and the router are frozen; each may carry LoRA (PEFT's `gate` on the router, `w1`/`w2`/`w3` on
//! every expert, as transformers 4 named Mixtral's modules), applied exactly as on a dense projection: an
//! expert's LoRA sees only the tokens routed to it. Backward returns the input gradient along both paths (through
//! the chosen experts, and through the routing weights into the router's logits) and the LoRA gradients. Router
//! auxiliary loss is not computed (PEFT LoRA with output_router_logits=False).

use super::activation;
use super::dropout::DropoutKey;
use super::linear::{self, Frozen, LoraApply, LoraFactors, LoraGrads, LoraSaved};
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

/// The LoRA of one MoE layer.
#[derive(Clone, Copy)]
pub struct MoeLora<'a> {
    pub router: Option<&'a LoraFactors>,
    /// Per expert, w1/w2/w3 (by `Target::expert_index`); empty when no expert is adapted.
    pub experts: &'a [[Option<LoraFactors>; 3]],
    pub scale: f64,
    /// The layer's dropout: the router draws its mask with `module` 7, expert `e`'s w1/w2/w3 with
    /// `8 + 3e + slot`, so every adapted module has its own mask as in PEFT.
    pub dropout: Option<(DropoutKey, f64)>,
}

impl<'a> MoeLora<'a> {
    fn key(&self, module: u64) -> Option<(DropoutKey, f64)> {
        self.dropout.map(|(k, p)| (DropoutKey { module, ..k }, p))
    }

    fn router(&self) -> Option<LoraApply<'a>> {
        self.router.map(|factors| LoraApply { factors, scale: self.scale, dropout: self.key(7) })
    }

    fn expert(&self, e: usize, slot: usize) -> Option<LoraApply<'a>> {
        let factors = self.factors(e, slot)?;
        Some(LoraApply { factors, scale: self.scale, dropout: self.key(8 + 3 * e as u64 + slot as u64) })
    }

    fn factors(&self, e: usize, slot: usize) -> Option<&'a LoraFactors> {
        self.experts.get(e)?[slot].as_ref()
    }
}

/// The LoRA gradients of one MoE layer, shaped like [`MoeLora`].
#[derive(Default)]
pub struct MoeGrads {
    pub router: Option<LoraGrads>,
    /// `(expert, slot, gradients)` for each adapted expert projection that saw tokens.
    pub experts: Vec<(usize, usize, LoraGrads)>,
}

fn frozen(w: &Tensor) -> Frozen {
    Frozen { w: w.clone(), b: None }
}

/// What one expert computed for the tokens routed to it.
struct Routed {
    /// Token rows (u32 `[n]`) and which of each token's k slots chose this expert.
    rows: Tensor,
    slots: Vec<usize>,
    g: Tensor,
    u: Tensor,
    /// The activation, kept when w2 has LoRA (its factor gradient needs w2's input).
    h: Option<Tensor>,
    /// The expert's output before weighting, `[n, H]`.
    out: Tensor,
    /// w1/w2/w3's LoRA state.
    lora: [Option<LoraSaved>; 3],
}

/// What backward needs.
pub struct MoeSaved {
    /// Router softmax over all experts, f32 `[N, E]` (kept on the host: it is small and read row by row).
    probs: Vec<f32>,
    /// Per token, the k chosen experts (descending probability) and their renormalised weights.
    chosen: Vec<Vec<usize>>,
    weights: Vec<Vec<f32>>,
    routed: Vec<Option<Routed>>,
    router_lora: Option<LoraSaved>,
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
pub fn forward(x: &Tensor, w: &MoeWeights, k: usize, act: Activation, lora: Option<MoeLora>) -> Result<(Tensor, MoeSaved)> {
    let (n, _) = x.dims2()?;
    let e = w.experts.len();
    let (logits, router_lora) = linear::forward(x, &frozen(&w.router), lora.and_then(|l| l.router()))?;
    let logits = logits.to_dtype(DType::F32)?;
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
        let adapter = |slot| lora.and_then(|l| l.expert(ei, slot));
        let (g, s1) = linear::forward(&xe, &frozen(&ex.w1), adapter(0))?;
        let (u, s3) = linear::forward(&xe, &frozen(&ex.w3), adapter(2))?;
        let h = activation::forward(&g, &u, act)?;
        let (out, s2) = linear::forward(&h, &frozen(&ex.w2), adapter(1))?;
        let we = flat_w.index_select(&Tensor::from_vec(flat, len, x.device())?, 0)?.unsqueeze(1)?;
        let ye = out.to_dtype(DType::F32)?.broadcast_mul(&we)?.to_dtype(x.dtype())?;
        y = y.index_add(&rows, &ye, 0)?;
        let h = s2.is_some().then_some(h);
        routed.push(Some(Routed { rows, slots, g, u, h, out, lora: [s1, s2, s3] }));
    }
    Ok((y, MoeSaved { probs, chosen, weights, routed, router_lora }))
}

fn with<'a>(f: Option<&'a LoraFactors>, saved: &'a Option<LoraSaved>, scale: f64) -> Option<(&'a LoraFactors, f64, &'a LoraSaved)> {
    f.zip(saved.as_ref()).map(|(f, s)| (f, scale, s))
}

/// `dy`: `[N, H]`, `x`: the forward's input. Returns `dx` `[N, H]` through the experts and through the routing
/// weights, and the LoRA gradients.
pub fn backward(dy: &Tensor, x: &Tensor, w: &MoeWeights, saved: &MoeSaved, act: Activation, lora: Option<MoeLora>) -> Result<(Tensor, MoeGrads)> {
    let (n, _) = dy.dims2()?;
    let e = w.experts.len();
    let mut dx = dy.zeros_like()?;
    let mut grads = MoeGrads::default();
    let scale = lora.map_or(0.0, |l| l.scale);
    // d loss / d weight[t][slot], filled expert by expert.
    let mut dweights: Vec<Vec<f32>> = saved.weights.iter().map(|r| vec![0.0; r.len()]).collect();
    for (ei, (ex, r)) in w.experts.iter().zip(&saved.routed).enumerate() {
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
        let factors = |slot| lora.and_then(|l| l.factors(ei, slot));
        let h = match &r.h {
            Some(h) => h.clone(),
            None => activation::forward(&r.g, &r.u, act)?,
        };
        let (dh, g2) = linear::backward(&dout, &h, &frozen(&ex.w2), with(factors(1), &r.lora[1], scale))?;
        let (dg, du) = activation::backward(&dh, &r.g, &r.u, act)?;
        let xe = x.index_select(&r.rows, 0)?;
        let (dx1, g1) = linear::backward(&dg, &xe, &frozen(&ex.w1), with(factors(0), &r.lora[0], scale))?;
        let (dx3, g3) = linear::backward(&du, &xe, &frozen(&ex.w3), with(factors(2), &r.lora[2], scale))?;
        dx = dx.index_add(&r.rows, &dx1.add(&dx3)?, 0)?;
        for (slot, g) in [(0, g1), (1, g2), (2, g3)] {
            if let Some(g) = g {
                grads.experts.push((ei, slot, g));
            }
        }
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
    let (dxr, gr) = linear::backward(&dlogits, x, &frozen(&w.router), with(lora.and_then(|l| l.router), &saved.router_lora, scale))?;
    grads.router = gr;
    Ok((dx.add(&dxr)?, grads))
}
