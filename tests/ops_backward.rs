//! Every op's explicit backward against Candle autograd over composite ops (f32, CPU).
//!
//! Each check draws a random upstream gradient `R`, takes autograd's gradient of `Σ forward(x) ⊙ R` as the
//! reference and compares it with the op's backward given `dy = R`. Tolerance: 1e-4 of the largest reference
//! entry plus 1e-6 absolute — f32 rounding of two differently ordered computations, nothing looser.

mod common;

use candle_core::{DType, Device, Tensor, Var, D};
use common::{assert_close, randn};
use trainer::config::Activation;
use trainer::ops::linear::{Frozen, LoraApply, LoraFactors};
use trainer::ops::{activation, attention, cross_entropy, linear, rmsnorm, rope, softcap};
use trainer::ops::attention::{AttnMask, AttnOpts};

const REL: f32 = 1e-4;
const ABS: f32 = 1e-6;

fn weighted_sum(y: &Tensor, r: &Tensor) -> Tensor {
    y.mul(r).unwrap().sum_all().unwrap()
}

#[test]
fn rmsnorm_backward_matches_autograd() {
    for offset in [0.0, 1.0] {
        let x = Var::from_tensor(&randn(1, &[3, 5, 16], 1.0)).unwrap();
        let w = randn(2, &[16], 0.3);
        let r = randn(3, &[3, 5, 16], 1.0);
        // Independent composite: x / sqrt(mean(x²) + eps) · (w + offset).
        let y_ref = x
            .as_tensor()
            .broadcast_div(&(x.as_tensor().sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&(&w + offset).unwrap())
            .unwrap();
        let grads = weighted_sum(&y_ref, &r).backward().unwrap();
        let (y, rstd) = rmsnorm::forward(x.as_tensor(), &w, offset, 1e-5).unwrap();
        assert_close("rmsnorm forward", &y, &y_ref, REL, ABS);
        let dx = rmsnorm::backward(&r, x.as_tensor(), &w, offset, &rstd).unwrap();
        assert_close("rmsnorm dx", &dx, grads.get(&x).unwrap(), REL, ABS);
    }
}

#[test]
fn rope_backward_matches_autograd() {
    let positions = vec![vec![0u32, 1, 2, 3, 4, 5], vec![0, 1, 2, 0, 1, 2]];
    let tables = rope::RopeTables::new(&positions, 8, 10000.0, DType::F32, &Device::Cpu).unwrap();
    let x = Var::from_tensor(&randn(4, &[2, 3, 6, 8], 1.0)).unwrap();
    let r = randn(5, &[2, 3, 6, 8], 1.0);
    let y = rope::forward(x.as_tensor(), &tables).unwrap();
    let grads = weighted_sum(&y, &r).backward().unwrap();
    let dx = rope::backward(&r, &tables).unwrap();
    assert_close("rope dx", &dx, grads.get(&x).unwrap(), REL, ABS);
    // Position 0 is the identity; the rotation keeps norms.
    let y0 = y.narrow(2, 0, 1).unwrap();
    assert_close("rope at position 0", &y0, &x.as_tensor().narrow(2, 0, 1).unwrap(), 0.0, 1e-6);
    let norms = |t: &Tensor| t.sqr().unwrap().sum_keepdim(D::Minus1).unwrap();
    assert_close("rope keeps norms", &norms(&y), &norms(x.as_tensor()), 1e-5, 1e-5);
}

fn silu_ref(g: &Tensor) -> Tensor {
    g.div(&(g.neg().unwrap().exp().unwrap() + 1.0).unwrap()).unwrap()
}

fn gelu_tanh_ref(g: &Tensor) -> Tensor {
    let inner = ((g.powf(3.0).unwrap() * 0.044715).unwrap() + g).unwrap() * (2.0f64 / std::f64::consts::PI).sqrt();
    ((inner.unwrap().tanh().unwrap() + 1.0).unwrap() * 0.5).unwrap().mul(g).unwrap()
}

fn gelu_erf_ref(g: &Tensor) -> Tensor {
    (((g * std::f64::consts::FRAC_1_SQRT_2).unwrap().erf().unwrap() + 1.0).unwrap() * 0.5).unwrap().mul(g).unwrap()
}

#[test]
fn gated_activation_backward_matches_autograd() {
    for (act, reference) in [
        (Activation::Silu, silu_ref as fn(&Tensor) -> Tensor),
        (Activation::GeluTanh, gelu_tanh_ref),
        (Activation::Gelu, gelu_erf_ref),
    ] {
        let g = Var::from_tensor(&randn(6, &[7, 12], 2.0)).unwrap();
        let u = Var::from_tensor(&randn(7, &[7, 12], 1.0)).unwrap();
        let r = randn(8, &[7, 12], 1.0);
        let h_ref = reference(g.as_tensor()).mul(u.as_tensor()).unwrap();
        let grads = weighted_sum(&h_ref, &r).backward().unwrap();
        let h = activation::forward(g.as_tensor(), u.as_tensor(), act).unwrap();
        assert_close(&format!("{act:?} forward"), &h, &h_ref, REL, ABS);
        let (dg, du) = activation::backward(&r, g.as_tensor(), u.as_tensor(), act).unwrap();
        assert_close(&format!("{act:?} dg"), &dg, grads.get(&g).unwrap(), REL, ABS);
        assert_close(&format!("{act:?} du"), &du, grads.get(&u).unwrap(), REL, ABS);
    }
}

#[test]
fn lora_linear_backward_matches_autograd() {
    for (with_bias, with_mask) in [(false, false), (true, true)] {
        let x = Var::from_tensor(&randn(9, &[10, 12], 1.0)).unwrap();
        let frozen = Frozen { w: randn(10, &[6, 12], 0.3), b: with_bias.then(|| randn(11, &[6], 0.1)) };
        let a = Var::from_tensor(&randn(12, &[4, 12], 0.3)).unwrap();
        let b = Var::from_tensor(&randn(13, &[6, 4], 0.3)).unwrap();
        let key = trainer::ops::dropout::DropoutKey { seed: 1, step: 2, micro: 0, layer: 3, module: 4 };
        let mask = with_mask.then(|| trainer::ops::dropout::mask(key, 0.25, 10, 12, &Device::Cpu).unwrap());
        let r = randn(14, &[10, 6], 1.0);
        let scale = 2.5;
        // Composite reference: x Wᵀ + b + s · ((x ⊙ mask) Aᵀ) Bᵀ.
        let xd = match &mask {
            Some(m) => x.as_tensor().mul(m).unwrap(),
            None => x.as_tensor().clone(),
        };
        let mut y_ref = x.as_tensor().matmul(&frozen.w.t().unwrap()).unwrap();
        if let Some(bias) = &frozen.b {
            y_ref = y_ref.broadcast_add(bias).unwrap();
        }
        let lora = (xd.matmul(&a.as_tensor().t().unwrap()).unwrap().matmul(&b.as_tensor().t().unwrap()).unwrap() * scale).unwrap();
        let y_ref = y_ref.add(&lora).unwrap();
        let grads = weighted_sum(&y_ref, &r).backward().unwrap();

        let factors = LoraFactors { a: a.as_tensor().clone(), b: b.as_tensor().clone() };
        let (y, saved) = linear::forward(x.as_tensor(), &frozen, Some(LoraApply { factors: &factors, scale, dropout: with_mask.then_some((key, 0.25)) })).unwrap();
        assert_close("lora forward", &y, &y_ref, REL, ABS);
        let saved = saved.unwrap();
        let (dx, g) = linear::backward(&r, x.as_tensor(), &frozen, Some((&factors, scale, &saved))).unwrap();
        let g = g.unwrap();
        assert_close("lora dx", &dx, grads.get(&x).unwrap(), REL, ABS);
        assert_close("lora dA", &g.da, grads.get(&a).unwrap(), REL, ABS);
        assert_close("lora dB", &g.db, grads.get(&b).unwrap(), REL, ABS);
    }
}

#[test]
fn dropout_masks_are_keyed_and_scaled() {
    use trainer::ops::dropout::{mask, DropoutKey};
    let key = DropoutKey { seed: 7, step: 1, micro: 0, layer: 2, module: 0 };
    let m1 = mask(key, 0.3, 50, 40, &Device::Cpu).unwrap();
    let m2 = mask(key, 0.3, 50, 40, &Device::Cpu).unwrap();
    assert_close("same key, same mask", &m1, &m2, 0.0, 0.0);
    let other = mask(DropoutKey { module: 1, ..key }, 0.3, 50, 40, &Device::Cpu).unwrap();
    assert!(common::max_diff(&m1, &other).0 > 0.0, "another module must draw another mask");
    let v = m1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let dropped = v.iter().filter(|&&x| x == 0.0).count() as f64 / v.len() as f64;
    assert!((dropped - 0.3).abs() < 0.05, "dropped fraction {dropped}");
    assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.7).abs() < 1e-6));
}

/// Attention written the plain way: repeat KV heads by concatenation, softmax over masked (and, with a cap,
/// `cap·tanh(s/cap)`-capped) scores.
fn attention_ref(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, softcap: Option<f64>) -> Tensor {
    let n_rep = q.dim(1).unwrap() / k.dim(1).unwrap();
    let rep = |t: &Tensor| {
        let heads: Vec<Tensor> = (0..t.dim(1).unwrap()).flat_map(|h| std::iter::repeat_n(t.narrow(1, h, 1).unwrap(), n_rep)).collect();
        Tensor::cat(&heads, 1).unwrap()
    };
    let s = (q.matmul(&rep(k).t().unwrap()).unwrap() * scale).unwrap();
    let s = match softcap {
        Some(cap) => ((s / cap).unwrap().tanh().unwrap() * cap).unwrap(),
        None => s,
    };
    candle_nn::ops::softmax(&s.broadcast_add(mask).unwrap(), D::Minus1).unwrap().matmul(&rep(v)).unwrap()
}

/// transformers' masks written out independently: key `j` visible to query `i` iff `j ≤ i`, the key is real and,
/// with a window, `j > i − window` (masking_utils' `sliding_window_overlay`).
fn mask_ref(valid: &[Vec<bool>], window: Option<usize>) -> Tensor {
    let t = valid[0].len();
    let mut m = Vec::new();
    for row in valid {
        for i in 0..t as i64 {
            for j in 0..t as i64 {
                let visible = j <= i && row[j as usize] && window.is_none_or(|w| j > i - w as i64);
                m.push(if visible { 0f32 } else { f32::MIN });
            }
        }
    }
    Tensor::from_vec(m, (valid.len(), 1, t, t), &Device::Cpu).unwrap()
}

type AttnFwd = fn(&Tensor, &Tensor, &Tensor, &AttnMask, &AttnOpts) -> candle_core::Result<(Tensor, Tensor)>;
type AttnBwd = fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor, &Tensor, &AttnMask, &AttnOpts) -> candle_core::Result<(Tensor, Tensor, Tensor)>;

#[test]
fn attention_backward_matches_autograd_with_gqa_padding_softcap_and_window() {
    // Sequence 0 is full length, sequence 1 has 2 padding positions; 4 query heads share 2 KV heads.
    let valid = vec![vec![true; 6], vec![true, true, true, true, false, false]];
    let mask = AttnMask::new(&valid, None, &Device::Cpu);
    let scale = 1.0 / 8f64.sqrt();
    // Gemma-2's pieces alone and together: a cap of 1 binds hard on scores of a few units; window 3 < 6 tokens.
    let variants = [
        AttnOpts::scaled(scale),
        AttnOpts { softcap: Some(1.0), ..AttnOpts::scaled(scale) },
        AttnOpts { window: Some(3), ..AttnOpts::scaled(scale) },
        AttnOpts { softcap: Some(1.0), window: Some(2), scale: 0.7 },
    ];
    for ((hq, hkv), opts) in [(4, 2), (4, 1), (2, 2)].into_iter().flat_map(|h| variants.iter().map(move |o| (h, o))) {
        let (qv, kv, vv) = (
            Var::from_tensor(&randn(20, &[2, hq, 6, 8], 1.0)).unwrap(),
            Var::from_tensor(&randn(21, &[2, hkv, 6, 8], 1.0)).unwrap(),
            Var::from_tensor(&randn(22, &[2, hkv, 6, 8], 1.0)).unwrap(),
        );
        let (q, k, v) = (&qv, &kv, &vv);
        let dense = mask_ref(&valid, opts.window);
        // A query that sees no key at all (a padding query whose window holds only padding) gets transformers'
        // uniform row forward, but its lse cannot carry that into the backward (f32::MIN + ln n rounds to
        // f32::MIN). No loss ever reads such a row — in the model its upstream gradient is exactly zero — so it
        // gets a zero one here too; every other row keeps a random one.
        let sees_a_key = dense.max_keepdim(D::Minus1).unwrap().ge(0f32).unwrap().to_dtype(DType::F32).unwrap();
        let r = randn(23, &[2, hq, 6, 8], 1.0).broadcast_mul(&sees_a_key).unwrap();
        let o_ref = attention_ref(q.as_tensor(), k.as_tensor(), v.as_tensor(), &dense, opts.scale, opts.softcap);
        let grads = weighted_sum(&o_ref, &r).backward().unwrap();
        // Both the fused CPU kernels and the Candle-op reference path.
        for (path, fwd, bwd) in [
            ("fused", attention::forward as AttnFwd, attention::backward as AttnBwd),
            ("reference", attention::forward_reference, attention::backward_reference),
        ] {
            // Detached inputs: tracked ones would route the fused entry points to the reference path.
            let (q, k, v) = (q.as_tensor().detach(), k.as_tensor().detach(), v.as_tensor().detach());
            let (o, lse) = fwd(&q, &k, &v, &mask, opts).unwrap();
            let what = format!("{path} attention {opts:?} heads {hq}/{hkv}");
            assert_close(&format!("{what} forward"), &o, &o_ref, REL, ABS);
            let (dq, dk, dv) = bwd(&r, &q, &k, &v, &o, &lse, &mask, opts).unwrap();
            assert_close(&format!("{what} dq"), &dq, grads.get(&qv).unwrap(), REL, ABS);
            assert_close(&format!("{what} dk"), &dk, grads.get(&kv).unwrap(), REL, ABS);
            assert_close(&format!("{what} dv"), &dv, grads.get(&vv).unwrap(), REL, ABS);
        }
    }
}

#[test]
fn attention_is_causal_and_ignores_padding_keys() {
    let valid = vec![vec![true, true, true, false]];
    let mask = AttnMask::new(&valid, None, &Device::Cpu);
    let q = randn(30, &[1, 1, 4, 8], 1.0);
    let k = randn(31, &[1, 1, 4, 8], 1.0);
    let v = randn(32, &[1, 1, 4, 8], 1.0);
    let opts = AttnOpts::scaled(0.3);
    let (o, _) = attention::forward(&q, &k, &v, &mask, &opts).unwrap();
    // Changing a later or a padding key/value must not change earlier outputs.
    let v2 = v.slice_assign(&[0..1, 0..1, 3..4, 0..8], &randn(33, &[1, 1, 1, 8], 5.0)).unwrap();
    let (o2, _) = attention::forward(&q, &k, &v2, &mask, &opts).unwrap();
    assert_close("padding key invisible", &o2, &o, 0.0, 0.0);
    let v3 = v.slice_assign(&[0..1, 0..1, 2..3, 0..8], &randn(34, &[1, 1, 1, 8], 5.0)).unwrap();
    let (o3, _) = attention::forward(&q, &k, &v3, &mask, &opts).unwrap();
    assert_close("future key invisible", &o3.narrow(2, 0, 2).unwrap(), &o.narrow(2, 0, 2).unwrap(), 0.0, 0.0);
    assert!(common::max_diff(&o3.narrow(2, 2, 1).unwrap(), &o.narrow(2, 2, 1).unwrap()).0 > 0.0);
}

#[test]
fn sliding_window_sees_exactly_the_last_window_keys() {
    // Window 2: query 3 sees keys 2 and 3 (itself and one before), as transformers' `kv_idx > q_idx − window`.
    let valid = vec![vec![true; 5]];
    let mask = AttnMask::new(&valid, None, &Device::Cpu);
    let opts = AttnOpts { window: Some(2), ..AttnOpts::scaled(0.3) };
    let (q, k, v) = (randn(35, &[1, 1, 5, 8], 1.0), randn(36, &[1, 1, 5, 8], 1.0), randn(37, &[1, 1, 5, 8], 1.0));
    let (o, _) = attention::forward(&q, &k, &v, &mask, &opts).unwrap();
    let row = |o: &Tensor| o.narrow(2, 3, 1).unwrap();
    for (key, seen) in [(0, false), (1, false), (2, true), (3, true)] {
        let v2 = v.slice_assign(&[0..1, 0..1, key..key + 1, 0..8], &randn(38, &[1, 1, 1, 8], 5.0)).unwrap();
        let (o2, _) = attention::forward(&q, &k, &v2, &mask, &opts).unwrap();
        assert_eq!(common::max_diff(&row(&o2), &row(&o)).0 > 0.0, seen, "key {key} seen by query 3 with window 2");
    }
}

#[test]
fn softcap_backward_matches_autograd() {
    let x = Var::from_tensor(&randn(45, &[4, 7], 3.0)).unwrap();
    let r = randn(46, &[4, 7], 1.0);
    let y_ref = (x.as_tensor().affine(1.0 / 2.5, 0.0).unwrap().tanh().unwrap() * 2.5).unwrap();
    let grads = weighted_sum(&y_ref, &r).backward().unwrap();
    let y = softcap::forward(&x.as_tensor().detach(), 2.5).unwrap();
    assert_close("softcap forward", &y, &y_ref, REL, ABS);
    assert!(y.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 2.5, "the cap bounds the output");
    assert_close("softcap dx", &softcap::backward(&r, &y, 2.5).unwrap(), grads.get(&x).unwrap(), REL, ABS);
}

#[test]
fn cross_entropy_backward_matches_autograd() {
    for cap in [None, Some(2.0)] {
        cross_entropy_case(cap);
    }
}

fn cross_entropy_case(cap: Option<f64>) {
    let h = Var::from_tensor(&randn(40, &[9, 16], 1.0)).unwrap();
    let w = randn(41, &[11, 16], 0.5);
    let targets: Vec<Option<u32>> = vec![Some(3), None, Some(0), Some(10), None, Some(5), Some(5), Some(1), None];
    let scale = 1.0 / 6.0;
    // Composite reference: −Σ log_softmax(cap(h Wᵀ))[target] over scored rows, times scale.
    let logits = h.as_tensor().matmul(&w.t().unwrap()).unwrap();
    let logits = match cap {
        Some(c) => ((logits / c).unwrap().tanh().unwrap() * c).unwrap(),
        None => logits,
    };
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let mut terms = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if let Some(t) = t {
            terms.push(logp.get(i).unwrap().get(*t as usize).unwrap());
        }
    }
    let nll_ref = Tensor::stack(&terms, 0).unwrap().sum_all().unwrap().neg().unwrap();
    let grads = (&nll_ref * scale).unwrap().backward().unwrap();
    let (nll, dh) = cross_entropy::forward_backward(&h.as_tensor().detach(), &w, &targets, scale, cap).unwrap();
    let want = nll_ref.to_scalar::<f32>().unwrap() as f64;
    assert!((nll - want).abs() <= 1e-5 * want.abs(), "cap {cap:?}: nll {nll} vs {want}");
    assert!((cross_entropy::forward(h.as_tensor(), &w, &targets, cap).unwrap() - want).abs() <= 1e-5 * want.abs());
    assert_close(&format!("cross-entropy dh, cap {cap:?}"), &dh, grads.get(&h).unwrap(), REL, ABS);
}

/// The reference's routing: the top-`k` of each row of `probs` as a constant 0/1 mask, renormalised over the chosen.
fn top_k_weights_ref(probs: &Tensor, k: usize) -> Tensor {
    let (n, e) = probs.dims2().unwrap();
    let mut mask = vec![0f32; n * e];
    for (t, chosen) in top_k_ref(probs, k).iter().enumerate() {
        for &j in chosen {
            mask[t * e + j] = 1.0;
        }
    }
    let picked = probs.mul(&Tensor::from_vec(mask, (n, e), &Device::Cpu).unwrap()).unwrap();
    picked.broadcast_div(&picked.sum_keepdim(D::Minus1).unwrap()).unwrap()
}

/// Each row's `k` largest entries' indices, ascending.
fn top_k_ref(probs: &Tensor, k: usize) -> Vec<Vec<usize>> {
    probs
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            idx.truncate(k);
            idx.sort();
            idx
        })
        .collect()
}

/// `e` random experts and their router, for the MoE checks.
fn moe_weights_ref(e: usize, h: usize, i: usize) -> trainer::ops::moe::MoeWeights {
    use trainer::ops::moe::{Expert, MoeWeights};
    MoeWeights {
        router: randn(70, &[e, h], 0.6),
        experts: (0..e as u64).map(|j| Expert { w1: randn(71 + 3 * j, &[i, h], 0.3), w3: randn(72 + 3 * j, &[i, h], 0.3), w2: randn(73 + 3 * j, &[h, i], 0.3) }).collect(),
    }
}

#[test]
fn moe_backward_matches_autograd_through_experts_and_routing() {
    use trainer::ops::moe;
    let (n, h, i, e, k) = (11, 16, 12, 4, 2);
    let w = moe_weights_ref(e, h, i);
    let x = Var::from_tensor(&randn(80, &[n, h], 1.0)).unwrap();
    let r = randn(81, &[n, h], 1.0);
    // Independent composite, dense over all experts: the top-k choice is a constant 0/1 mask on the router's
    // softmax, renormalised, weighting every expert's SwiGLU output.
    let probs = candle_nn::ops::softmax(&x.as_tensor().matmul(&w.router.t().unwrap()).unwrap(), D::Minus1).unwrap();
    let weights = top_k_weights_ref(&probs, k);
    let mut y_ref = x.as_tensor().zeros_like().unwrap();
    for (j, ex) in w.experts.iter().enumerate() {
        let g = x.as_tensor().matmul(&ex.w1.t().unwrap()).unwrap();
        let u = x.as_tensor().matmul(&ex.w3.t().unwrap()).unwrap();
        let out = silu_ref(&g).mul(&u).unwrap().matmul(&ex.w2.t().unwrap()).unwrap();
        y_ref = (y_ref + out.broadcast_mul(&weights.narrow(1, j, 1).unwrap()).unwrap()).unwrap();
    }
    let grads = weighted_sum(&y_ref, &r).backward().unwrap();
    let (y, saved) = moe::forward(&x.as_tensor().detach(), &w, k, Activation::Silu, None).unwrap();
    assert_close("moe forward", &y, &y_ref, REL, ABS);
    let (dx, _) = moe::backward(&r, &x.as_tensor().detach(), &w, &saved, Activation::Silu, None).unwrap();
    let want = grads.get(&x).unwrap();
    assert_close("moe dx", &dx, want, REL, ABS);
    // The routing path carries real gradient: without it (weights held constant) dx is clearly different.
    let held = weights.detach();
    let mut y_held = x.as_tensor().zeros_like().unwrap();
    for (j, ex) in w.experts.iter().enumerate() {
        let g = x.as_tensor().matmul(&ex.w1.t().unwrap()).unwrap();
        let u = x.as_tensor().matmul(&ex.w3.t().unwrap()).unwrap();
        let out = silu_ref(&g).mul(&u).unwrap().matmul(&ex.w2.t().unwrap()).unwrap();
        y_held = (y_held + out.broadcast_mul(&held.narrow(1, j, 1).unwrap()).unwrap()).unwrap();
    }
    let no_routing = weighted_sum(&y_held, &r).backward().unwrap();
    assert!(common::max_diff(no_routing.get(&x).unwrap(), want).0 > 1e-2, "routing gradient is negligible: the check would be vacuous");
}

/// `x Wᵀ + s · (x Aᵀ) Bᵀ`, the LoRA linear written out for the independent references below.
fn lora_linear_ref(x: &Tensor, w: &Tensor, f: &LoraFactors, s: f64) -> Tensor {
    let base = x.matmul(&w.t().unwrap()).unwrap();
    (base + (x.matmul(&f.a.t().unwrap()).unwrap().matmul(&f.b.t().unwrap()).unwrap() * s).unwrap()).unwrap()
}

/// LoRA on Mixtral's router and on every expert's w1/w2/w3: the forward against an independent dense composite
/// (every expert on every token, weighted by the renormalised top-k softmax of the adapted router), and the
/// explicit backward's dx and every factor gradient against autograd over the forward, with and without dropout.
#[test]
fn moe_lora_backward_matches_autograd_on_router_and_every_expert() {
    use trainer::ops::dropout::DropoutKey;
    use trainer::ops::moe::{self, MoeLora};
    let (n, h, i, e, k, r, scale) = (11, 16, 12, 4, 2, 3, 1.5);
    let w = moe_weights_ref(e, h, i);
    let factor = |seed: u64, out: usize, inp: usize| (Var::from_tensor(&randn(seed, &[r, inp], 0.3)).unwrap(), Var::from_tensor(&randn(seed + 1, &[out, r], 0.3)).unwrap());
    let router_vars = factor(90, e, h);
    // Per expert: w1 (h→i), w2 (i→h), w3 (h→i), in Target::expert_index order.
    let expert_vars: Vec<[(Var, Var); 3]> = (0..e as u64).map(|j| [factor(100 + 6 * j, i, h), factor(102 + 6 * j, h, i), factor(104 + 6 * j, i, h)]).collect();
    let as_factors = |(a, b): &(Var, Var), detach: bool| {
        let t = |v: &Var| if detach { v.as_tensor().detach() } else { v.as_tensor().clone() };
        LoraFactors { a: t(a), b: t(b) }
    };
    let r_out = randn(81, &[n, h], 1.0);
    for dropout in [None, Some(0.3)] {
        let key = dropout.map(|p| (DropoutKey { seed: 5, step: 1, micro: 0, layer: 2, module: 0 }, p));
        let x = Var::from_tensor(&randn(80, &[n, h], 1.0)).unwrap();
        let build = |detach: bool| (as_factors(&router_vars, detach), expert_vars.iter().map(|fs| fs.each_ref().map(|f| Some(as_factors(f, detach)))).collect::<Vec<_>>());
        // Autograd over the forward itself (its masks, its routing).
        let (router_f, experts_f) = build(false);
        let lora = MoeLora { router: Some(&router_f), experts: &experts_f, scale, dropout: key };
        let (y, _) = moe::forward(x.as_tensor(), &w, k, Activation::Silu, Some(lora)).unwrap();
        let auto = weighted_sum(&y, &r_out).backward().unwrap();
        // The explicit backward.
        let (router_d, experts_d) = build(true);
        let lora = MoeLora { router: Some(&router_d), experts: &experts_d, scale, dropout: key };
        let x0 = x.as_tensor().detach();
        let (y0, saved) = moe::forward(&x0, &w, k, Activation::Silu, Some(lora)).unwrap();
        let (dx, grads) = moe::backward(&r_out, &x0, &w, &saved, Activation::Silu, Some(lora)).unwrap();
        let tag = if dropout.is_some() { "dropout" } else { "no dropout" };
        assert_close(&format!("moe+lora dx ({tag})"), &dx, auto.get(&x).unwrap(), REL, ABS);
        let g = grads.router.expect("the router's LoRA gets a gradient");
        assert_close(&format!("router dA ({tag})"), &g.da, auto.get(&router_vars.0).unwrap(), REL, ABS);
        assert_close(&format!("router dB ({tag})"), &g.db, auto.get(&router_vars.1).unwrap(), REL, ABS);
        assert_eq!(grads.experts.len(), 3 * e, "every expert is chosen by some token, so each of its three LoRAs gets a gradient");
        for (j, slot, g) in &grads.experts {
            let (a, b) = &expert_vars[*j][*slot];
            assert_close(&format!("expert {j} slot {slot} dA ({tag})"), &g.da, auto.get(a).unwrap(), REL, ABS);
            assert_close(&format!("expert {j} slot {slot} dB ({tag})"), &g.db, auto.get(b).unwrap(), REL, ABS);
        }
        if dropout.is_some() {
            continue;
        }
        // Independent dense reference (no dropout): the adapted router's softmax, top-k mask, renormalised.
        let xt = x.as_tensor().detach();
        let probs = candle_nn::ops::softmax(&lora_linear_ref(&xt, &w.router, &router_d, scale), D::Minus1).unwrap();
        let weights = top_k_weights_ref(&probs, k);
        let mut y_ref = xt.zeros_like().unwrap();
        for (j, ex) in w.experts.iter().enumerate() {
            let [f1, f2, f3] = experts_d[j].each_ref().map(|f| f.as_ref().unwrap());
            let hidden = silu_ref(&lora_linear_ref(&xt, &ex.w1, f1, scale)).mul(&lora_linear_ref(&xt, &ex.w3, f3, scale)).unwrap();
            let out = lora_linear_ref(&hidden, &ex.w2, f2, scale);
            y_ref = (y_ref + out.broadcast_mul(&weights.narrow(1, j, 1).unwrap()).unwrap()).unwrap();
        }
        assert_close("moe+lora forward", &y0, &y_ref, REL, ABS);
        // The router's LoRA matters to the routing itself: without it some token picks other experts.
        let plain = candle_nn::ops::softmax(&xt.matmul(&w.router.t().unwrap()).unwrap(), D::Minus1).unwrap();
        assert_ne!(top_k_ref(&plain, k), top_k_ref(&probs, k), "the router's LoRA should change some token's experts, or routing through it goes untested");
    }
}
