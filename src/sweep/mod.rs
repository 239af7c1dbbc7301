//! `trainer run` and `trainer plan`: a recipe's grid — models × conditions × learning rates × seeds — expanded
//! into named runs, each trained in its own folder. Finished runs are skipped, interrupted ones resume, failed
//! ones are recorded and the sweep goes on; it ends with the report.

pub mod adapters;
pub mod plots;
pub mod progress;
pub mod report;
pub mod run;
pub mod scores;
pub mod state;

use crate::data::batch::Example;
use crate::data::mix::stable_hash;
use crate::data::filter::Dropped;
use crate::data::pipeline::{self, BadRecords, ConditionData, EvalSet};
use crate::data::TrainOn;
use crate::recipe::{ModelSection, Recipe};
use crate::checkpoint::Need;
use crate::session::{ModelText, Session};
use anyhow::{bail, Context, Result};
use progress::{Mode, Progress};
use run::{RunInput, RunSummary};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by Ctrl-C: the current run saves a checkpoint after its step and the sweep stops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The error of a sweep stopped by Ctrl-C or SIGTERM: a run saved its checkpoint, or the sweep stopped between
/// runs.
#[derive(Debug)]
pub enum Interrupted {
    /// `run` saved its state after `step`.
    InRun { run: String, step: usize },
    /// Stopped before starting `next` (every run before it finished or saved its state).
    BetweenRuns { next: String },
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interrupted::InRun { run, step } => write!(f, "interrupted: {run} saved its state after step {step}; run the same command again to resume"),
            Interrupted::BetweenRuns { next } => write!(f, "interrupted: stopped before {next}; run the same command again to go on"),
        }
    }
}

impl std::error::Error for Interrupted {}

/// Ctrl-C or SIGTERM (what Slurm and Kubernetes send before killing) once: finish the step, save, stop. Twice:
/// stop at once.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopping now");
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint after this step (interrupt again to stop at once)");
    });
}

/// Holds a run folder for one process: an advisory lock on `<run>/.lock`, released when dropped or when the
/// process ends, however it ends.
pub struct RunLock(#[allow(dead_code)] std::fs::File);

impl RunLock {
    /// `Ok(None)` when another process holds the folder.
    pub fn try_acquire(dir: &Path) -> Result<Option<Self>> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
    }
}

/// What the command line adds to a recipe.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub output_dir: Option<PathBuf>,
    pub data_root: Option<PathBuf>,
    /// `--benchmarks-root`: where `[[evals]]` paths resolve (a path relative to the working directory).
    pub benchmarks_root: Option<PathBuf>,
    /// `--set key=value`.
    pub overrides: Vec<String>,
    /// `--model`: train this model instead of the recipe's (a path relative to the working directory, or a hub id).
    pub model: Option<String>,
    /// `--device`: for every model.
    pub device: Option<String>,
    /// `--shard i/n`: only runs i, i+n, i+2n, … (0-based) of the grid.
    pub shard: Option<(usize, usize)>,
    /// `--only NAME`: only these runs of the grid.
    pub only: Vec<String>,
}

/// Parses `--shard i/n`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let parsed = s.split_once('/').and_then(|(i, n)| Some((i.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
    match parsed {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        _ => bail!("--shard {s}: write i/n with 0 ≤ i < n, e.g. 0/4 (the first of four shards)"),
    }
}

/// Loads the recipe with the command line's changes.
pub fn load_recipe(path: &Path, opts: &Options) -> Result<Recipe> {
    let mut recipe = Recipe::load_with(path, &opts.overrides)?;
    if let Some(dir) = &opts.output_dir {
        recipe.output_dir = dir.clone();
    }
    if let Some(m) = &opts.model {
        // A path given on the command line is relative to the working directory, not to the recipe.
        let path = if Path::new(m).exists() { std::fs::canonicalize(m).with_context(|| format!("--model {m}"))?.to_string_lossy().into_owned() } else { m.clone() };
        let template = recipe.models().into_iter().next().expect("validated: at least one model");
        // The recipe's revision belongs to the recipe's model: `--model org/name@rev` names another's.
        recipe.model = Some(ModelSection { path, name: None, revision: None, ..template });
        recipe.models.clear();
    }
    if let Some(d) = &opts.benchmarks_root {
        // Relative to the working directory, as --data-root; made absolute so the recipe's folder does not apply.
        recipe.benchmarks_root = Some(std::path::absolute(d).with_context(|| format!("--benchmarks-root {}", d.display()))?);
    }
    if let Some(d) = &opts.device {
        for m in recipe.model.iter_mut().chain(recipe.models.iter_mut()) {
            m.device = d.clone();
        }
    }
    let changed = opts.output_dir.is_some() || opts.model.is_some();
    let what = || format!("recipe {}{}", path.display(), if changed { " with the command line's changes" } else { "" });
    if changed {
        recipe.validate().with_context(what)?;
    }
    crate::data::pipeline::check_recipe(&recipe).with_context(what)?;
    Ok(recipe)
}

/// One cell of the grid.
#[derive(Debug, Clone, Serialize)]
pub struct GridRun {
    pub name: String,
    pub model: usize,
    pub condition: usize,
    pub lr: f64,
    pub seed: u64,
}

/// The grid in a fixed order (model, condition, lr, seed). Names carry the model only when there are several
/// models and the seed only when there are several seeds, so a one-model study keeps `<condition>-lr<lr>`.
pub fn grid(recipe: &Recipe, conditions: &[String]) -> Result<Vec<GridRun>> {
    let models = recipe.models();
    let seeds = recipe.train_seeds();
    let mut out = Vec::new();
    for (mi, m) in models.iter().enumerate() {
        for (ci, c) in conditions.iter().enumerate() {
            for lr in recipe.lrs() {
                for &seed in &seeds {
                    let mut name = String::new();
                    if models.len() > 1 {
                        name.push_str(&m.short_name());
                        name.push('-');
                    }
                    name.push_str(&format!("{c}-lr{}", crate::train::lr_label(lr)));
                    if seeds.len() > 1 {
                        name.push_str(&format!("-seed{seed}"));
                    }
                    out.push(GridRun { name, model: mi, condition: ci, lr, seed });
                }
            }
        }
    }
    // Distinct parts can still join into one name (model `a-b` with condition `c`, model `a` with `b-c`).
    crate::names::check_distinct(out.iter().map(|g| g.name.as_str()), "run name").context("the grid's runs need distinct folders: rename a model or condition")?;
    Ok(out)
}

/// A run as `trainer plan` shows it.
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
    /// Optimizer steps the run will take.
    pub steps: usize,
    /// Training examples per language.
    pub languages: std::collections::BTreeMap<String, usize>,
    pub origins: Vec<String>,
    /// Held-out examples carrying a dev set's id: held out of training for the dev sets.
    pub dev_heldout_examples: usize,
    /// What `keep = "best"` selects on: the `select_on` sets, or "held-out share" (empty unless keep = "best").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected_on: Option<String>,
}

/// A shared evaluation set (`[eval] sets`) or dev set (`[[dev_sets]]`) as `trainer plan` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedSet {
    pub name: String,
    pub examples: usize,
    pub target_tokens: usize,
    /// Examples per language.
    pub languages: std::collections::BTreeMap<String, usize>,
    /// A dev set's source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_of: Option<String>,
    /// A dev set's record ids: every condition holds out the records that carry them, so none trains on them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

fn planned_set(set: &EvalSet) -> PlannedSet {
    let mut languages = std::collections::BTreeMap::new();
    for l in &set.languages {
        *languages.entry(l.clone()).or_insert(0) += 1;
    }
    PlannedSet {
        name: set.name.clone(),
        examples: set.examples.len(),
        target_tokens: target_tokens(&set.examples),
        languages,
        dev_of: set.dev.as_ref().map(|(source, _)| source.clone()),
        ids: set.dev.as_ref().map(|(_, ids)| ids.clone()).unwrap_or_default(),
    }
}

/// The sets a condition's runs are evaluated on: every `[eval] sets` entry (cross-lingual results included), and
/// the dev sets it selects on or that hold a language it trains on — another language's dev set says nothing
/// about its selection and would only cost time.
pub(crate) fn sets_for<'a>(c: &ConditionData, sets: &'a [EvalSet]) -> Vec<&'a EvalSet> {
    sets.iter().filter(|s| s.dev.is_none() || c.select_on.contains(&s.name) || s.languages.iter().any(|l| !l.is_empty() && c.languages.contains_key(l))).collect()
}

/// What training iterates over: the examples, or them packed into sequences.
fn sequences(recipe: &Recipe, examples: &[Example]) -> Vec<Example> {
    if recipe.train.packing {
        crate::data::batch::pack(examples, recipe.train.max_seq_len)
    } else {
        examples.to_vec()
    }
}

fn target_tokens(examples: &[Example]) -> usize {
    examples.iter().map(Example::target_tokens).sum()
}

/// Optimizer steps of a run over `sequences` training sequences: max_steps, or epochs × batches per epoch.
pub(crate) fn total_steps(recipe: &Recipe, sequences: usize) -> usize {
    let t = &recipe.train;
    t.max_steps.unwrap_or_else(|| t.epochs.unwrap_or(1) * sequences.div_ceil(t.batch_size))
}

fn planned(recipe: &Recipe, g: &GridRun, model: &ModelSection, c: &ConditionData, sets: &[&EvalSet], train_sequences: usize) -> PlannedRun {
    PlannedRun {
        run: g.name.clone(),
        model: model.short_name(),
        condition: c.name.clone(),
        lr: g.lr,
        seed: g.seed,
        train_examples: c.train.len(),
        heldout_examples: c.heldout.len(),
        train_target_tokens: target_tokens(&c.train),
        heldout_target_tokens: target_tokens(&c.heldout),
        truncated_examples: c.truncated(),
        train_sequences,
        steps: total_steps(recipe, train_sequences),
        languages: c.languages.clone(),
        origins: c.origins.clone(),
        dev_heldout_examples: c.dev_heldout,
        selected_on: (recipe.eval.keep == "best").then(|| run::selection_label(c, sets)),
    }
}

/// The data of one model's runs (its tokenizer decides the examples): conditions and shared evaluation sets.
fn load_conditions(recipe: &Recipe, text: &ModelText, data_root: Option<&Path>) -> Result<(Vec<ConditionData>, Vec<EvalSet>, BadRecords, Dropped)> {
    let expanded = pipeline::expand_with_root(recipe, data_root)?;
    let encoder = text.encoder(&recipe.template.name, recipe.train.max_seq_len, TrainOn::parse(&recipe.template.train_on)?)?;
    let (conditions, dev_sets, mut bad, mut dropped) = pipeline::load(recipe, &expanded, &encoder)?;
    let mut sets = pipeline::load_eval_sets(recipe, &expanded, &encoder, &mut bad, &mut dropped)?;
    sets.extend(dev_sets);
    // A set without target tokens has no loss (0/0): selecting on it would silently keep the last evaluation.
    for s in sets.iter().filter(|s| conditions.iter().any(|c| c.select_on.contains(&s.name))) {
        if target_tokens(&s.examples) == 0 {
            bail!("[eval] select_on: set `{}` has no target token at max_seq_len {} (each of its {} examples is cut before its response), so it has no loss to select on; raise [train] max_seq_len or the set's share", s.name, recipe.train.max_seq_len, s.examples.len());
        }
    }
    Ok((conditions, sets, bad, dropped))
}

/// The recipe as one model can run it: `max_seq_len` bounded by the model's positions
/// (`max_position_embeddings`), with a warning when that cuts it.
fn bounded_for_model(recipe: &Recipe, model: &ModelSection, cfg: &crate::config::ModelConfig, warnings: &mut Vec<String>) -> Recipe {
    let mut bounded = recipe.clone();
    if let Some(max) = cfg.max_position_embeddings.filter(|&m| recipe.train.max_seq_len > m) {
        warnings.push(format!("warning: [train] max_seq_len {} is more than model `{}`'s {max} positions (max_position_embeddings): its sequences are cut at {max} tokens", recipe.train.max_seq_len, model.short_name()));
        bounded.train.max_seq_len = max;
    }
    bounded
}

/// Warnings about numbers only the data can judge: a batch larger than a condition's training sequences (each
/// step then takes them all) and warmup longer than a run. `sequences[i]` counts condition i's training sequences.
fn data_warnings(recipe: &Recipe, conditions: &[ConditionData], sequences: &[usize]) -> Vec<String> {
    let t = &recipe.train;
    let mut warnings = Vec::new();
    for (c, &n) in conditions.iter().zip(sequences) {
        if n < t.batch_size {
            warnings.push(format!("warning: [train] batch_size {} is more than condition `{}`'s {n} training sequences: each of its steps takes all {n}", t.batch_size, c.name));
        }
        let steps = total_steps(recipe, n);
        if t.warmup_steps > steps {
            warnings.push(format!("warning: [train] warmup_steps {} is more than the {steps} steps of condition `{}`'s runs: the learning rate never reaches its peak", t.warmup_steps, c.name));
        }
    }
    warnings
}

fn condition_names(recipe: &Recipe, data_root: Option<&Path>) -> Result<Vec<String>> {
    Ok(pipeline::expand_with_root(recipe, data_root)?.conditions.into_iter().map(|c| c.name).collect())
}

/// An `[[evals]]` entry with its files resolved against benchmarks_root: `path`, `dev` and the judge's `reference`
/// and `baseline` (the judge's `cache`, like output_dir, is relative to the working directory).
fn resolved_benchmark(recipe: &Recipe, spec: &crate::recipe::BenchmarkSection) -> crate::recipe::BenchmarkSection {
    let judge = spec.judge.as_ref().map(|j| crate::recipe::JudgeSection {
        reference: j.reference.as_ref().map(|p| recipe.resolve_benchmark(p)),
        baseline: j.baseline.as_ref().map(|p| recipe.resolve_benchmark(p)),
        ..j.clone()
    });
    crate::recipe::BenchmarkSection { path: recipe.resolve_benchmark(&spec.path), dev: spec.dev.as_ref().map(|d| recipe.resolve_benchmark(d)), judge, ..spec.clone() }
}

/// Expands the recipe and its data without training: what `trainer plan` shows.
pub fn plan_recipe(recipe_path: &Path, opts: &Options) -> Result<Plan> {
    let recipe = load_recipe(recipe_path, opts)?;
    let models = recipe.models();
    let runs = selected_runs(&recipe, opts)?;
    // The benchmarks are read only after training: a missing file is found now, not hours later.
    for spec in &recipe.evals {
        let judge_files = spec.judge.iter().flat_map(|j| j.reference.iter().chain(&j.baseline));
        for p in std::iter::once(&spec.path).chain(&spec.dev) {
            // mc and qa read a folder or glob pattern as one benchmark (CMMLU's and C-Eval's per-subject files).
            let resolved = recipe.resolve_benchmark(p);
            if ["mc", "qa"].contains(&spec.task.as_str()) {
                if let Err(e) = crate::eval::files::expand(&resolved) {
                    bail!("[[evals]] `{}`: {e:#} (evals paths resolve against benchmarks_root or --benchmarks-root, by default the recipe's folder)", spec.name);
                }
            } else if !resolved.is_file() {
                bail!("[[evals]] `{}`: no file {} (evals paths resolve against benchmarks_root or --benchmarks-root, by default the recipe's folder)", spec.name, resolved.display());
            }
        }
        for p in judge_files {
            let resolved = recipe.resolve_benchmark(p);
            if !resolved.is_file() {
                bail!("[[evals]] `{}`: no file {} (evals paths resolve against benchmarks_root or --benchmarks-root, by default the recipe's folder)", spec.name, resolved.display());
            }
        }
    }
    let mut out = Vec::new();
    let mut bad = BadRecords::default();
    let mut dropped = Dropped::new();
    let mut warnings = Vec::new();
    let mut memory = Vec::new();
    let mut sets = Vec::new();
    for (mi, model) in models.iter().enumerate() {
        let mine: Vec<&GridRun> = runs.iter().filter(|g| g.model == mi).collect();
        if mine.is_empty() {
            continue;
        }
        // Planning reads the config and tokenizer only: a hub model's weights are not downloaded for it.
        let files = locate(model, &recipe.base_dir, Need::Text).with_context(|| format!("model `{}`", model.short_name()))?;
        let text = ModelText::from_files(files).with_context(|| format!("model `{}`", model.short_name()))?;
        let mut found = Vec::new();
        let recipe = &bounded_for_model(&recipe, model, &text.config, &mut found);
        let (conditions, model_sets, b, d) = load_conditions(recipe, &text, opts.data_root.as_deref())?;
        // Bad and dropped records depend on the data, not the model: the first model's count stands for all (and
        // its tokenizer's counts of the sets' tokens).
        if out.is_empty() {
            bad = b;
            dropped = d;
            sets = model_sets.iter().map(planned_set).collect();
        }
        let seqs: Vec<Vec<Example>> = conditions.iter().map(|c| sequences(recipe, &c.train)).collect();
        let counts: Vec<usize> = seqs.iter().map(Vec::len).collect();
        found.extend(data_warnings(recipe, &conditions, &counts));
        for w in found {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        for g in mine {
            out.push(planned(recipe, g, model, &conditions[g.condition], &sets_for(&conditions[g.condition], &model_sets), counts[g.condition]));
        }
        let longest = seqs.iter().flatten().map(|e| e.ids.len()).max().unwrap_or(0);
        memory.push(memory_estimate(recipe, model, &text, longest).with_context(|| format!("model `{}`: memory estimate", model.short_name()))?);
    }
    Ok(Plan { runs: out, sets, bad_records: bad, dropped, warnings, memory })
}

/// What `trainer plan` shows.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub runs: Vec<PlannedRun>,
    /// The shared evaluation and dev sets every run is evaluated on.
    pub sets: Vec<PlannedSet>,
    pub bad_records: BadRecords,
    /// Records the sources' cleaning rules drop: source → rule → count.
    pub dropped: Dropped,
    /// Settings that will run but probably not as meant (e.g. warmup longer than the run).
    pub warnings: Vec<String>,
    /// Per model: the memory a training step needs, estimated from its config.
    pub memory: Vec<ModelMemory>,
}

/// One model's memory estimate in a plan.
#[derive(Debug, Serialize)]
pub struct ModelMemory {
    pub model: String,
    #[serde(flatten)]
    pub estimate: crate::memory::MemoryEstimate,
}

/// The estimate for `model`'s runs: its dtype and device, the recipe's micro-batch and LoRA, and sequences as
/// long as the longest the data gives (at most max_seq_len).
fn memory_estimate(recipe: &Recipe, model: &ModelSection, text: &ModelText, longest: usize) -> Result<ModelMemory> {
    let cuda = model.device.starts_with("cuda");
    let dtype = crate::runtime::dtype_for(&model.dtype, cuda)?;
    let config = std::fs::read_to_string(&text.files.config).with_context(|| format!("cannot read {}", text.files.config.display()))?;
    let json: serde_json::Value = crate::jsonutil::from_str(&config).with_context(|| format!("{} is not valid JSON", text.files.config.display()))?;
    let shape = crate::memory::Shape::from_config(&json).with_context(|| text.files.config.display().to_string())?;
    let spec = recipe.lora.spec()?;
    // A target the model does not have (an expert's w1 on a dense model, gate_proj on Mixtral) fails here, at
    // plan time, rather than when the run creates its adapter.
    crate::lora::check_targets(&spec.targets, &text.config).context("[lora] targets")?;
    let t = &recipe.train;
    let run = crate::memory::RunShape {
        dtype_bytes: dtype.size_in_bytes(),
        dtype: format!("{dtype:?}").to_lowercase(),
        cuda,
        micro_batch: t.micro_batch_size.unwrap_or(t.batch_size),
        seq_len: longest.max(1).min(t.max_seq_len),
        lora_r: spec.r,
        targets: spec.targets.iter().map(|&t| crate::memory::projection_index(t)).collect(),
        recompute: t.gradient_checkpointing,
    };
    Ok(ModelMemory { model: model.short_name(), estimate: crate::memory::estimate(&shape, &run) })
}

/// The runs of the grid this invocation trains: its shard, and only the named runs when names are given.
pub fn select(runs: Vec<GridRun>, opts: &Options) -> Result<Vec<GridRun>> {
    if let Some(unknown) = opts.only.iter().find(|n| !runs.iter().any(|g| &g.name == *n)) {
        bail!("--only {unknown}: no such run in the grid (`trainer plan` lists them)");
    }
    Ok(runs
        .into_iter()
        .enumerate()
        .filter(|(k, _)| opts.shard.is_none_or(|(i, n)| k % n == i))
        .filter(|(_, g)| opts.only.is_empty() || opts.only.contains(&g.name))
        .map(|(_, g)| g)
        .collect())
}

/// The grid of a loaded recipe, narrowed to what the command line selects.
fn selected_runs(recipe: &Recipe, opts: &Options) -> Result<Vec<GridRun>> {
    select(grid(recipe, &condition_names(recipe, opts.data_root.as_deref())?)?, opts)
}

/// The names of the runs a recipe's grid holds (for `--gpus`, which hands them out one at a time).
pub fn run_names(recipe_path: &Path, opts: &Options) -> Result<Vec<String>> {
    let recipe = load_recipe(recipe_path, opts)?;
    Ok(selected_runs(&recipe, opts)?.into_iter().map(|g| g.name).collect())
}

/// The settings a run's result depends on. A finished run is skipped, and a checkpoint resumed, only when the
/// fingerprint matches: changing the recipe under an output folder never mixes old and new results silently.
fn fingerprint(recipe: &Recipe, model: &ModelSection, c: &ConditionData, g: &GridRun) -> String {
    let mut train = serde_json::to_value(&recipe.train).expect("serializable");
    train["lr"] = serde_json::json!(g.lr);
    train["checkpoint_every"] = serde_json::Value::Null;
    let mut what = serde_json::json!({
        // A revision joins the path only when one is given, so folders trained before revisions existed still match.
        "model": match &model.revision {
            Some(r) => format!("{}@{r}", model.path),
            None => model.path.clone(),
        },
        "condition": c.name,
        "seed": g.seed,
        "data_seed": recipe.seed,
        "lora": recipe.lora,
        "train": train,
        "template": recipe.template,
        "eval": recipe.eval,
        "train_examples": c.train.len(),
        "train_target_tokens": target_tokens(&c.train),
        "heldout_examples": c.heldout.len(),
        "heldout_target_tokens": target_tokens(&c.heldout),
    });
    // Only when there are dev sets, so folders trained before dev sets existed keep their fingerprints.
    if !recipe.dev_sets.is_empty() {
        what["dev_sets"] = serde_json::json!(recipe.dev_sets);
    }
    format!("{:016x}", stable_hash(&[&what.to_string()]))
}

/// How a sweep ended.
pub struct SweepOutcome {
    pub summaries: Vec<RunSummary>,
    pub failed: usize,
    pub skipped: usize,
    /// Runs another process was training (their folders were locked).
    pub busy: Vec<String>,
}

/// Runs the recipe's grid (or this shard of it), then writes the report over everything finished in the output
/// folder. Errors only for problems with the recipe itself or Ctrl-C; failed runs are in the outcome.
pub fn run_recipe(recipe_path: &Path, opts: &Options, mode: Mode) -> Result<SweepOutcome> {
    let recipe = load_recipe(recipe_path, opts)?;
    let models = recipe.models();
    let runs = selected_runs(&recipe, opts)?;
    // Every model is found (hub models downloaded, with their own progress bars) before the sweep's bars start;
    // a model that cannot be had fails its runs below.
    let located: Vec<Option<Result<crate::checkpoint::ModelFiles>>> = models
        .iter()
        .enumerate()
        .map(|(mi, m)| runs.iter().any(|g| g.model == mi).then(|| locate(m, &recipe.base_dir, Need::Weights)))
        .collect();
    // Ctrl-C during a download stops it (the partial file is kept): the sweep stops too, no run failed.
    if let Some(first) = runs.first().filter(|_| INTERRUPTED.load(Ordering::SeqCst)) {
        return Err(Interrupted::BetweenRuns { next: first.name.clone() }.into());
    }
    // The output folder is created by the first run that writes into it: a recipe refused once its data and
    // model are read leaves nothing behind.
    let mut progress = Progress::new(mode, runs.len());
    let mut outcome = SweepOutcome { summaries: Vec::new(), failed: 0, skipped: 0, busy: Vec::new() };
    for ((mi, model), files) in models.iter().enumerate().zip(located) {
        let mine: Vec<&GridRun> = runs.iter().filter(|g| g.model == mi).collect();
        let Some(files) = files else { continue };
        let prepared = files.and_then(|files| prepare_model(&recipe, model, files, opts.data_root.as_deref(), &progress));
        let (recipe, session, conditions, sets, benchmarks, bad, dropped) = match prepared {
            Ok(x) => x,
            Err(e) => {
                // The model or its data could not be loaded: every run of it fails with that error.
                let error = format!("{e:#}");
                for g in mine {
                    let dir = recipe.output_dir.join(&g.name);
                    let summary = RunSummary { run: g.name.clone(), status: "failed".into(), error: Some(error.clone()), model: model.short_name(), model_path: model.path.clone(), lr: g.lr, seed: g.seed, ..Default::default() };
                    write_failed(&dir, &summary)?;
                    progress.run_failed(&g.name, &error);
                    outcome.failed += 1;
                    outcome.summaries.push(summary);
                }
                continue;
            }
        };
        let recipe = &recipe;
        let seqs: Vec<Vec<Example>> = conditions.iter().map(|c| sequences(recipe, &c.train)).collect();
        let counts: Vec<usize> = seqs.iter().map(Vec::len).collect();
        for w in data_warnings(recipe, &conditions, &counts) {
            progress.message(&w);
        }
        for g in mine {
            // Ctrl-C during a run's final evaluation or benchmarks lets that run finish; the sweep stops here.
            if INTERRUPTED.load(Ordering::SeqCst) {
                progress.finish();
                report::write(&recipe.output_dir).ok();
                return Err(Interrupted::BetweenRuns { next: g.name.clone() }.into());
            }
            let c = &conditions[g.condition];
            let Some(_lock) = RunLock::try_acquire(&recipe.output_dir.join(&g.name))? else {
                progress.run_skipped(&g.name, "busy: another trainer process is training it");
                outcome.busy.push(g.name.clone());
                continue;
            };
            let input = RunInput {
                recipe,
                session: &session,
                model,
                cond: c,
                train_seqs: &seqs[g.condition],
                sets: sets_for(c, &sets),
                benchmarks: &benchmarks,
                name: &g.name,
                lr: g.lr,
                seed: g.seed,
                fingerprint: fingerprint(recipe, model, c, g),
                dir: recipe.output_dir.join(&g.name),
                bad: &bad,
                dropped: &dropped,
            };
            match earlier(&input.dir, &input.fingerprint) {
                Earlier::Finished(done) => {
                    progress.run_skipped(&g.name, "finished earlier");
                    outcome.skipped += 1;
                    outcome.summaries.push(*done);
                    continue;
                }
                Earlier::OtherSettings => {
                    // Its results stay as they are: nothing is written into that folder.
                    let error = format!("{} holds a finished run with other settings; delete it or use another output_dir", input.dir.display());
                    progress.run_failed(&g.name, &error);
                    outcome.failed += 1;
                    outcome.summaries.push(RunSummary { status: "failed".into(), error: Some(error), ..input.summary() });
                    continue;
                }
                Earlier::None => {}
            }
            match run::execute(&input, &mut progress) {
                Ok(summary) => {
                    progress.run_finished(&summary);
                    outcome.summaries.push(summary);
                }
                Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
                    progress.finish();
                    report::write(&recipe.output_dir).ok();
                    return Err(e);
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    let summary = RunSummary { status: "failed".into(), error: Some(error.clone()), ..input.summary() };
                    write_failed(&input.dir, &summary)?;
                    progress.run_failed(&g.name, &error);
                    outcome.failed += 1;
                    outcome.summaries.push(summary);
                }
            }
        }
    }
    progress.finish();
    if outcome.summaries.is_empty() && report::collect(&recipe.output_dir).map_or(true, |r| r.is_empty()) {
        // Every selected run was busy in another process (or none was selected): nothing to report yet.
        return Ok(outcome);
    }
    let written = report::write(&recipe.output_dir)?;
    progress.message(&format!("report: {}", written.display()));
    Ok(outcome)
}

/// A model's recipe (bounded for it), session, data and benchmarks.
type Prepared = (Recipe, Session, Vec<ConditionData>, Vec<EvalSet>, Vec<(String, crate::eval::Task)>, BadRecords, Dropped);

/// A recipe model's files: a folder, or a hub id at the model's revision (downloaded when the cache lacks `need`).
fn locate(model: &ModelSection, base_dir: &Path, need: Need) -> Result<crate::checkpoint::ModelFiles> {
    crate::checkpoint::locate_model(&model.path, Some(base_dir), model.revision.as_deref(), need)
}

fn prepare_model(recipe: &Recipe, model: &ModelSection, files: crate::checkpoint::ModelFiles, data_root: Option<&Path>, progress: &Progress) -> Result<Prepared> {
    let device = crate::runtime::device(&model.device).with_context(|| format!("model `{}`: device", model.short_name()))?;
    let dtype = crate::runtime::dtype(&model.dtype, &device).with_context(|| format!("model `{}`: dtype", model.short_name()))?;
    let session = Session::from_files(files, dtype, &device)?;
    let mut warnings = Vec::new();
    let recipe = bounded_for_model(recipe, model, &session.model.cfg, &mut warnings);
    for w in &warnings {
        progress.message(w);
    }
    let recipe = &recipe;
    let (conditions, sets, bad, dropped) = load_conditions(recipe, &session.text, data_root)?;
    if bad.count > 0 {
        progress.message(&format!("skipped {} bad record(s) (on_bad_record = \"skip\"); the first: {}", bad.count, bad.first.join("; ")));
    }
    for line in crate::data::filter::describe(&dropped) {
        progress.message(&line);
    }
    progress.message(&format!(
        "model {} ({}, {} layers) on {device:?}/{dtype:?}: {}",
        session.text.files.dir.display(),
        session.model.cfg.architecture,
        session.model.cfg.num_layers,
        conditions.iter().map(|c| format!("{} {}+{}", c.name, c.train.len(), c.heldout.len())).collect::<Vec<_>>().join(", ")
    ));
    let mut benchmarks = Vec::new();
    for spec in &recipe.evals {
        let spec = resolved_benchmark(&recipe, spec);
        benchmarks.push((spec.name.clone(), crate::eval::Task::load(&spec, &session).with_context(|| format!("[[evals]] `{}`", spec.name))?));
    }
    Ok((recipe.clone(), session, conditions, sets, benchmarks, bad, dropped))
}

enum Earlier {
    None,
    Finished(Box<RunSummary>),
    OtherSettings,
}

/// What a run's folder holds from earlier sweeps: a finished run with these settings (skip it), one with other
/// settings (refuse to mix), or nothing finished (train, resuming from a checkpoint if there is one).
fn earlier(dir: &Path, fingerprint: &str) -> Earlier {
    let Some(s) = std::fs::read_to_string(dir.join("run.json")).ok().and_then(|t| serde_json::from_str::<RunSummary>(&t).ok()) else { return Earlier::None };
    match (s.status == "ok", s.fingerprint == fingerprint, dir.join("adapter/adapter_model.safetensors").is_file()) {
        (true, true, true) => Earlier::Finished(Box::new(s)),
        (true, false, _) => Earlier::OtherSettings,
        _ => Earlier::None,
    }
}

fn write_failed(dir: &Path, summary: &RunSummary) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::fsutil::write_atomic(&dir.join("run.json"), serde_json::to_string_pretty(summary)?.as_bytes())
}
