//! The training core: one LoRA run over tokenized examples, one optimizer step at a time, with everything needed
//! to stop after any step and continue exactly (the order of batches and the dropout masks are functions of the
//! seed and the step; the optimizer state is saved). Sweeps, evaluation and files live in `sweep`.

use crate::data::batch::{Batch, Example};
use crate::lora::Adapter;
use crate::model::{Grads, Model, StepCtx};
use crate::optim::{clip_global_norm, AdamW, AdamWConfig, Schedule};
use crate::recipe::Recipe;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    /// The epoch (1-based) this step's batch belongs to.
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Target (loss-bearing) tokens of the batch.
    pub tokens: usize,
    /// All non-padding tokens of the batch: what the model processed.
    pub input_tokens: usize,
    pub seconds: f64,
}

/// Everything about the optimisation of one run that does not depend on the model.
#[derive(Debug, Clone)]
pub struct TrainPlan {
    pub lr: f64,
    pub total_steps: usize,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub adamw: AdamWConfig,
    pub max_grad_norm: f64,
    pub shuffle: bool,
    pub seed: u64,
    pub dropout: f64,
    pub recompute: bool,
    /// Batch sequences of similar length together (less padding), as transformers' group_by_length does.
    pub group_by_length: bool,
}

/// Optimizer batches of example indices: epoch after epoch, each epoch shuffled with its own seeded stream when
/// asked; an epoch's last batch may be short (batches never straddle epochs). With `lengths`, each run of 50
/// batches of the epoch's order is sorted by length (longest first), so a batch holds similar lengths while
/// the epoch stays shuffled at the scale of those runs.
pub fn batch_order(n: usize, batch_size: usize, total_steps: usize, shuffle: bool, seed: u64, lengths: Option<&[usize]>) -> Vec<Vec<usize>> {
    let mut out = Vec::with_capacity(total_steps);
    let mut epoch = 0u64;
    while out.len() < total_steps {
        let mut idx: Vec<usize> = (0..n).collect();
        if shuffle {
            idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
        if let Some(len) = lengths {
            for run in idx.chunks_mut(50 * batch_size) {
                run.sort_by_key(|&i| std::cmp::Reverse(len[i]));
            }
        }
        for chunk in idx.chunks(batch_size) {
            if out.len() == total_steps {
                break;
            }
            out.push(chunk.to_vec());
        }
        epoch += 1;
    }
    out
}

/// A run in progress: the batch order, the optimizer and how many steps are done.
pub struct Trainer<'a> {
    model: &'a Model,
    examples: &'a [Example],
    plan: TrainPlan,
    order: Vec<Vec<usize>>,
    pad_id: u32,
    pub opt: AdamW,
    /// Optimizer steps done.
    pub step: usize,
}

impl<'a> Trainer<'a> {
    pub fn new(model: &'a Model, adapter: &Adapter, examples: &'a [Example], plan: TrainPlan, pad_id: u32) -> Result<Self> {
        if examples.is_empty() {
            bail!("no training examples");
        }
        let opt = AdamW::new(plan.adamw, &adapter.tensors())?;
        let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
        let order = batch_order(examples.len(), plan.batch_size, plan.total_steps, plan.shuffle, plan.seed, plan.group_by_length.then_some(&lengths[..]));
        Ok(Self { model, examples, plan, order, pad_id, opt, step: 0 })
    }

    pub fn steps_per_epoch(&self) -> usize {
        self.examples.len().div_ceil(self.plan.batch_size)
    }

    pub fn total_steps(&self) -> usize {
        self.plan.total_steps
    }

    pub fn done(&self) -> bool {
        self.step >= self.plan.total_steps
    }

    /// One optimizer step over the next batch (micro-batches accumulate the exact batch gradient).
    pub fn step(&mut self, adapter: &mut Adapter) -> Result<StepMetrics> {
        let (model, plan, step) = (self.model, &self.plan, self.step);
        let batch_idx = self.order.get(step).context("training is already done")?;
        let started = Instant::now();
        let tokens: usize = batch_idx.iter().map(|&i| self.examples[i].target_tokens()).sum();
        let input_tokens: usize = batch_idx.iter().map(|&i| self.examples[i].ids.len()).sum();
        // Σ nll / (target tokens of the whole optimizer batch).
        let loss_scale = 1.0 / tokens.max(1) as f64;
        let mut grads = Grads::new(model.cfg.num_layers);
        let mut nll = 0f64;
        for (micro, chunk) in batch_idx.chunks(plan.micro_batch_size).enumerate() {
            let refs: Vec<&Example> = chunk.iter().map(|&i| &self.examples[i]).collect();
            let batch = Batch::pad(&refs, self.pad_id);
            let ctx = StepCtx { seed: plan.seed, step: step as u64, micro: micro as u64, dropout: plan.dropout, recompute: plan.recompute };
            nll += model.forward_backward(&batch, adapter, &mut grads, ctx, loss_scale)?;
        }
        let loss = nll * loss_scale;
        if !loss.is_finite() {
            bail!("the training loss is {loss} at step {} (lr {}): the run diverged", step + 1, lr_label(plan.lr));
        }
        let mut g = grads.tensors(adapter)?;
        let grad_norm = clip_global_norm(&mut g, plan.max_grad_norm)?;
        if !grad_norm.is_finite() {
            bail!("the gradient norm is {grad_norm} at step {} (lr {}): the run diverged", step + 1, lr_label(plan.lr));
        }
        let lr = plan.lr * plan.schedule.factor(step, plan.warmup_steps, plan.total_steps);
        // A site no token reached this step (an expert nobody was routed to) has no gradient: torch skips it.
        let received = grads.received(adapter);
        self.opt.step_some(&mut adapter.tensors_mut(), &g, Some(&received), lr)?;
        self.step += 1;
        Ok(StepMetrics { step: step + 1, epoch: step / self.steps_per_epoch() + 1, loss, lr, grad_norm, tokens, input_tokens, seconds: started.elapsed().as_secs_f64() })
    }
}

/// Trains `adapter` on `examples` to the end of the plan, calling `on_step` after every optimizer step.
pub fn train(model: &Model, adapter: &mut Adapter, examples: &[Example], plan: &TrainPlan, pad_id: u32, mut on_step: impl FnMut(&StepMetrics) -> Result<()>) -> Result<()> {
    let mut trainer = Trainer::new(model, adapter, examples, plan.clone(), pad_id)?;
    while !trainer.done() {
        let m = trainer.step(adapter)?;
        on_step(&m)?;
    }
    Ok(())
}

/// Formats a learning rate for a run name: 1e-4 → "1e-4", 0.0003 → "3e-4".
pub fn lr_label(lr: f64) -> String {
    format!("{lr:e}")
}

/// The adapter a run starts from: a fresh PEFT-style init, or `init_adapter`, whose config must agree with any
/// r/alpha/targets/rslora the recipe states.
pub fn initial_adapter(recipe: &Recipe, model: &Model, seed: u64) -> Result<Adapter> {
    let spec = recipe.lora.spec()?;
    let Some(dir) = &recipe.lora.init_adapter else {
        return Adapter::init(spec, &model.cfg, seed, &model.device);
    };
    let dir = recipe.resolve(dir);
    let mut adapter = Adapter::load_peft(&dir, &model.cfg, &model.device).with_context(|| format!("[lora] init_adapter {}", dir.display()))?;
    let l = &recipe.lora;
    let from = &adapter.spec;
    let conflict = l.r.is_some_and(|r| r != from.r)
        || l.alpha.is_some_and(|a| a != from.alpha)
        || l.rslora.is_some_and(|x| x != from.rslora)
        || (l.targets.is_some() && spec.targets != from.targets);
    if conflict {
        bail!("[lora] r/alpha/targets/rslora differ from init_adapter {} (r={}, alpha={}, rslora={}); drop them or make them agree", dir.display(), from.r, from.alpha, from.rslora);
    }
    // Dropout is a training choice, not a property of the saved adapter.
    adapter.spec.dropout = spec.dropout;
    Ok(adapter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_each_epoch_once_and_are_seeded() {
        let a = batch_order(10, 4, 6, true, 7, None);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2, 4, 4, 2]);
        let mut first: Vec<usize> = a[..3].concat();
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        assert_eq!(a, batch_order(10, 4, 6, true, 7, None));
        assert_ne!(a, batch_order(10, 4, 6, true, 8, None));
        assert_eq!(batch_order(5, 2, 2, false, 0, None), vec![vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn length_grouping_batches_similar_lengths() {
        let lengths: Vec<usize> = (0..40).map(|i| (i * 37) % 101).collect();
        let grouped = batch_order(40, 4, 10, true, 3, Some(&lengths));
        let mut all: Vec<usize> = grouped.concat();
        all.sort();
        assert_eq!(all, (0..40).collect::<Vec<_>>(), "still every example once per epoch");
        let spread = |b: &Vec<usize>| b.iter().map(|&i| lengths[i]).max().unwrap() - b.iter().map(|&i| lengths[i]).min().unwrap();
        let plain = batch_order(40, 4, 10, true, 3, None);
        let total = |o: &Vec<Vec<usize>>| o.iter().map(spread).sum::<usize>();
        assert!(total(&grouped) * 4 < total(&plain), "grouped {} vs plain {}", total(&grouped), total(&plain));
    }

    #[test]
    fn lr_labels_are_short() {
        assert_eq!(lr_label(1e-4), "1e-4");
        assert_eq!(lr_label(0.0003), "3e-4");
    }
}
