//! Inference with a key/value cache, for generation: the prompt runs once (prefill), then one token per step
//! attends to everything cached. Rows may be left-padded to batch prompts of different lengths: padding keys are
//! masked and each row's positions count only its real tokens, as transformers does with an attention mask.

use super::layer::qk_heads;
use super::Model;
use crate::lora::{Adapter, Target};
use crate::ops::linear::LoraSaved;
use crate::ops::rope::RopeTables;
use crate::ops::{rmsnorm, softcap};
use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};

/// Keys and values of every layer, `[B, Hkv, T, d]`, and which cached positions are real tokens.
pub struct KvCache {
    k: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    /// `[B][T]`: false for left padding.
    key_valid: Vec<Vec<bool>>,
    /// `[B][T]`: each cached key's position (0 for padding), which sliding windows count in.
    key_pos: Vec<Vec<u32>>,
    /// The position the next token of each row takes.
    next_pos: Vec<u32>,
}

impl KvCache {
    pub fn new(model: &Model, batch: usize) -> Self {
        let n = model.layers.len();
        Self { k: vec![None; n], v: vec![None; n], key_valid: vec![Vec::new(); batch], key_pos: vec![Vec::new(); batch], next_pos: vec![0; batch] }
    }

    pub fn len(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cache whose row `i` is a copy of row `rows[i]` of this one: several continuations then run against one
    /// prefix that was computed once.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        let pick = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
            match t {
                Some(t) => {
                    let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), t.device())?;
                    Ok(Some(t.index_select(&idx, 0)?))
                }
                None => Ok(None),
            }
        };
        ensure!(rows.iter().all(|&r| r < self.next_pos.len()), "select_rows: row out of range");
        Ok(Self {
            k: self.k.iter().map(pick).collect::<Result<_>>()?,
            v: self.v.iter().map(pick).collect::<Result<_>>()?,
            key_valid: rows.iter().map(|&r| self.key_valid[r].clone()).collect(),
            key_pos: rows.iter().map(|&r| self.key_pos[r].clone()).collect(),
            next_pos: rows.iter().map(|&r| self.next_pos[r]).collect(),
        })
    }
}

impl Model {
    /// Runs `ids` (`[B][t]`, the same t for every row; `valid` false marks left padding) after what `cache`
    /// holds, appends their keys and values, and returns the f32 logits of each row's last token, `[B, V]`.
    pub fn decode(&self, ids: &[Vec<u32>], valid: &[Vec<bool>], cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Tensor> {
        let x = self.decode_layers(ids, valid, cache, adapter)?;
        let last = x.narrow(1, x.dim(1)? - 1, 1)?;
        let (h, _) = self.final_hidden(&last)?;
        self.head_logits(&h)
    }

    /// As [`Model::decode`], but returns the final-norm hidden state of every new token, `[B·t, H]` (row-major
    /// by row, then token), for scoring several tokens per row against [`Model::head`].
    pub fn decode_hidden(&self, ids: &[Vec<u32>], valid: &[Vec<bool>], cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Tensor> {
        let x = self.decode_layers(ids, valid, cache, adapter)?;
        Ok(self.final_hidden(&x)?.0)
    }

    /// The decoder layers over `ids` after what `cache` holds: the last layer's output `[B, t, H]`.
    fn decode_layers(&self, ids: &[Vec<u32>], valid: &[Vec<bool>], cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Tensor> {
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        ensure!(b == cache.next_pos.len() && t > 0 && ids.iter().zip(valid).all(|(r, v)| r.len() == t && v.len() == t), "decode: ragged input");
        let mut positions = Vec::with_capacity(b);
        for (row, v) in valid.iter().enumerate() {
            let mut p = Vec::with_capacity(t);
            for &real in v {
                // Padding takes position 0; it is never attended to.
                p.push(if real { cache.next_pos[row] } else { 0 });
                if real {
                    cache.next_pos[row] += 1;
                }
            }
            cache.key_pos[row].extend(&p);
            positions.push(p);
            cache.key_valid[row].extend(v);
        }
        let cfg = &self.cfg;
        let rope = self.rope_tables(&positions)?;
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        let mut x = self.embed_rows(ids)?;
        for li in 0..self.layers.len() {
            let window = cfg.layer_window(li);
            if !masks.iter().any(|(w, _)| *w == window) {
                masks.push((window, self.decode_mask(cache, t, window)?));
            }
            let mask = &masks.iter().find(|(w, _)| *w == window).expect("built above").1;
            x = self.decode_layer(li, &x, &rope, mask, cache, adapter)?;
        }
        Ok(x)
    }

    /// Additive mask `[B, 1, t, T]`: query i (the i-th new token) sees cached keys up to its own place, and no
    /// padding — except that every query sees its own key, so padding rows stay finite (a fully masked row
    /// would turn into NaN and reach real rows through 0 × NaN). A sliding window counts positions, not cache
    /// slots: between a row's real tokens that is the index distance transformers counts (left padding shifts
    /// query and keys alike), and padding appended after a row finished cannot shrink its window.
    fn decode_mask(&self, cache: &KvCache, t: usize, window: Option<usize>) -> Result<Tensor> {
        let total = cache.len();
        let past = total - t;
        let mut m = Vec::with_capacity(cache.key_valid.len() * t * total);
        for (row, pos) in cache.key_valid.iter().zip(&cache.key_pos) {
            for i in 0..t {
                let q = past + i;
                let in_window = |j: usize| window.is_none_or(|w| pos[q].saturating_sub(pos[j]) < w as u32);
                m.extend(row.iter().enumerate().map(|(j, &ok)| if (ok && j <= q && in_window(j)) || j == q { 0f32 } else { f32::NEG_INFINITY }));
            }
        }
        Ok(Tensor::from_vec(m, (cache.key_valid.len(), 1, t, total), &self.device)?)
    }

    fn decode_layer(&self, li: usize, x: &Tensor, rope: &RopeTables, mask: &Tensor, cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Tensor> {
        let cfg = &self.cfg;
        let lw = &self.layers[li];
        let (b, t, _) = x.dims3()?;
        let d = cfg.head_dim;
        let mut unused: [Option<LoraSaved>; 7] = Default::default();
        let (n1, _) = rmsnorm::forward(x, &lw.input_norm, cfg.norm_weight_offset, cfg.rms_norm_eps)?;
        let n1 = n1.flatten_to(1)?;
        let q = qk_heads(&self.project(li, Target::Q, &n1, adapter, None, &mut unused)?, lw.qk_norm.as_ref().map(|n| &n.0), cfg, rope, cfg.num_heads)?.0;
        let k = qk_heads(&self.project(li, Target::K, &n1, adapter, None, &mut unused)?, lw.qk_norm.as_ref().map(|n| &n.1), cfg, rope, cfg.num_kv_heads)?.0;
        let v = self.project(li, Target::V, &n1, adapter, None, &mut unused)?.reshape((b, t, cfg.num_kv_heads, d))?.transpose(1, 2)?.contiguous()?;
        let k = match cache.k[li].take() {
            Some(past) => Tensor::cat(&[&past, &k], 2)?,
            None => k,
        };
        let v = match cache.v[li].take() {
            Some(past) => Tensor::cat(&[&past, &v], 2)?,
            None => v,
        };
        // Grouped-query attention: each key/value head serves num_heads / num_kv_heads query heads.
        let group = cfg.num_heads / cfg.num_kv_heads;
        let total = k.dim(2)?;
        let qg = q.reshape((b, cfg.num_kv_heads, group * t, d))?.to_dtype(DType::F32)?;
        let scores = (qg.matmul(&k.to_dtype(DType::F32)?.t()?)? * cfg.attn_scale)?.reshape((b, cfg.num_heads, t, total))?;
        let scores = softcap::maybe(scores, cfg.attn_softcap)?;
        let p = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?;
        let o = p.reshape((b, cfg.num_kv_heads, group * t, total))?.matmul(&v.to_dtype(DType::F32)?)?.reshape((b, cfg.num_heads, t, d))?;
        cache.k[li] = Some(k);
        cache.v[li] = Some(v);
        let o2 = o.to_dtype(self.dtype)?.transpose(1, 2)?.reshape((b * t, cfg.num_heads * d))?;
        let attn_out = self.project(li, Target::O, &o2, adapter, None, &mut unused)?.reshape(x.shape())?;
        let attn_out = out_norm(attn_out, lw.attn_out_norm.as_ref(), cfg)?;
        let (x1, n2, _) = rmsnorm::add_forward(x, &attn_out, &lw.post_norm, cfg.norm_weight_offset, cfg.rms_norm_eps)?;
        let n2 = n2.flatten_to(1)?;
        let mlp_out = self.mlp_forward(li, &n2, adapter, None, &mut unused)?.0.reshape(x.shape())?;
        Ok(x1.add(&out_norm(mlp_out, lw.mlp_out_norm.as_ref(), cfg)?)?)
    }
}

/// Gemma-2's norm of a branch output, where the family has one.
fn out_norm(x: Tensor, w: Option<&Tensor>, cfg: &crate::config::ModelConfig) -> Result<Tensor> {
    match w {
        Some(w) => Ok(rmsnorm::forward(&x, w, cfg.norm_weight_offset, cfg.rms_norm_eps)?.0),
        None => Ok(x),
    }
}
