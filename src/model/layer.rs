//! One decoder layer: pre-norm attention and pre-norm gated MLP, each with a residual.
//!
//! ```text
//! n1 = rmsnorm(x);  q,k,v = proj(n1);  [Qwen3: q,k = rmsnorm per head];  q,k = rope(q,k);
//! o = attn(q,k,v);  x1 = x + o_proj(o)
//! n2 = rmsnorm(x1); h = act(gate(n2)) ⊙ up(n2);  y = x1 + down(h)
//! ```
//!
//! Gemma-2 also normalises each branch's output before its residual add (`x1 = x + rmsnorm(o_proj(o))`,
//! `y = x1 + rmsnorm(down(h))`), soft-caps attention scores and slides a window on every other layer.

use super::{Grads, Inputs, Model, StepCtx};
use crate::config::ModelConfig;
use crate::lora::{Adapter, Target};
use crate::ops::linear::{self, LoraApply, LoraSaved};
use crate::ops::{activation, attention, moe, rmsnorm, rope};
use anyhow::Result;
use candle_core::Tensor;

/// What Qwen3's per-head q/k norm keeps for backward: its input `[B·T, H, d]` and `rstd`.
pub(crate) struct HeadNorm {
    x: Tensor,
    rstd: Tensor,
}

/// A q or k projection output `rows` `[B·T, H·d]` → `[B, H, T, d]` rotated, normalised per head first when the
/// family has a q/k norm (`norm`).
pub(crate) fn qk_heads(rows: &Tensor, norm: Option<&Tensor>, cfg: &ModelConfig, tables: &rope::RopeTables, heads: usize) -> Result<(Tensor, Option<HeadNorm>)> {
    let Some(w) = norm else { return Ok((rope::forward_heads(rows, tables, heads)?, None)) };
    let x = rows.reshape((rows.dim(0)?, heads, cfg.head_dim))?;
    let (y, rstd) = rmsnorm::forward(&x, w, cfg.norm_weight_offset, cfg.rms_norm_eps)?;
    let out = rope::forward_heads(&y.reshape(rows.shape())?, tables, heads)?;
    Ok((out, Some(HeadNorm { x, rstd })))
}

/// Backward of [`qk_heads`]: `dy` `[B, H, T, d]` → `[B·T, H·d]`.
fn qk_heads_backward(dy: &Tensor, norm: Option<(&Tensor, &HeadNorm)>, cfg: &ModelConfig, tables: &rope::RopeTables) -> Result<Tensor> {
    let drows = rope::backward_rows(dy, tables)?;
    let Some((w, saved)) = norm else { return Ok(drows) };
    let dx = rmsnorm::backward(&drows.reshape(saved.x.shape())?, &saved.x, w, cfg.norm_weight_offset, &saved.rstd)?;
    Ok(dx.reshape(drows.shape())?)
}

/// Everything a layer's backward needs from its forward.
pub(crate) struct LayerCache {
    x: Tensor,
    rstd1: Tensor,
    n1: Tensor,
    q_norm: Option<HeadNorm>,
    k_norm: Option<HeadNorm>,
    /// `[B, H, T, d]`, after RoPE.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Attention output `[B, Hq, T, d]` and its log-sum-exp rows.
    o: Tensor,
    lse: Tensor,
    /// `o` as `[N, Hq*d]`, the input of o_proj.
    o2: Tensor,
    x1: Tensor,
    rstd2: Tensor,
    n2: Tensor,
    mlp: MlpSaved,
    /// Input and rstd of the attention-output and MLP-output norms, where the family has them.
    attn_out_norm: Option<(Tensor, Tensor)>,
    mlp_out_norm: Option<(Tensor, Tensor)>,
    lora: [Option<LoraSaved>; 7],
}

/// The MLP's intermediates: the dense gated MLP's gate, up and activation, or the MoE's.
pub(crate) enum MlpSaved {
    Dense { g: Tensor, u: Tensor, h: Tensor },
    Moe(moe::MoeSaved),
}

/// `rmsnorm(x)` with `w` when there is such a norm, and what its backward needs; `x` itself otherwise.
fn maybe_norm(x: Tensor, w: Option<&Tensor>, offset: f64, eps: f64) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    match w {
        Some(w) => {
            let (y, rstd) = rmsnorm::forward(&x, w, offset, eps)?;
            Ok((y, Some((x, rstd))))
        }
        None => Ok((x, None)),
    }
}

fn maybe_norm_backward(dy: Tensor, w: Option<&Tensor>, offset: f64, saved: &Option<(Tensor, Tensor)>) -> Result<Tensor> {
    match (w, saved) {
        (Some(w), Some((x, rstd))) => Ok(rmsnorm::backward(&dy, x, w, offset, rstd)?),
        _ => Ok(dy),
    }
}

impl Model {
    pub(super) fn project(
        &self,
        li: usize,
        t: Target,
        x: &Tensor,
        adapter: Option<&Adapter>,
        dropout: Option<StepCtx>,
        saved: &mut [Option<LoraSaved>; 7],
    ) -> Result<Tensor> {
        let frozen = self.layers[li].proj[t.index()].as_ref().expect("LoRA targets and projections exist together (checked at adapter load)");
        let lora = match adapter.and_then(|a| a.layers[li][t.index()].as_ref().map(|f| (a, f))) {
            Some((a, factors)) => {
                let dropout = dropout.map(|ctx| (Model::dropout_key(ctx, li, t), ctx.dropout));
                Some(LoraApply { factors, scale: a.spec.scale(), dropout })
            }
            None => None,
        };
        let (y, s) = linear::forward(x, frozen, lora)?;
        saved[t.index()] = s;
        Ok(y)
    }

    /// `x`: `[B, T, H]`. Returns the layer output and what backward needs.
    pub(crate) fn layer_forward(
        &self,
        li: usize,
        x: &Tensor,
        inp: &Inputs,
        adapter: Option<&Adapter>,
        dropout: Option<StepCtx>,
    ) -> Result<(Tensor, LayerCache)> {
        let cfg = &self.cfg;
        let lw = &self.layers[li];
        let (b, t, d) = (inp.b, inp.t, cfg.head_dim);
        let mut lora: [Option<LoraSaved>; 7] = Default::default();
        let (n1, rstd1) = rmsnorm::forward(x, &lw.input_norm, cfg.norm_weight_offset, cfg.rms_norm_eps)?;
        let n1 = n1.flatten_to(1)?;
        let norms = lw.qk_norm.as_ref();
        let (q, q_norm) = qk_heads(&self.project(li, Target::Q, &n1, adapter, dropout, &mut lora)?, norms.map(|n| &n.0), cfg, &inp.rope, cfg.num_heads)?;
        let (k, k_norm) = qk_heads(&self.project(li, Target::K, &n1, adapter, dropout, &mut lora)?, norms.map(|n| &n.1), cfg, &inp.rope, cfg.num_kv_heads)?;
        let v = self.project(li, Target::V, &n1, adapter, dropout, &mut lora)?;
        let v = v.reshape((b, t, cfg.num_kv_heads, d))?.transpose(1, 2)?.contiguous()?;
        let (o, lse) = attention::forward(&q, &k, &v, &inp.mask, &self.attn_opts(li))?;
        let o2 = o.transpose(1, 2)?.reshape((b * t, cfg.num_heads * d))?;
        let attn_out = self.project(li, Target::O, &o2, adapter, dropout, &mut lora)?.reshape(x.shape())?;
        let (attn_out, attn_out_norm) = maybe_norm(attn_out, lw.attn_out_norm.as_ref(), cfg.norm_weight_offset, cfg.rms_norm_eps)?;
        let (x1, n2, rstd2) = rmsnorm::add_forward(x, &attn_out, &lw.post_norm, cfg.norm_weight_offset, cfg.rms_norm_eps)?;
        let n2 = n2.flatten_to(1)?;
        let (mlp_out, mlp) = self.mlp_forward(li, &n2, adapter, dropout, &mut lora)?;
        let (mlp_out, mlp_out_norm) = maybe_norm(mlp_out.reshape(x.shape())?, lw.mlp_out_norm.as_ref(), cfg.norm_weight_offset, cfg.rms_norm_eps)?;
        let y = x1.add(&mlp_out)?;
        let cache = LayerCache { x: x.clone(), rstd1, n1, q_norm, k_norm, q, k, v, o, lse, o2, x1, rstd2, n2, mlp, attn_out_norm, mlp_out_norm, lora };
        Ok((y, cache))
    }

    /// The MLP of layer `li` on `n2` (`[N, H]`): the dense gated MLP (with its LoRA) or Mixtral's experts.
    pub(super) fn mlp_forward(
        &self,
        li: usize,
        n2: &Tensor,
        adapter: Option<&Adapter>,
        dropout: Option<StepCtx>,
        lora: &mut [Option<LoraSaved>; 7],
    ) -> Result<(Tensor, MlpSaved)> {
        let cfg = &self.cfg;
        if let (Some(w), Some(m)) = (&self.layers[li].moe, cfg.moe) {
            let (y, saved) = moe::forward(n2, w, m.top_k, cfg.activation, self.moe_lora(li, adapter, dropout))?;
            return Ok((y, MlpSaved::Moe(saved)));
        }
        let g = self.project(li, Target::Gate, n2, adapter, dropout, lora)?;
        let u = self.project(li, Target::Up, n2, adapter, dropout, lora)?;
        let h = activation::forward(&g, &u, cfg.activation)?;
        let y = self.project(li, Target::Down, &h, adapter, dropout, lora)?;
        Ok((y, MlpSaved::Dense { g, u, h }))
    }

    /// The LoRA of layer `li`'s router and experts, if the adapter has any.
    fn moe_lora<'a>(&self, li: usize, adapter: Option<&'a Adapter>, dropout: Option<StepCtx>) -> Option<moe::MoeLora<'a>> {
        let a = adapter?;
        let router = a.layers[li][Target::Router.index()].as_ref();
        let experts = a.experts.get(li).map_or(&[][..], |e| &e[..]);
        if router.is_none() && experts.is_empty() {
            return None;
        }
        let dropout = dropout.map(|ctx| (Model::dropout_key(ctx, li, Target::Router), ctx.dropout));
        Some(moe::MoeLora { router, experts, scale: a.spec.scale(), dropout })
    }

    /// Backward through projection `t`: returns its input gradient, adding LoRA gradients into `grads`.
    fn project_backward(&self, li: usize, t: Target, dy: &Tensor, c: &LayerCache, adapter: &Adapter, grads: &mut Grads) -> Result<Tensor> {
        let frozen = self.layers[li].proj[t.index()].as_ref().expect("backward only through projections the forward used");
        let x = match (t, &c.mlp) {
            (Target::Q | Target::K | Target::V, _) => &c.n1,
            (Target::O, _) => &c.o2,
            (Target::Gate | Target::Up, _) => &c.n2,
            (Target::Down, MlpSaved::Dense { h, .. }) => h,
            (Target::Down, MlpSaved::Moe(_)) | (Target::Router | Target::W1 | Target::W2 | Target::W3, _) => {
                unreachable!("a MoE layer's router and experts have their own backward")
            }
        };
        let lora = match (&adapter.layers[li][t.index()], &c.lora[t.index()]) {
            (Some(f), Some(saved)) => Some((f, adapter.spec.scale(), saved)),
            _ => None,
        };
        let (dx, g) = linear::backward(dy, x, frozen, lora)?;
        if let Some(g) = g {
            grads.accumulate(li, t, g)?;
        }
        Ok(dx)
    }

    /// `dy`: gradient of the layer output `[B, T, H]`. Returns the gradient of the layer input.
    pub(crate) fn layer_backward(&self, li: usize, dy: &Tensor, c: &LayerCache, inp: &Inputs, adapter: &Adapter, grads: &mut Grads) -> Result<Tensor> {
        let cfg = &self.cfg;
        let lw = &self.layers[li];
        let (b, t, d) = (inp.b, inp.t, cfg.head_dim);
        let off = cfg.norm_weight_offset;
        let dy2 = maybe_norm_backward(dy.clone(), lw.mlp_out_norm.as_ref(), off, &c.mlp_out_norm)?.flatten_to(1)?;
        // MLP branch.
        let dn2 = match &c.mlp {
            MlpSaved::Dense { g, u, .. } => {
                let dh = self.project_backward(li, Target::Down, &dy2, c, adapter, grads)?;
                let (dg, du) = activation::backward(&dh, g, u, cfg.activation)?;
                self.project_backward(li, Target::Gate, &dg, c, adapter, grads)?
                    .add(&self.project_backward(li, Target::Up, &du, c, adapter, grads)?)?
            }
            MlpSaved::Moe(saved) => {
                let w = lw.moe.as_ref().expect("a MoE cache comes from a MoE layer");
                let (dn2, g) = moe::backward(&dy2, &c.n2, w, saved, cfg.activation, self.moe_lora(li, Some(adapter), None))?;
                if let Some(g) = g.router {
                    grads.accumulate(li, Target::Router, g)?;
                }
                for (e, slot, g) in g.experts {
                    grads.accumulate_expert(li, e, slot, g)?;
                }
                dn2
            }
        };
        let dx1 = rmsnorm::backward_add(&dn2.reshape(dy.shape())?, &c.x1, &lw.post_norm, cfg.norm_weight_offset, &c.rstd2, dy)?;
        // Attention branch.
        let dattn = maybe_norm_backward(dx1.clone(), lw.attn_out_norm.as_ref(), off, &c.attn_out_norm)?;
        let do2 = self.project_backward(li, Target::O, &dattn.flatten_to(1)?, c, adapter, grads)?;
        let do_ = do2.reshape((b, t, cfg.num_heads, d))?.transpose(1, 2)?.contiguous()?;
        let (dq, dk, dv) = attention::backward(&do_, &c.q, &c.k, &c.v, &c.o, &c.lse, &inp.mask, &self.attn_opts(li))?;
        let norms = lw.qk_norm.as_ref();
        let dq = qk_heads_backward(&dq, norms.map(|n| &n.0).zip(c.q_norm.as_ref()), cfg, &inp.rope)?;
        let dk = qk_heads_backward(&dk, norms.map(|n| &n.1).zip(c.k_norm.as_ref()), cfg, &inp.rope)?;
        let dv = dv.transpose(1, 2)?.reshape((b * t, ()))?;
        let mut dn1 = self.project_backward(li, Target::Q, &dq, c, adapter, grads)?;
        dn1 = dn1.add(&self.project_backward(li, Target::K, &dk, c, adapter, grads)?)?;
        dn1 = dn1.add(&self.project_backward(li, Target::V, &dv, c, adapter, grads)?)?;
        let dx = rmsnorm::backward_add(&dn1.reshape(dy.shape())?, &c.x, &lw.input_norm, cfg.norm_weight_offset, &c.rstd1, &dx1)?;
        Ok(dx)
    }
}
