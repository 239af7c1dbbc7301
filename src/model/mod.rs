//! One decoder for Llama, Mistral, Gemma, Qwen2 and Qwen3: the families differ only in [`ModelConfig`] data.
//!
//! Training uses an explicit forward that keeps what backward needs and an explicit backward that produces only
//! LoRA gradients. With activation recomputation only each layer's input is kept and the layer's forward is
//! rerun (with the same dropout masks) just before its backward.

mod decode;
mod layer;

pub use decode::KvCache;

use crate::checkpoint::{Checkpoint, ModelFiles};
use crate::config::ModelConfig;
use crate::data::batch::Batch;
use crate::lora::{Adapter, Site, Target, ALL_TARGETS, LAYER_SLOTS};
use crate::ops::dropout::DropoutKey;
use crate::ops::linear::{Frozen, LoraGrads};
use crate::ops::{attention, cross_entropy, rmsnorm, rope::RopeTables};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

pub struct LayerWeights {
    pub input_norm: Tensor,
    /// The norm before the MLP (`post_attention_layernorm`; Gemma-2's `pre_feedforward_layernorm`).
    pub post_norm: Tensor,
    /// Gemma-2's norms of the attention output (`post_attention_layernorm`) and of the MLP output
    /// (`post_feedforward_layernorm`), applied before each residual add; `None` in other families.
    pub attn_out_norm: Option<Tensor>,
    pub mlp_out_norm: Option<Tensor>,
    /// Qwen3's per-head RMSNorm weights of q and k (`[head_dim]`), applied before RoPE.
    pub qk_norm: Option<(Tensor, Tensor)>,
    /// Indexed by [`Target::index`]; the MLP's three are `None` where the layer's MLP is a mixture of experts.
    pub proj: [Option<Frozen>; 7],
    /// Mixtral's experts and router, in place of the dense MLP.
    pub moe: Option<crate::ops::moe::MoeWeights>,
}

pub struct Model {
    pub cfg: ModelConfig,
    pub dtype: DType,
    pub device: Device,
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Tensor,
    /// `None` when the head is tied to the embeddings.
    pub lm_head: Option<Tensor>,
}

/// Per-step settings of a training forward/backward.
#[derive(Debug, Clone, Copy)]
pub struct StepCtx {
    pub seed: u64,
    pub step: u64,
    pub micro: u64,
    /// LoRA dropout probability; 0 disables it (evaluation always runs without).
    pub dropout: f64,
    /// Activation recomputation: keep only layer inputs between forward and backward.
    pub recompute: bool,
}

/// LoRA gradients, shaped like the adapter, accumulated over micro-batches.
pub struct Grads {
    pub layers: Vec<[Option<LoraGrads>; LAYER_SLOTS]>,
    /// Per layer, per expert, w1/w2/w3 (grown as experts receive gradients).
    pub experts: Vec<Vec<[Option<LoraGrads>; 3]>>,
}

fn add_into(slot: &mut Option<LoraGrads>, g: LoraGrads) -> Result<()> {
    *slot = Some(match slot.take() {
        Some(acc) => LoraGrads { da: acc.da.add(&g.da)?, db: acc.db.add(&g.db)? },
        None => g,
    });
    Ok(())
}

impl Grads {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| Default::default()).collect(), experts: (0..num_layers).map(|_| Vec::new()).collect() }
    }

    fn accumulate(&mut self, layer: usize, target: Target, g: LoraGrads) -> Result<()> {
        add_into(&mut self.layers[layer][target.index()], g)
    }

    fn accumulate_expert(&mut self, layer: usize, expert: usize, slot: usize, g: LoraGrads) -> Result<()> {
        let experts = &mut self.experts[layer];
        if experts.len() <= expert {
            experts.resize_with(expert + 1, Default::default);
        }
        add_into(&mut experts[expert][slot], g)
    }

    fn get(&self, site: Site) -> Option<&LoraGrads> {
        match site.expert {
            None => self.layers[site.layer][site.target.index()].as_ref(),
            Some(e) => self.experts[site.layer].get(e)?[site.target.expert_index()].as_ref(),
        }
    }

    /// Per tensor of [`Adapter::tensors`], whether it received a gradient.
    pub fn received(&self, adapter: &Adapter) -> Vec<bool> {
        adapter.sites().into_iter().flat_map(|(site, _)| [self.get(site).is_some(); 2]).collect()
    }

    /// Gradients in the order of [`Adapter::tensors`]; sites that received none (an expert no token chose) are
    /// zeros.
    pub fn tensors(&self, adapter: &Adapter) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        for (site, f) in adapter.sites() {
            match self.get(site) {
                Some(g) => out.extend([g.da.clone(), g.db.clone()]),
                None => out.extend([f.a.zeros_like()?, f.b.zeros_like()?]),
            }
        }
        Ok(out)
    }
}

/// What every layer of one micro-batch shares.
pub(crate) struct Inputs {
    pub b: usize,
    pub t: usize,
    pub rope: RopeTables,
    pub mask: attention::AttnMask,
}

impl Model {
    pub fn load(files: &ModelFiles, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = ModelConfig::from_file(&files.config)?;
        let ck = Checkpoint::open(files, dtype, device)?;
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let load = |name: &str, shape: &[usize]| ck.tensor(name, shape).with_context(|| format!("loading {}", files.dir.display()));
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let proj = ALL_TARGETS.map(|t| -> Result<Option<Frozen>> {
                if cfg.moe.is_some() && t.block() == "mlp" {
                    return Ok(None);
                }
                let (fan_in, out) = t.dims(&cfg);
                let name = format!("{p}.{}.{}", t.block(), t.hf_name());
                let has_bias = match t {
                    Target::Q | Target::K | Target::V => cfg.qkv_bias,
                    Target::O => cfg.o_bias,
                    _ => cfg.mlp_bias,
                };
                Ok(Some(Frozen {
                    w: load(&format!("{name}.weight"), &[out, fan_in])?,
                    b: if has_bias { Some(load(&format!("{name}.bias"), &[out])?) } else { None },
                }))
            });
            let [q, k, vv, o, g, u, d] = proj;
            let norm = |name: &str| load(&format!("{p}.{name}.weight"), &[h]);
            let (post_norm, attn_out_norm, mlp_out_norm) = if cfg.sandwich_norms {
                (norm("pre_feedforward_layernorm")?, Some(norm("post_attention_layernorm")?), Some(norm("post_feedforward_layernorm")?))
            } else {
                (norm("post_attention_layernorm")?, None, None)
            };
            // The Hub's (and transformers' save_pretrained's) layout: one w1/w2/w3 per expert.
            let moe = match cfg.moe {
                Some(m) => {
                    let i = cfg.intermediate_size;
                    let b = format!("{p}.block_sparse_moe");
                    let experts = (0..m.experts)
                        .map(|e| -> Result<crate::ops::moe::Expert> {
                            let w = |n: &str, shape: &[usize]| load(&format!("{b}.experts.{e}.{n}.weight"), shape);
                            Ok(crate::ops::moe::Expert { w1: w("w1", &[i, h])?, w3: w("w3", &[i, h])?, w2: w("w2", &[h, i])? })
                        })
                        .collect::<Result<_>>()?;
                    Some(crate::ops::moe::MoeWeights { router: load(&format!("{b}.gate.weight"), &[m.experts, h])?, experts })
                }
                None => None,
            };
            let qk_norm = if cfg.qk_norm {
                let d = cfg.head_dim;
                Some((load(&format!("{p}.self_attn.q_norm.weight"), &[d])?, load(&format!("{p}.self_attn.k_norm.weight"), &[d])?))
            } else {
                None
            };
            layers.push(LayerWeights {
                qk_norm,
                input_norm: norm("input_layernorm")?,
                post_norm,
                attn_out_norm,
                mlp_out_norm,
                proj: [q?, k?, vv?, o?, g?, u?, d?],
                moe,
            });
        }
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(load("lm_head.weight", &[v, h])?) };
        Ok(Self {
            embed: load("model.embed_tokens.weight", &[v, h])?,
            final_norm: load("model.norm.weight", &[h])?,
            lm_head,
            layers,
            dtype,
            device: device.clone(),
            cfg,
        })
    }

    pub(crate) fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    fn inputs(&self, batch: &Batch) -> Result<Inputs> {
        Ok(Inputs {
            b: batch.size(),
            t: batch.seq_len(),
            rope: self.rope_tables(&batch.positions)?,
            mask: attention::AttnMask::new(&batch.key_valid, batch.segments.as_deref(), &self.device),
        })
    }

    /// RoPE tables of the model's frequency scaling for `positions` `[B][T]`.
    pub(crate) fn rope_tables(&self, positions: &[Vec<u32>]) -> Result<RopeTables> {
        if let Some(limit) = self.cfg.rope_position_limit() {
            let longest = positions.iter().flatten().max().map_or(0, |&p| p as usize + 1);
            anyhow::ensure!(
                longest <= limit,
                "a sequence reaches {longest} positions, beyond max_position_embeddings = {limit} of this checkpoint's \
                 `dynamic` RoPE scaling: transformers recomputes its frequencies per call beyond that length, which \
                 is not supported; keep max_seq_len (prompt + generated tokens) at most {limit}"
            );
        }
        Ok(RopeTables::from_inv_freq(positions, &self.cfg.rope_inv_freq(), self.dtype, &self.device)?)
    }

    fn embed(&self, batch: &Batch) -> Result<Tensor> {
        self.embed_rows(&batch.ids)
    }

    /// Embeddings `[B, T, H]` of token rows of equal length.
    pub(crate) fn embed_rows(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        let (b, t) = (rows.len(), rows.first().map_or(0, Vec::len));
        let ids: Vec<u32> = rows.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(ids, b * t, &self.device)?;
        let x = self.embed.index_select(&ids, 0)?.reshape((b, t, self.cfg.hidden_size))?;
        match self.cfg.embedding_scale {
            // transformers multiplies by sqrt(hidden) cast to the activation dtype: round it the same way.
            Some(s) => Ok(x.broadcast_mul(&Tensor::new(s as f32, &self.device)?.to_dtype(self.dtype)?)?),
            None => Ok(x),
        }
    }

    pub(crate) fn final_hidden(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (y, rstd) = rmsnorm::forward(x, &self.final_norm, self.cfg.norm_weight_offset, self.cfg.rms_norm_eps)?;
        Ok((y.flatten_to(1)?, rstd))
    }

    /// The last hidden states (after the final norm), `[B*T, H]`, without dropout.
    fn hidden(&self, batch: &Batch, adapter: Option<&Adapter>) -> Result<Tensor> {
        let inp = self.inputs(batch)?;
        let mut x = self.embed(batch)?;
        for li in 0..self.layers.len() {
            x = self.layer_forward(li, &x, &inp, adapter, None)?.0;
        }
        Ok(self.final_hidden(&x)?.0)
    }

    /// The f32 logits of final hidden rows `[N, H]` (soft-capped where the family caps them).
    pub(crate) fn head_logits(&self, h: &Tensor) -> Result<Tensor> {
        let logits = crate::ops::gemm::matmul(h, &self.head().t()?)?.to_dtype(DType::F32)?;
        Ok(crate::ops::softcap::maybe(logits, self.cfg.final_softcap)?)
    }

    /// Logits `[B, T, V]` (f32), for tests and small evaluations.
    pub fn logits(&self, batch: &Batch, adapter: Option<&Adapter>) -> Result<Tensor> {
        let logits = self.head_logits(&self.hidden(batch, adapter)?)?;
        Ok(logits.reshape((batch.size(), batch.seq_len(), self.cfg.vocab_size))?)
    }

    /// Layer `li`'s attention settings.
    pub(crate) fn attn_opts(&self, li: usize) -> attention::AttnOpts {
        attention::AttnOpts { scale: self.cfg.attn_scale, softcap: self.cfg.attn_softcap, window: self.cfg.layer_window(li) }
    }

    /// Each example's summed target NLL, `[B]` (no dropout): the negative log-likelihood of its target tokens.
    pub fn example_nll(&self, batch: &Batch, adapter: Option<&Adapter>) -> Result<Vec<f64>> {
        let rows = cross_entropy::row_nll(&self.hidden(batch, adapter)?, self.head(), &batch.targets, self.cfg.final_softcap)?;
        Ok(rows.chunks(batch.seq_len().max(1)).map(|r| r.iter().map(|&x| x as f64).sum()).collect())
    }

    /// Sum of target NLLs of the batch (no dropout, nothing kept for backward).
    pub fn loss_sum(&self, batch: &Batch, adapter: Option<&Adapter>) -> Result<f64> {
        Ok(cross_entropy::forward(&self.hidden(batch, adapter)?, self.head(), &batch.targets, self.cfg.final_softcap)?)
    }

    /// The NLL sum as a scalar tensor built only from differentiable Candle ops: with LoRA factors held in
    /// `Var`s, Candle's autograd over it is an independent oracle for [`Model::forward_backward`].
    pub fn loss_tensor(&self, batch: &Batch, adapter: Option<&Adapter>) -> Result<Tensor> {
        Ok(cross_entropy::nll_sum(&self.hidden(batch, adapter)?, self.head(), &batch.targets, self.cfg.final_softcap)?)
    }

    /// One micro-batch of training: forward, loss, explicit backward. Adds `loss_scale · d(Σ nll)/dθ` for every
    /// LoRA factor into `grads` and returns the batch's NLL sum.
    pub fn forward_backward(&self, batch: &Batch, adapter: &Adapter, grads: &mut Grads, ctx: StepCtx, loss_scale: f64) -> Result<f64> {
        let inp = self.inputs(batch)?;
        let dropout = (ctx.dropout > 0.0).then_some(ctx);
        let mut x = self.embed(batch)?;
        let mut inputs_kept = Vec::new();
        let mut caches = Vec::new();
        for li in 0..self.layers.len() {
            let (y, cache) = self.layer_forward(li, &x, &inp, Some(adapter), dropout)?;
            if ctx.recompute {
                inputs_kept.push(x);
            } else {
                caches.push(cache);
            }
            x = y;
        }
        let (hn, rstd) = self.final_hidden(&x)?;
        let (loss, dhn) = cross_entropy::forward_backward(&hn, self.head(), &batch.targets, loss_scale, self.cfg.final_softcap)?;
        let dhn = dhn.reshape(x.shape())?;
        let mut dx = rmsnorm::backward(&dhn, &x, &self.final_norm, self.cfg.norm_weight_offset, &rstd)?;
        drop(x);
        for li in (0..self.layers.len()).rev() {
            let cache = if ctx.recompute {
                let x_in = inputs_kept.pop().expect("one kept input per layer");
                self.layer_forward(li, &x_in, &inp, Some(adapter), dropout)?.1
            } else {
                caches.pop().expect("one cache per layer")
            };
            dx = self.layer_backward(li, &dx, &cache, &inp, adapter, grads)?;
        }
        Ok(loss)
    }

    pub(crate) fn dropout_key(ctx: StepCtx, layer: usize, target: Target) -> DropoutKey {
        DropoutKey { seed: ctx.seed, step: ctx.step, micro: ctx.micro, layer: layer as u64, module: target.index() as u64 }
    }
}
