//! `trainer run`: one LoRA run per learning rate of the recipe. Each run writes `<output_dir>/<run>/adapter/`
//! (PEFT format) and `<run>/metrics.jsonl` (one line per optimizer step).

use crate::data::batch::{Batch, Example};
use crate::data::pipeline::{self, BadRecords, ConditionData};
use crate::data::TrainOn;
use crate::lora::{Adapter, LoraSpec, Target};
use crate::model::{Grads, Model, StepCtx};
use crate::optim::{clip_global_norm, AdamW, AdamWConfig, Schedule};
use crate::recipe::Recipe;
use crate::session::{ModelText, Session};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run: String,
    pub condition: String,
    pub lr: f64,
    pub steps: usize,
    pub final_loss: f64,
    pub train_examples: usize,
    pub truncated_examples: usize,
    /// Loss and perplexity on the condition's held-out share after training, when it has one.
    pub heldout: Option<crate::eval::EvalResult>,
    pub bad_records: BadRecords,
    pub adapter: PathBuf,
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

/// Trains `adapter` on `examples`, calling `on_step` after every optimizer step.
pub fn train(model: &Model, adapter: &mut Adapter, examples: &[Example], plan: &TrainPlan, pad_id: u32, mut on_step: impl FnMut(&StepMetrics) -> Result<()>) -> Result<()> {
    if examples.is_empty() {
        bail!("no training examples");
    }
    let mut opt = AdamW::new(plan.adamw, &adapter.tensors())?;
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let order = batch_order(examples.len(), plan.batch_size, plan.total_steps, plan.shuffle, plan.seed, plan.group_by_length.then_some(&lengths[..]));
    for (step, batch_idx) in order.iter().enumerate() {
        let started = Instant::now();
        let tokens: usize = batch_idx.iter().map(|&i| examples[i].target_tokens()).sum();
        // Σ nll / (target tokens of the whole optimizer batch): micro-batches accumulate the exact batch gradient.
        let loss_scale = 1.0 / tokens.max(1) as f64;
        let mut grads = Grads::new(model.cfg.num_layers);
        let mut nll = 0f64;
        for (micro, chunk) in batch_idx.chunks(plan.micro_batch_size).enumerate() {
            let refs: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
            let batch = Batch::pad(&refs, pad_id);
            let ctx = StepCtx { seed: plan.seed, step: step as u64, micro: micro as u64, dropout: plan.dropout, recompute: plan.recompute };
            nll += model.forward_backward(&batch, adapter, &mut grads, ctx, loss_scale)?;
        }
        let mut g = grads.tensors(adapter)?;
        let grad_norm = clip_global_norm(&mut g, plan.max_grad_norm)?;
        let lr = plan.lr * plan.schedule.factor(step, plan.warmup_steps, plan.total_steps);
        opt.step(&mut adapter.tensors_mut(), &g, lr)?;
        on_step(&StepMetrics {
            step: step + 1,
            loss: nll * loss_scale,
            lr,
            grad_norm,
            tokens,
            seconds: started.elapsed().as_secs_f64(),
        })?;
    }
    Ok(())
}

/// Formats a learning rate for a run name: 1e-4 → "1e-4", 0.0003 → "3e-4".
pub fn lr_label(lr: f64) -> String {
    format!("{lr:e}")
}

fn lora_spec(recipe: &Recipe) -> Result<LoraSpec> {
    let l = &recipe.lora;
    let mut targets = match &l.targets {
        Some(names) => names
            .iter()
            .map(|n| Target::parse(n).with_context(|| format!("[lora] targets: `{n}` is not one of q, k, v, o, gate, up, down")))
            .collect::<Result<Vec<_>>>()?,
        None => vec![Target::Q, Target::K, Target::V],
    };
    if targets.is_empty() {
        bail!("[lora] targets is empty");
    }
    targets.sort();
    targets.dedup();
    let r = l.r.unwrap_or(8);
    if r == 0 {
        bail!("[lora] r must be at least 1");
    }
    Ok(LoraSpec { r, alpha: l.alpha.unwrap_or(16.0), dropout: l.dropout.unwrap_or(0.05), targets, rslora: l.rslora.unwrap_or(false) })
}

/// The adapter a run starts from: a fresh PEFT-style init, or `init_adapter`, whose config must agree with any
/// r/alpha/targets/rslora the recipe states.
fn initial_adapter(recipe: &Recipe, model: &Model) -> Result<Adapter> {
    let spec = lora_spec(recipe)?;
    let Some(dir) = &recipe.lora.init_adapter else {
        return Adapter::init(spec, &model.cfg, recipe.seed, &model.device);
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

/// One run of a plan: a condition at a learning rate.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRun {
    pub run: String,
    pub model: String,
    pub condition: String,
    pub lr: f64,
    pub seed: u64,
    pub train_examples: usize,
    pub heldout_examples: usize,
    pub train_target_tokens: usize,
    pub heldout_target_tokens: usize,
    pub truncated_examples: usize,
    /// Sequences per epoch: the training examples, or fewer with packing.
    pub train_sequences: usize,
    /// Training examples per language.
    pub languages: std::collections::BTreeMap<String, usize>,
}

fn run_name(condition: &str, lr: f64) -> String {
    format!("{condition}-lr{}", lr_label(lr))
}

/// What training iterates over: the examples, or them packed into sequences.
fn sequences(recipe: &Recipe, examples: &[Example]) -> Vec<Example> {
    if recipe.train.packing {
        crate::data::batch::pack(examples, recipe.train.max_seq_len)
    } else {
        examples.to_vec()
    }
}

fn tokens(examples: &[Example]) -> usize {
    examples.iter().map(Example::target_tokens).sum()
}

fn plan_runs(recipe: &Recipe, conditions: &[ConditionData]) -> Vec<PlannedRun> {
    let mut out = Vec::new();
    for c in conditions {
        for lr in recipe.lrs() {
            out.push(PlannedRun {
                run: run_name(&c.name, lr),
                model: recipe.model.path.clone(),
                condition: c.name.clone(),
                lr,
                seed: recipe.seed,
                train_examples: c.train.len(),
                heldout_examples: c.heldout.len(),
                train_target_tokens: tokens(&c.train),
                heldout_target_tokens: tokens(&c.heldout),
                truncated_examples: c.truncated(),
                train_sequences: sequences(recipe, &c.train).len(),
                languages: c.languages.clone(),
            });
        }
    }
    out
}

fn load_recipe(recipe_path: &Path, output_dir: Option<PathBuf>) -> Result<Recipe> {
    let mut recipe = Recipe::load(recipe_path)?;
    if let Some(dir) = output_dir {
        recipe.output_dir = dir;
    }
    Ok(recipe)
}

fn report_bad_records(bad: &BadRecords) {
    if bad.count > 0 {
        eprintln!("skipped {} bad record(s) (on_bad_record = \"skip\"); the first:", bad.count);
        for b in &bad.first {
            eprintln!("  {b}");
        }
    }
}

/// Expands the recipe and its data without training: what `trainer plan` shows.
pub fn plan_recipe(recipe_path: &Path, data_root: Option<&Path>) -> Result<(Vec<PlannedRun>, BadRecords)> {
    let recipe = load_recipe(recipe_path, None)?;
    let text = ModelText::open(&recipe.model.path, Some(&recipe.base_dir))?;
    let expanded = pipeline::expand_with_root(&recipe, data_root)?;
    let encoder = text.encoder(&recipe.template.name, recipe.train.max_seq_len, TrainOn::parse(&recipe.template.train_on)?)?;
    let (conditions, bad) = pipeline::load(&recipe, &expanded, &encoder)?;
    Ok((plan_runs(&recipe, &conditions), bad))
}

/// Runs every condition of the recipe at every learning rate. Returns one summary per run.
pub fn run_recipe(recipe_path: &Path, output_dir: Option<PathBuf>, data_root: Option<&Path>) -> Result<Vec<RunSummary>> {
    let recipe = load_recipe(recipe_path, output_dir)?;
    let device = crate::runtime::device(&recipe.model.device).context("[model] device")?;
    let dtype = crate::runtime::dtype(&recipe.model.dtype, &device).context("[model] dtype")?;
    let session = Session::open(&recipe.model.path, Some(&recipe.base_dir), dtype, &device)?;
    let expanded = pipeline::expand_with_root(&recipe, data_root)?;
    let t = &recipe.train;
    let encoder = session.text.encoder(&recipe.template.name, t.max_seq_len, TrainOn::parse(&recipe.template.train_on)?)?;
    let (conditions, bad) = pipeline::load(&recipe, &expanded, &encoder)?;
    report_bad_records(&bad);
    let micro = t.micro_batch_size.unwrap_or(t.batch_size);
    let save_dtype = if t.save_dtype == "bf16" { DType::BF16 } else { DType::F32 };
    let planned = plan_runs(&recipe, &conditions);
    let mut summaries = Vec::new();
    for (cond, runs) in conditions.iter().zip(planned.chunks(recipe.lrs().len())) {
        let train_seqs = sequences(&recipe, &cond.train);
        let steps_per_epoch = train_seqs.len().div_ceil(t.batch_size);
        let total_steps = t.max_steps.unwrap_or_else(|| t.epochs.unwrap_or(1) * steps_per_epoch);
        eprintln!(
            "condition {}: {} training examples, {} held out, {} truncated at {} tokens; model {} ({}, {} layers) on {:?}/{:?}; {} steps per run",
            cond.name,
            cond.train.len(),
            cond.heldout.len(),
            cond.truncated(),
            t.max_seq_len,
            session.text.files.dir.display(),
            session.model.cfg.architecture,
            session.model.cfg.num_layers,
            device,
            dtype,
            total_steps
        );
        for p in runs {
            let run_dir = recipe.output_dir.join(&p.run);
            std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
            let mut adapter = initial_adapter(&recipe, &session.model)?;
            let plan = TrainPlan {
                lr: p.lr,
                total_steps,
                batch_size: t.batch_size,
                micro_batch_size: micro,
                schedule: Schedule::parse(&t.scheduler)?,
                warmup_steps: t.warmup_steps,
                adamw: AdamWConfig { weight_decay: t.weight_decay, ..Default::default() },
                max_grad_norm: t.max_grad_norm,
                shuffle: t.shuffle,
                seed: recipe.seed,
                dropout: adapter.spec.dropout,
                recompute: t.gradient_checkpointing,
                group_by_length: t.group_by_length,
            };
            let started = Instant::now();
            let metrics_path = run_dir.join("metrics.jsonl");
            let tmp_metrics = run_dir.join(".metrics.jsonl.tmp");
            let mut metrics = std::io::BufWriter::new(std::fs::File::create(&tmp_metrics).with_context(|| format!("cannot create {}", tmp_metrics.display()))?);
            let bar = indicatif::ProgressBar::new(total_steps as u64).with_message(p.run.clone());
            bar.set_style(indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed} loss {prefix}").expect("valid template"));
            let mut last_loss = f64::NAN;
            train(&session.model, &mut adapter, &train_seqs, &plan, session.text.pad_id, |m| {
                serde_json::to_writer(&mut metrics, m)?;
                metrics.write_all(b"\n")?;
                metrics.flush()?;
                last_loss = m.loss;
                bar.set_prefix(format!("{:.4}", m.loss));
                bar.inc(1);
                Ok(())
            })?;
            bar.finish();
            drop(metrics);
            std::fs::rename(&tmp_metrics, &metrics_path)?;
            let heldout = if cond.heldout.is_empty() {
                None
            } else {
                Some(crate::eval::evaluate(&session.model, Some(&adapter), &cond.heldout, micro, session.text.pad_id)?)
            };
            let adapter_dir = run_dir.join("adapter");
            adapter.save_peft(&adapter_dir, &recipe.model.path, save_dtype)?;
            let summary = RunSummary {
                run: p.run.clone(),
                condition: cond.name.clone(),
                lr: p.lr,
                steps: total_steps,
                final_loss: last_loss,
                train_examples: cond.train.len(),
                truncated_examples: cond.truncated(),
                heldout,
                bad_records: bad.clone(),
                adapter: adapter_dir,
                seconds: started.elapsed().as_secs_f64(),
            };
            crate::fsutil::write_atomic(&run_dir.join("run.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
            let held = heldout.map(|h| format!(", held-out loss {:.4} (perplexity {:.2})", h.loss, h.perplexity)).unwrap_or_default();
            eprintln!("{}: {total_steps} steps, final loss {last_loss:.4}{held}, adapter in {}", p.run, summary.adapter.display());
            summaries.push(summary);
        }
    }
    report_bad_records(&bad);
    Ok(summaries)
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
