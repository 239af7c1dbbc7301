//! One run of a sweep: train with evaluations on the held-out share, keep the best / last / every adapter,
//! write metrics.jsonl and metrics.csv, checkpoint so an interruption resumes exactly, and end with run.json.

use super::progress::Progress;
use super::state::{self, Position};
use super::{Interrupted, INTERRUPTED};
use crate::data::batch::Example;
use crate::data::pipeline::{BadRecords, ConditionData, EvalSet};
use crate::eval::HeldoutResult;
use crate::optim::{AdamWConfig, Schedule};
use crate::recipe::{EvalEvery, ModelSection, Recipe};
use crate::session::Session;
use crate::train::{initial_adapter, TrainPlan, Trainer};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The evaluation whose adapter `keep = "best"` exports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Best {
    pub step: usize,
    pub epoch: usize,
    #[serde(deserialize_with = "crate::eval::nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "crate::eval::nan_if_null")]
    pub perplexity: f64,
}

/// `<run>/run.json`: what the report is built from. Failed runs have `status = "failed"` and `error`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunSummary {
    pub run: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub model: String,
    pub model_path: String,
    pub condition: String,
    /// Languages of the training data.
    pub languages: Vec<String>,
    /// Origins of the training data ("native", "translated (google)", ...).
    pub origins: Vec<String>,
    pub lr: f64,
    pub seed: u64,
    pub fingerprint: String,
    pub steps: usize,
    pub train_examples: usize,
    pub heldout_examples: usize,
    pub truncated_examples: usize,
    /// Target tokens trained on, over all steps.
    pub train_tokens: usize,
    #[serde(deserialize_with = "crate::eval::nan_if_null")]
    pub final_loss: f64,
    /// Held-out results of the exported adapter (the best or the last evaluation).
    pub heldout: Option<HeldoutResult>,
    /// The shared evaluation sets' results for the exported adapter.
    #[serde(default)]
    pub sets: std::collections::BTreeMap<String, HeldoutResult>,
    /// `[[evals]]` results of the exported adapter, by name.
    #[serde(default)]
    pub benchmarks: std::collections::BTreeMap<String, Value>,
    pub best: Option<Best>,
    pub keep: String,
    /// What `keep = "best"` selected on: "held-out share" (the condition's own), or the shared set(s), e.g.
    /// "es-dev" or "es-dev + ru-dev" (their token-weighted mean loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_on: Option<String>,
    /// The exported adapter, relative to the run directory.
    pub adapter: Option<PathBuf>,
    pub seconds: f64,
    pub device: String,
    pub dtype: String,
    pub bad_records: Option<BadRecords>,
    /// The output folder the run.json was read from (by the report; not written).
    #[serde(skip)]
    pub dir: PathBuf,
    /// Records the sources' cleaning rules dropped: source → rule → count.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dropped: crate::data::filter::Dropped,
}

/// Everything a run needs.
pub struct RunInput<'a> {
    pub recipe: &'a Recipe,
    pub session: &'a Session,
    pub model: &'a ModelSection,
    pub cond: &'a ConditionData,
    pub train_seqs: &'a [Example],
    /// The sets this run is evaluated on (see [`super::sets_for`]).
    pub sets: Vec<&'a EvalSet>,
    pub benchmarks: &'a [(String, crate::eval::Task)],
    pub name: &'a str,
    pub lr: f64,
    pub seed: u64,
    pub fingerprint: String,
    pub dir: PathBuf,
    pub bad: &'a BadRecords,
    pub dropped: &'a crate::data::filter::Dropped,
}

impl RunInput<'_> {
    /// The summary fields known before training.
    pub fn summary(&self) -> RunSummary {
        let c = self.cond;
        RunSummary {
            run: self.name.to_string(),
            model: self.model.short_name(),
            model_path: self.session.text.files.reference(),
            condition: c.name.clone(),
            languages: c.languages.keys().filter(|l| !l.is_empty()).cloned().collect(),
            origins: c.origins.clone(),
            lr: self.lr,
            seed: self.seed,
            fingerprint: self.fingerprint.clone(),
            train_examples: c.train.len(),
            heldout_examples: c.heldout.len(),
            truncated_examples: c.truncated(),
            keep: self.recipe.eval.keep.clone(),
            device: format!("{:?}", self.session.model.device),
            dtype: format!("{:?}", self.session.model.dtype),
            bad_records: Some(self.bad.clone()),
            dropped: self.dropped.clone(),
            selected_on: (self.recipe.eval.keep == "best").then(|| selection_label(c, &self.sets)),
            final_loss: f64::NAN,
            ..Default::default()
        }
    }
}

/// What `keep = "best"` judges a run's evaluations by, as run.json's `selected_on` names it.
pub(crate) fn selection_label(c: &ConditionData, sets: &[&EvalSet]) -> String {
    if !c.select_on.is_empty() {
        c.select_on.join(" + ")
    } else if !c.heldout.is_empty() {
        "held-out share".into()
    } else {
        sets.first().map_or_else(|| "held-out share".into(), |s| s.name.clone())
    }
}

/// The result `keep = "best"` compares: the mean loss over the `select_on` sets weighted by their tokens (one
/// set: its own result), or the held-out share, or without one the first set.
pub(crate) fn judge(select_on: &[String], heldout: Option<&HeldoutResult>, sets: &std::collections::BTreeMap<String, HeldoutResult>) -> Option<HeldoutResult> {
    match select_on {
        [] => heldout.or_else(|| sets.values().next()).cloned(),
        [one] => sets.get(one).cloned(),
        many => {
            let chosen: Vec<&HeldoutResult> = many.iter().filter_map(|n| sets.get(n)).collect();
            let tokens: usize = chosen.iter().map(|r| r.tokens).sum();
            let loss = chosen.iter().map(|r| r.loss * r.tokens as f64).sum::<f64>() / tokens as f64;
            let mut languages = std::collections::BTreeMap::new();
            for r in &chosen {
                languages.extend(r.languages.iter().map(|(l, x)| (l.clone(), *x)));
            }
            Some(HeldoutResult { loss, perplexity: loss.exp(), tokens, examples: chosen.iter().map(|r| r.examples).sum(), languages })
        }
    }
}

fn write_jsonl(path: &Path, lines: &[Value]) -> Result<()> {
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    crate::fsutil::write_atomic(path, text.as_bytes())
}

/// metrics.csv: one row per training step, and per evaluation one row for all languages, one per language and
/// one per shared evaluation set.
pub fn metrics_csv(history: &[Value]) -> String {
    let mut out = String::from("kind,step,epoch,language,loss,perplexity,lr,grad_norm,tokens,seconds\n");
    let num = |v: &Value, k: &str| v.get(k).map(|x| if x.is_null() { String::new() } else { x.to_string() }).unwrap_or_default();
    for h in history {
        let (step, epoch) = (num(h, "step"), num(h, "epoch"));
        if h["kind"] == "train" {
            let ppl = h["loss"].as_f64().map(|l| l.exp().to_string()).unwrap_or_default();
            out.push_str(&format!("train,{step},{epoch},,{},{ppl},{},{},{},{}\n", num(h, "loss"), num(h, "lr"), num(h, "grad_norm"), num(h, "tokens"), num(h, "seconds")));
        } else {
            let mut row = |language: &str, r: &Value| out.push_str(&format!("eval,{step},{epoch},{language},{},{},,,{},\n", num(r, "loss"), num(r, "perplexity"), num(r, "tokens")));
            if h.get("loss").is_some() {
                row("all", h);
                for (lang, r) in h["languages"].as_object().into_iter().flatten() {
                    row(lang, r);
                }
            }
            // Shared evaluation sets: one row each, "set:<name>" in the language column.
            for (set, r) in h["sets"].as_object().into_iter().flatten() {
                row(&format!("set:{set}"), r);
            }
        }
    }
    out
}

/// The README.md beside an exported adapter: what it is, what it was trained on and how it scored.
fn model_card(s: &RunSummary, spec: &crate::lora::LoraSpec, step: usize, total_steps: usize) -> String {
    let targets: Vec<&str> = spec.targets.iter().map(|t| t.hf_name()).collect();
    let mut card = format!(
        "---\nbase_model: {base}\nlibrary_name: peft\n---\n\n# {run}\n\nA LoRA adapter for `{base}`, trained by trainer {version} (git {git}).\n\n\
         - data: condition `{cond}` ({examples} training examples; languages: {langs}; origins: {origins})\n\
         - lr {lr}, seed {seed}; this adapter is step {step} of {total_steps}\n\
         - LoRA r={r}, alpha={alpha}, dropout={dropout}, rsLoRA {rslora}, on {targets}\n",
        base = s.model_path,
        run = s.run,
        version = env!("CARGO_PKG_VERSION"),
        git = env!("TRAINER_GIT"),
        cond = s.condition,
        examples = s.train_examples,
        langs = if s.languages.is_empty() { "unlabelled".to_string() } else { s.languages.join(", ") },
        origins = if s.origins.is_empty() { "unlabelled".to_string() } else { s.origins.join(", ") },
        lr = crate::train::lr_label(s.lr),
        seed = s.seed,
        r = spec.r,
        alpha = spec.alpha,
        dropout = spec.dropout,
        rslora = if spec.rslora { "on" } else { "off" },
        targets = targets.join(", "),
    );
    let results: Vec<(String, &HeldoutResult)> = s.heldout.iter().map(|h| ("held-out share of its own condition".to_string(), h)).chain(s.sets.iter().map(|(n, h)| (format!("shared set `{n}`"), h))).collect();
    if !results.is_empty() {
        card.push_str("\n## Results of this adapter\n\n| evaluated on | loss | perplexity | tokens |\n|---|---|---|---|\n");
        for (what, h) in results {
            card.push_str(&format!("| {what} | {:.4} | {:.3} | {} |\n", h.loss, h.perplexity, h.tokens));
        }
    }
    if !s.benchmarks.is_empty() {
        card.push_str("\n## Benchmarks\n\n");
        for (name, r) in &s.benchmarks {
            card.push_str(&format!("- `{name}`: {}\n", crate::eval::summary_line(r)));
        }
    }
    card.push_str("\n```python\nfrom peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n```\n");
    card
}

fn is_eval_point(every: EvalEvery, step: usize, steps_per_epoch: usize, total: usize) -> bool {
    step == total
        || match every {
            EvalEvery::Steps(n) => step.is_multiple_of(n),
            EvalEvery::Named(_) => step.is_multiple_of(steps_per_epoch),
        }
}

/// Trains one run to the end (resuming from its checkpoint when there is one) and writes its files.
/// Returns `Interrupted` (after saving a checkpoint) on Ctrl-C or SIGTERM. The caller holds the run folder's lock.
pub fn execute(input: &RunInput, progress: &mut Progress) -> Result<RunSummary> {
    let (recipe, session, t) = (input.recipe, input.session, &input.recipe.train);
    let model = &session.model;
    let dir = &input.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Left by a writer that was killed or ran out of disk; the folder is locked, so nobody is writing them now.
    for d in [dir.clone(), dir.join("adapter")] {
        crate::fsutil::remove_stale_temporaries(&d)?;
    }
    // What exported adapters, run.json and this file call the base model: PEFT must find it from anywhere.
    let base_model = session.text.files.reference();
    let base_revision = session.text.files.revision.as_deref();
    let config = json!({
        "run": input.name,
        "fingerprint": input.fingerprint,
        "trainer": { "version": env!("CARGO_PKG_VERSION"), "git": env!("TRAINER_GIT"), "candle": crate::CANDLE_VERSION },
        "model": ModelSection { path: base_model.clone(), ..input.model.clone() },
        "model_dir": std::fs::canonicalize(&session.text.files.dir).unwrap_or_else(|_| session.text.files.dir.clone()),
        "device": format!("{:?}", model.device),
        "dtype": format!("{:?}", model.dtype),
        "condition": input.cond.name,
        "lr": input.lr,
        "seed": input.seed,
        "recipe": recipe,
    });
    crate::fsutil::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;

    let mut adapter = initial_adapter(recipe, model, input.seed)?;
    let micro = t.micro_batch_size.unwrap_or(t.batch_size);
    let steps_per_epoch = input.train_seqs.len().div_ceil(t.batch_size);
    let total_steps = super::total_steps(recipe, input.train_seqs.len());
    let plan = TrainPlan {
        lr: input.lr,
        total_steps,
        batch_size: t.batch_size,
        micro_batch_size: micro,
        schedule: Schedule::parse(&t.scheduler)?,
        warmup_steps: t.warmup_steps,
        adamw: AdamWConfig { weight_decay: t.weight_decay, ..Default::default() },
        max_grad_norm: t.max_grad_norm,
        shuffle: t.shuffle,
        seed: input.seed,
        dropout: adapter.spec.dropout,
        recompute: t.gradient_checkpointing,
        group_by_length: t.group_by_length,
    };
    let mut trainer = Trainer::new(model, &adapter, input.train_seqs, plan, session.text.pad_id)?;
    let checkpoint = dir.join("checkpoint.safetensors");
    let mut position = Position { fingerprint: input.fingerprint.clone(), step: 0, adam_step: 0, history: Vec::new(), best: None, seconds: 0.0 };
    if checkpoint.is_file() {
        let saved = state::read_position(&checkpoint).with_context(|| format!("the run's checkpoint is damaged (a full disk or a crash while it was written?): delete {} to restart the run from its beginning", checkpoint.display()))?;
        if saved.fingerprint != input.fingerprint {
            bail!("{} was saved by a run with other settings; delete it (or the run's folder) to start over, or use another output_dir", checkpoint.display());
        }
        position = state::load(&checkpoint, &mut adapter, &mut trainer.opt, &model.device).with_context(|| format!("the run's checkpoint is damaged: delete {} to restart the run from its beginning", checkpoint.display()))?;
        trainer.step = position.step;
    }
    let metrics_path = dir.join("metrics.jsonl");
    write_jsonl(&metrics_path, &position.history)?;
    let mut live = std::fs::OpenOptions::new().append(true).open(&metrics_path).with_context(|| format!("cannot open {}", metrics_path.display()))?;
    progress.run_started(input.name, total_steps, trainer.step);
    if trainer.step > 0 {
        progress.message(&format!("{}: resuming after step {} of {total_steps} from {}", input.name, trainer.step, checkpoint.display()));
    }

    let started = Instant::now();
    let prior_seconds = position.seconds;
    let save_dtype = if t.save_dtype == "bf16" { DType::BF16 } else { DType::F32 };
    let keep = recipe.eval.keep.as_str();
    let eval_batch = recipe.eval.batch_size.unwrap_or(micro);
    let has_heldout = !input.cond.heldout.is_empty();
    let mut final_loss = position.history.iter().rev().find(|h| h["kind"] == "train").and_then(|h| h["loss"].as_f64()).unwrap_or(f64::NAN);
    while !trainer.done() {
        let m = trainer.step(&mut adapter)?;
        final_loss = m.loss;
        let mut line = serde_json::to_value(&m)?;
        line["kind"] = json!("train");
        writeln!(live, "{line}").with_context(|| format!("cannot write {}", metrics_path.display()))?;
        position.history.push(line);
        progress.step(input.name, &m);
        let mut save_state = t.checkpoint_every > 0 && m.step.is_multiple_of(t.checkpoint_every);
        if (has_heldout || !input.sets.is_empty()) && is_eval_point(recipe.eval.every, m.step, steps_per_epoch, total_steps) {
            let evaluate = |examples: &[Example], labels: &[String]| crate::eval::evaluate_by_language(model, Some(&adapter), examples, labels, eval_batch, session.text.pad_id);
            let heldout = if has_heldout { Some(evaluate(&input.cond.heldout, &input.cond.heldout_languages)?) } else { None };
            let mut sets = std::collections::BTreeMap::new();
            for set in &input.sets {
                sets.insert(set.name.clone(), evaluate(&set.examples, &set.languages)?);
            }
            let mut line = match &heldout {
                Some(r) => serde_json::to_value(r)?,
                None => json!({}),
            };
            line["kind"] = json!("eval");
            line["step"] = json!(m.step);
            line["epoch"] = json!(m.epoch);
            if !sets.is_empty() {
                line["sets"] = serde_json::to_value(&sets)?;
            }
            writeln!(live, "{line}").with_context(|| format!("cannot write {}", metrics_path.display()))?;
            position.history.push(line);
            // Best by the select_on sets, or the held-out share, or without one the first shared set.
            let judge = judge(&input.cond.select_on, heldout.as_ref(), &sets).expect("select_on names evaluated sets");
            let judge = &judge;
            progress.eval(input.name, m.step, judge);
            if keep == "all" {
                let out = dir.join("adapters").join(format!("step-{}", m.step));
                adapter.save_peft(&out, &base_model, base_revision, save_dtype)?;
                let at_step = RunSummary { heldout: heldout.clone(), sets: sets.clone(), ..input.summary() };
                crate::fsutil::write_atomic(&out.join("README.md"), model_card(&at_step, &adapter.spec, m.step, total_steps).as_bytes())?;
            }
            if keep == "best" && position.best.as_ref().is_none_or(|b| judge.loss < b.loss) {
                adapter.save_peft(&dir.join("adapter"), &base_model, base_revision, save_dtype)?;
                position.best = Some(Best { step: m.step, epoch: m.epoch, loss: judge.loss, perplexity: judge.perplexity });
            }
            save_state = true;
        }
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if (save_state || interrupted) && !trainer.done() {
            position.step = trainer.step;
            position.adam_step = trainer.opt.state().0;
            position.seconds = prior_seconds + started.elapsed().as_secs_f64();
            state::save(&checkpoint, &adapter, &trainer.opt, &position)?;
        }
        if interrupted && !trainer.done() {
            return Err(Interrupted::InRun { run: input.name.to_string(), step: trainer.step }.into());
        }
    }
    drop(live);

    // The evaluation of the exported adapter: the best one, or the last; from the history, so a resumed run
    // reports evaluations made before its interruption.
    let evals: Vec<&Value> = position.history.iter().filter(|h| h["kind"] == "eval").collect();
    let kept = match (keep, &position.best) {
        ("best", Some(b)) => evals.iter().find(|h| h["step"] == b.step).copied(),
        _ => evals.last().copied(),
    };
    let kept_eval: Option<HeldoutResult> = kept.filter(|h| h.get("loss").is_some()).map(|h| serde_json::from_value(h.clone())).transpose()?;
    let kept_sets = kept.and_then(|h| h.get("sets")).map(|s| serde_json::from_value(s.clone())).transpose()?.unwrap_or_default();
    if keep != "best" || position.best.is_none() {
        adapter.save_peft(&dir.join("adapter"), &base_model, base_revision, save_dtype)?;
    }
    // Benchmarks score the adapter that was exported (the best one, for keep = "best"), read back from disk.
    let mut benchmarks = std::collections::BTreeMap::new();
    if !input.benchmarks.is_empty() {
        let kept = crate::lora::Adapter::load_peft(&dir.join("adapter"), &model.cfg, &model.device)?;
        let languages: Vec<String> = input.cond.languages.keys().filter(|l| !l.is_empty()).cloned().collect();
        for (name, task) in input.benchmarks {
            let spec = recipe.evals.iter().find(|e| &e.name == name);
            if spec.is_some_and(|s| !s.scores_run_of(&languages)) {
                continue;
            }
            let items = dir.join("benchmarks").join(format!("{name}.jsonl"));
            let r = crate::eval::run_benchmark(task, spec, session, Some(&kept), &items).with_context(|| format!("[[evals]] `{name}`"))?;
            progress.message(&format!("{}: {name}: {}", input.name, crate::eval::summary_line(&r)));
            benchmarks.insert(name.clone(), r);
        }
    }
    write_jsonl(&metrics_path, &position.history)?;
    crate::fsutil::write_atomic(&dir.join("metrics.csv"), metrics_csv(&position.history).as_bytes())?;
    let train_tokens = position.history.iter().filter(|h| h["kind"] == "train").filter_map(|h| h["tokens"].as_u64()).sum::<u64>() as usize;
    let summary = RunSummary {
        status: "ok".into(),
        steps: total_steps,
        train_tokens,
        final_loss,
        heldout: kept_eval,
        sets: kept_sets,
        benchmarks,
        best: position.best.clone(),
        adapter: Some(PathBuf::from("adapter")),
        seconds: prior_seconds + started.elapsed().as_secs_f64(),
        ..input.summary()
    };
    let kept_step = position.best.as_ref().filter(|_| keep == "best").map_or(total_steps, |b| b.step);
    crate::fsutil::write_atomic(&dir.join("adapter").join("README.md"), model_card(&summary, &adapter.spec, kept_step, total_steps).as_bytes())?;
    crate::fsutil::write_atomic(&dir.join("run.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    if checkpoint.is_file() {
        std::fs::remove_file(&checkpoint).with_context(|| format!("cannot remove {}", checkpoint.display()))?;
    }
    Ok(summary)
}
