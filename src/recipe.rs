//! The recipe file (TOML): what to train, on what, with which settings. Unknown keys are errors, and every
//! error names the recipe file (and, for syntax and type errors, the line).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub mod benchmark;
pub use benchmark::{BenchmarkSection, JudgeSection, MC_FORMATS, PROMPT_TEMPLATES, QA_FORMATS};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub output_dir: PathBuf,
    /// Seeds the data (mixes, held-out splits) and, without `seeds`, the training (LoRA init, batch order,
    /// dropout).
    #[serde(default)]
    pub seed: u64,
    /// One run per training seed; the data stays as `seed` made it.
    pub seeds: Option<Vec<u64>>,
    /// One model, or `[[models]]` for several (one set of runs per model).
    pub model: Option<ModelSection>,
    #[serde(default)]
    pub models: Vec<ModelSection>,
    #[serde(default)]
    pub lora: LoraSection,
    pub train: TrainSection,
    #[serde(default)]
    pub template: TemplateSection,
    #[serde(default)]
    pub sources: Vec<SourceSection>,
    /// Experimental conditions; without any, all sources form one condition named after the recipe.
    #[serde(default)]
    pub conditions: Vec<ConditionSection>,
    /// Shared dev sets: per language, part of one source (its native data) held out of every condition and
    /// evaluated for every run, so that `select_on` picks every condition's epoch on the same text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dev_sets: Vec<DevSetSection>,
    #[serde(default)]
    pub eval: EvalSection,
    /// Benchmarks every run's kept adapter is scored on at the end (paths relative to the recipe's folder).
    #[serde(default)]
    pub evals: Vec<BenchmarkSection>,
    /// Where source paths resolve (relative to the recipe's folder); default: the recipe's folder.
    pub data_root: Option<PathBuf>,
    /// Where `[[evals]]` paths (`path`, `dev`) resolve (relative to the recipe's folder); default: the recipe's
    /// folder. `--benchmarks-root` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benchmarks_root: Option<PathBuf>,
    /// "error" (default): a bad record stops the run naming file, line and field; "skip": skip and report.
    #[serde(default = "error_policy")]
    pub on_bad_record: String,
    /// The folder of the recipe file: relative model and data paths resolve against it.
    #[serde(skip_deserializing)]
    pub base_dir: PathBuf,
}

/// Sequences per optimizer step beyond any data set a LoRA study trains on.
pub const MAX_BATCH: usize = 1 << 20;
/// Tokens per sequence beyond any supported model's context.
pub const MAX_SEQ_LEN: usize = 1 << 21;

fn error_policy() -> String {
    "error".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Share of each condition held out (seeded, stratified by language) and never trained on.
    #[serde(default)]
    pub heldout_fraction: f64,
    /// When to evaluate on the held-out share: "epoch" (default: after every epoch) or every N steps. Training
    /// always ends with an evaluation.
    #[serde(default)]
    pub every: EvalEvery,
    /// Which adapters to export: "last" (default), "best" (lowest held-out loss — of the held-out share, or
    /// without one of the first of `sets` —, as the native-vs-translated study keeps the best of its epochs) or "all" (one per evaluation, plus the last).
    #[serde(default = "last")]
    pub keep: String,
    /// Sequences per evaluation forward; default: the training micro-batch size.
    pub batch_size: Option<usize>,
    /// Sources evaluated in full for every run at every evaluation (never trained on): shared test sets, so that
    /// conditions are compared on the same data (e.g. each language's native test set).
    #[serde(default)]
    pub sets: Vec<String>,
    /// `keep = "best"` chooses the kept evaluation by the loss on these of `sets` or `[[dev_sets]]` (a name or a
    /// list; `{lang}` is the condition's language) instead of the condition's own held-out share, so that every
    /// condition of a language is selected on the same text. Several sets: their token-weighted mean loss.
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub select_on: Vec<String>,
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom("select_on must be a set name or a list of set names")),
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        Self { heldout_fraction: 0.0, every: EvalEvery::default(), keep: last(), batch_size: None, sets: Vec::new(), select_on: Vec::new() }
    }
}

fn last() -> String {
    "last".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EvalEvery {
    Steps(usize),
    Named(EvalPoint),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalPoint {
    Epoch,
}

impl Default for EvalEvery {
    fn default() -> Self {
        EvalEvery::Named(EvalPoint::Epoch)
    }
}

/// `[[dev_sets]]`: the records of `source` whose ids come first in the held-out order of the data seed (the ids
/// its own condition holds out), evaluated for every run; every condition holds out each record carrying one of
/// those ids (after its source's `id_strip`), whatever its source or language, so none trains on them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DevSetSection {
    /// The set's name, for `[eval] select_on`; `{lang}` with `languages`.
    pub name: String,
    /// The source the set is drawn from (its records need ids); `{lang}` with `languages`.
    pub source: String,
    /// The share of the source's records (per language); default: `[eval] heldout_fraction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Expands the set once per language, substituting `{lang}` in its name and source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub languages: Option<Vec<String>>,
}

impl DevSetSection {
    /// The share of its source the set takes: its own `fraction`, or the recipe's `heldout_fraction`.
    pub fn fraction_of(&self, eval: &EvalSection) -> Result<f64> {
        let f = self.fraction.unwrap_or(eval.heldout_fraction);
        if self.fraction.is_none() && f == 0.0 {
            bail!("[[dev_sets]] `{}`: give fraction, or set [eval] heldout_fraction (its default)", self.name);
        }
        if !(f > 0.0 && f < 1.0) {
            bail!("[[dev_sets]] `{}`: fraction must be in (0, 1), not {f}", self.name);
        }
        Ok(f)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSection {
    pub name: String,
    pub sources: Vec<EntrySection>,
    /// "concat" (default), "parallel" or "sampled" (over sources aligned by record id).
    #[serde(default = "concat")]
    pub compose: String,
    pub size: Option<usize>,
    pub match_size_of: Option<String>,
    /// Expands the condition once per language, substituting `{lang}` in its name and source names.
    pub languages: Option<Vec<String>>,
}

fn concat() -> String {
    "concat".into()
}

/// A source in a condition: its name, or a table with how much of it to take.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EntrySection {
    Name(String),
    Sized(SizedEntry),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SizedEntry {
    pub source: String,
    pub count: Option<usize>,
    pub fraction: Option<f64>,
    pub weight: Option<f64>,
    pub prune: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A model directory, or a hub id (from the local Hugging Face cache, downloaded into it when missing).
    pub path: String,
    /// The hub revision: a branch, tag or commit (default `main`); hub ids only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Short name for run names and the report; default: the last part of `path`.
    pub name: Option<String>,
    /// "auto" (f32 on CPU, bf16 on CUDA), "f32" or "bf16".
    #[serde(default = "auto")]
    pub dtype: String,
    /// "cpu" or "cuda" (or "cuda:N").
    #[serde(default = "cpu")]
    pub device: String,
}

impl ModelSection {
    /// The model's name in run names and the report.
    pub fn short_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let p = self.path.trim_end_matches('/');
            p.rsplit('/').next().unwrap_or(p).to_string()
        })
    }
}

fn auto() -> String {
    "auto".into()
}
fn cpu() -> String {
    "cpu".into()
}

/// Defaults are the studies' setting: rank 8, alpha 16, dropout 0.05 on q/k/v.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    pub r: Option<usize>,
    pub alpha: Option<f64>,
    pub dropout: Option<f64>,
    pub targets: Option<Vec<String>>,
    pub rslora: Option<bool>,
    /// A PEFT adapter directory to start from; its adapter_config.json fixes r, alpha and targets.
    pub init_adapter: Option<PathBuf>,
}

impl LoraSection {
    /// The adapter these settings describe (defaults filled in), checked: r ≥ 1, alpha > 0, dropout in [0, 1),
    /// known targets.
    pub fn spec(&self) -> Result<crate::lora::LoraSpec> {
        use crate::lora::Target;
        let mut targets = match &self.targets {
            Some(names) => names
                .iter()
                .map(|n| Target::parse(n).with_context(|| format!("[lora] targets: `{n}` is not one of q, k, v, o, gate, up, down (dense MLP) or router, w1, w2, w3 (Mixtral's router and experts)")))
                .collect::<Result<Vec<_>>>()?,
            None => vec![Target::Q, Target::K, Target::V],
        };
        if targets.is_empty() {
            bail!("[lora] targets is empty");
        }
        targets.sort();
        targets.dedup();
        let r = self.r.unwrap_or(8);
        if r == 0 {
            bail!("[lora] r must be at least 1");
        }
        let alpha = self.alpha.unwrap_or(16.0);
        if !(alpha > 0.0 && alpha.is_finite()) {
            bail!("[lora] alpha must be a positive number, not {alpha} (the update is scaled by alpha/r)");
        }
        let dropout = self.dropout.unwrap_or(0.05);
        if !(0.0..1.0).contains(&dropout) {
            bail!("[lora] dropout must be in [0, 1), not {dropout}");
        }
        Ok(crate::lora::LoraSpec { r, alpha, dropout, targets, rslora: self.rslora.unwrap_or(false) })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum LrList {
    One(f64),
    Many(Vec<f64>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// One run per learning rate.
    pub lr: LrList,
    pub max_steps: Option<usize>,
    pub epochs: Option<usize>,
    /// Sequences per optimizer step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Sequences per forward/backward; defaults to `batch_size` (no accumulation).
    pub micro_batch_size: Option<usize>,
    #[serde(default = "default_seq")]
    pub max_seq_len: usize,
    #[serde(default = "default_scheduler")]
    pub scheduler: String,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "yes")]
    pub shuffle: bool,
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Pack several examples into each sequence of up to max_seq_len tokens (attention and positions restart
    /// at every example). batch_size then counts packed sequences.
    #[serde(default)]
    pub packing: bool,
    /// Batch sequences of similar length together (less padding).
    #[serde(default)]
    pub group_by_length: bool,
    /// dtype of the exported adapter tensors: "f32" (default) or the training dtype ("bf16").
    #[serde(default = "f32_name")]
    pub save_dtype: String,
    /// Save the training state (adapter, optimizer, position) every N steps, so an interrupted run resumes
    /// there; 0 saves only at evaluations and on Ctrl-C.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
}

fn default_checkpoint_every() -> usize {
    50
}

fn default_batch() -> usize {
    8
}
fn default_seq() -> usize {
    512
}
fn default_scheduler() -> String {
    "linear".into()
}
fn default_clip() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn f32_name() -> String {
    "f32".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSection {
    #[serde(default = "alpaca")]
    pub name: String,
    #[serde(default = "response")]
    pub train_on: String,
}

impl Default for TemplateSection {
    fn default() -> Self {
        Self { name: alpaca(), train_on: response() }
    }
}

fn alpaca() -> String {
    "alpaca".into()
}
fn response() -> String {
    "response".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    pub name: String,
    pub path: PathBuf,
    #[serde(default = "alpaca")]
    pub format: String,
    pub language: Option<String>,
    /// native, translated, round-trip, or any label.
    pub origin: Option<String>,
    /// The translation engine, for translated data (e.g. "google", "cohere").
    pub engine: Option<String>,
    /// Field-name overrides: `fields = { instruction = "prompt" }`.
    #[serde(default)]
    pub fields: crate::data::format::FieldMap,
    /// Expands the source once per language, substituting `{lang}` in its name and path.
    pub languages: Option<Vec<String>>,
    /// For files mixing languages with no language field: language by id part, e.g. `{ spa = "es" }` labels
    /// `aya_spa_12` as es.
    #[serde(default)]
    pub id_languages: std::collections::BTreeMap<String, String>,
    /// A regular expression removed (every match) from each record id, so that aligned files' ids agree:
    /// `"_(google|cohere)_translated_to_[a-z]+"` makes `aya_spa_google_translated_to_eng_google_translated_to_spa_7`
    /// `aya_spa_7`, the id of the native record it was translated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_strip: Option<String>,
    /// Where a record's id comes from: "field" (default: the format's id field, `fields.id` renames it) or
    /// "index" (its 0-based position in the file, as a string: for translations that keep the original's order
    /// and carry no ids, so the same index in each language's file aligns the same instruction).
    #[serde(default, skip_serializing_if = "IdFrom::is_field")]
    pub id_from: IdFrom,
    /// Cleaning: drop a record whose instruction, input or response (any turn of a conversation) matches one of
    /// these regular expressions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_if: Vec<String>,
    /// Cleaning: drop a record whose response (its last turn) has fewer characters than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_chars: Option<usize>,
    /// Cleaning: drop a record whose response (its last turn) has more characters than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chars: Option<usize>,
    /// Cleaning: drop exact duplicates (same instruction, input and response; every turn of a conversation),
    /// keeping the first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dedup: bool,
}

/// Where a source's record ids come from (`id_from`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdFrom {
    /// The format's id field (records without one have no id).
    #[default]
    Field,
    /// The record's 0-based position in its file (every item counts, bad ones too, so the index never shifts).
    Index,
}

impl IdFrom {
    fn is_field(&self) -> bool {
        *self == IdFrom::Field
    }
}

/// Applies `key.path=value` overrides (from `--set`) to a parsed recipe. The value is read as a TOML value
/// (`1e-4`, `[1e-4, 1e-6]`, `true`, `"x"`, `{ local = "judge" }`) or, when it is not one, taken as a string
/// (`chatml`). An empty value (`key=`) removes the key, so its default applies again. Arrays of tables
/// (`[[evals]]`, `[[sources]]`, …) are addressed by an entry's `name` (`evals.open-es.max_new_tokens=64`), a 0-based
/// index (`evals.2.max_new_tokens=8`) or `*` for every entry (`evals.*.max_new_tokens=8`); under `*` a deeper path
/// only reaches the entries that already hold its tables (`evals.*.judge.max_tokens=8` changes the judged ones),
/// and a `*` that reaches no entry is an error.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<()> {
    for o in overrides {
        let (key, raw) = o.split_once('=').with_context(|| format!("--set {o}: write key=value, e.g. train.epochs=1"))?;
        let value = (!raw.trim().is_empty()).then(|| {
            toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()))
        });
        let parts: Vec<&str> = key.trim().split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            bail!("--set {o}: `{key}` is not a key path like train.epochs");
        }
        let reached = set_path(table, &parts, 0, value.as_ref(), false).map_err(|e| anyhow::anyhow!("--set {o}: {e}"))?;
        if reached == 0 {
            // Only a `*` reaches nothing: over an empty list, or over entries none of which holds the path's table.
            let below = parts[parts.iter().position(|p| *p == "*").map_or(0, |i| i + 1)..parts.len() - 1].join(".");
            if below.is_empty() {
                bail!("--set {o}: `*` matched no entry: the list is empty");
            }
            bail!("--set {o}: `*` matched no entry that holds `{below}`");
        }
    }
    Ok(())
}

/// Sets (or, with `None`, removes) `parts[at..]` below `node`; returns how many places were changed. `wild`: under
/// a `*`, where a missing table means "not this entry" rather than "create it".
fn set_path(node: &mut toml::Table, parts: &[&str], at: usize, value: Option<&toml::Value>, wild: bool) -> Result<usize> {
    let key = parts[at];
    if at == parts.len() - 1 {
        // max_steps and epochs are alternatives: setting one replaces the other.
        match (parts.len(), parts[0], key) {
            (2, "train", "max_steps") => drop(node.remove("epochs")),
            (2, "train", "epochs") => drop(node.remove("max_steps")),
            _ => {}
        }
        match value {
            Some(v) => drop(node.insert(key.to_string(), v.clone())),
            None => drop(node.remove(key)),
        }
        return Ok(1);
    }
    let here = || parts[..=at].join(".");
    if !node.contains_key(key) {
        if wild {
            return Ok(0);
        }
        node.insert(key.to_string(), toml::Value::Table(Default::default()));
    }
    match node.get_mut(key).expect("inserted above") {
        toml::Value::Table(t) => set_path(t, parts, at + 1, value, wild),
        toml::Value::Array(items) => {
            let which = parts[at + 1];
            anyhow::ensure!(at + 2 < parts.len(), "`{}` is a list of tables: name a key of its entries, e.g. {}.{which}.name", here(), here());
            let chosen: Vec<usize> = if which == "*" {
                (0..items.len()).collect()
            } else if let Ok(i) = which.parse::<usize>() {
                anyhow::ensure!(i < items.len(), "`{}` has {} entries (0 to {}), not {i}", here(), items.len(), items.len().saturating_sub(1));
                vec![i]
            } else {
                let name = |t: &toml::Value| t.get("name").and_then(toml::Value::as_str).unwrap_or_default().to_string();
                let named: Vec<usize> = (0..items.len()).filter(|&i| name(&items[i]) == which).collect();
                if named.is_empty() {
                    let names: Vec<String> = items.iter().map(name).collect();
                    bail!("`{}` has no entry named `{which}` (its names: {}; or address one by its 0-based index, or `*` for all)", here(), names.join(", "));
                }
                named
            };
            let mut reached = 0;
            for i in chosen {
                let toml::Value::Table(t) = &mut items[i] else { bail!("`{}.{i}` is not a table", here()) };
                reached += set_path(t, parts, at + 2, value, wild || which == "*")?;
            }
            Ok(reached)
        }
        _ => bail!("`{}` is not a table", here()),
    }
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &[])
    }

    /// Loads a recipe with `--set` overrides applied before it is checked.
    pub fn load_with(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read recipe {}", path.display()))?;
        // Parsing the text first keeps line numbers in syntax, type and unknown-key errors.
        let mut recipe: Recipe = toml::from_str(&text).map_err(|e| anyhow::anyhow!("recipe {}: {e}", path.display()))?;
        if !overrides.is_empty() {
            let mut table: toml::Table = toml::from_str(&text).map_err(|e| anyhow::anyhow!("recipe {}: {e}", path.display()))?;
            apply_overrides(&mut table, overrides)?;
            recipe = Recipe::deserialize(toml::Value::Table(table)).map_err(|e| anyhow::anyhow!("recipe {} with --set {}: {e}", path.display(), overrides.join(" ")))?;
        }
        recipe.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        recipe.validate().with_context(|| format!("recipe {}", path.display()))?;
        Ok(recipe)
    }

    /// The models of the grid, `[model]` or `[[models]]`.
    pub fn models(&self) -> Vec<ModelSection> {
        self.model.iter().chain(&self.models).cloned().collect()
    }

    /// The training seeds of the grid.
    pub fn train_seeds(&self) -> Vec<u64> {
        self.seeds.clone().unwrap_or_else(|| vec![self.seed])
    }

    pub fn lrs(&self) -> Vec<f64> {
        match &self.train.lr {
            LrList::One(x) => vec![*x],
            LrList::Many(v) => v.clone(),
        }
    }

    /// Resolves a path written in the recipe against the recipe's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Resolves an `[[evals]]` path: against `benchmarks_root` (itself relative to the recipe's folder), or
    /// without one against the recipe's folder.
    pub fn resolve_benchmark(&self, p: &Path) -> PathBuf {
        match &self.benchmarks_root {
            // Joined once: resolving the joined path again would prefix a relative recipe folder twice.
            Some(root) => self.resolve(root).join(p),
            None => self.resolve(p),
        }
    }

    /// Checks everything that can be checked without reading data or the model; `trainer plan` and `trainer
    /// run` both call it, after the command line's changes.
    pub fn validate(&self) -> Result<()> {
        match (&self.model, self.models.is_empty()) {
            (None, true) => bail!("no model: give [model] or [[models]]"),
            (Some(_), false) => bail!("give [model] or [[models]], not both"),
            _ => {}
        }
        if self.output_dir.as_os_str().is_empty() {
            bail!("output_dir is empty: name the folder the runs are written to, e.g. output_dir = \"runs/study\"");
        }
        crate::names::check_component(&self.name, "name")?;
        let models = self.models();
        for (i, m) in models.iter().enumerate() {
            if m.revision.is_some() {
                crate::hub::split_spec(&m.path, m.revision.as_deref()).with_context(|| format!("model `{}`: revision", m.short_name()))?;
            }
            if let Some(same) = models[..i].iter().find(|o| o.path == m.path && o.dtype == m.dtype && o.revision == m.revision) {
                bail!("[[models]]: `{}` and `{}` are the same model (path {}, dtype {}); list each model once", same.short_name(), m.short_name(), m.path, m.dtype);
            }
        }
        let names: Vec<String> = models.iter().map(ModelSection::short_name).collect();
        crate::names::check_distinct(names.iter().map(String::as_str), "model name").context("[[models]]: give models distinct `name`s")?;
        if let Some(seeds) = &self.seeds {
            let unique: std::collections::BTreeSet<_> = seeds.iter().collect();
            if seeds.is_empty() || unique.len() != seeds.len() {
                bail!("seeds: give one or more distinct seeds");
            }
        }
        let t = &self.train;
        let lrs = self.lrs();
        if lrs.is_empty() {
            bail!("[train] lr: give at least one learning rate");
        }
        if let Some(bad) = lrs.iter().find(|&&x| !(x > 0.0 && x.is_finite())) {
            bail!("[train] lr: {bad} is not a positive learning rate");
        }
        if let Some((_, a)) = lrs.iter().enumerate().find(|(i, a)| lrs[..*i].contains(a)) {
            bail!("[train] lr: {a} is listed twice; each learning rate is one run");
        }
        match (t.max_steps, t.epochs) {
            (Some(_), Some(_)) => bail!("[train]: give max_steps or epochs, not both"),
            (None, None) => bail!("[train]: give max_steps or epochs"),
            (Some(0), _) | (_, Some(0)) => bail!("[train]: max_steps / epochs must be at least 1"),
            _ => {}
        }
        if t.batch_size == 0 {
            bail!("[train] batch_size must be at least 1");
        }
        let micro = t.micro_batch_size.unwrap_or(t.batch_size);
        if micro == 0 || !t.batch_size.is_multiple_of(micro) {
            bail!("[train] batch_size ({}) must be a multiple of micro_batch_size ({micro})", t.batch_size);
        }
        if t.max_seq_len < 2 {
            bail!("[train] max_seq_len must be at least 2");
        }
        // Bounds no data or model can use; the data and the model bound them further once they are read.
        if t.batch_size > MAX_BATCH {
            bail!("[train] batch_size {} is more than {MAX_BATCH} sequences per step, which no data set here can fill", t.batch_size);
        }
        if t.max_seq_len > MAX_SEQ_LEN {
            bail!("[train] max_seq_len {} is more than {MAX_SEQ_LEN} tokens, beyond any supported model's positions", t.max_seq_len);
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            bail!("[train] weight_decay must be ≥ 0, not {}", t.weight_decay);
        }
        if !(t.max_grad_norm >= 0.0 && t.max_grad_norm.is_finite()) {
            bail!("[train] max_grad_norm must be ≥ 0 (0 disables clipping), not {}", t.max_grad_norm);
        }
        crate::optim::Schedule::parse(&t.scheduler).context("[train] scheduler")?;
        if !["f32", "bf16"].contains(&t.save_dtype.as_str()) {
            bail!("[train] save_dtype must be \"f32\" or \"bf16\"");
        }
        self.lora.spec()?;
        const TEMPLATES: [&str; 5] = ["alpaca", "llama2-chat", "gemma", "chatml", "model"];
        if !TEMPLATES.contains(&self.template.name.as_str()) {
            bail!("[template] name `{}` is not one of {}", self.template.name, TEMPLATES.join(", "));
        }
        crate::data::TrainOn::parse(&self.template.train_on).context("[template] train_on")?;
        if self.sources.is_empty() {
            bail!("no [[sources]]: name at least one data file");
        }
        for s in &self.sources {
            let format = crate::data::format::Format::parse(&s.format).with_context(|| format!("[[sources]] `{}`", s.name))?;
            crate::data::format::validate_fields(format, &s.fields).with_context(|| format!("[[sources]] `{}`: fields", s.name))?;
        }
        if !["error", "skip"].contains(&self.on_bad_record.as_str()) {
            bail!("on_bad_record must be \"error\" or \"skip\"");
        }
        let e = &self.eval;
        if !(0.0..1.0).contains(&e.heldout_fraction) {
            bail!("[eval] heldout_fraction must be in [0, 1)");
        }
        if e.every == EvalEvery::Steps(0) {
            bail!("[eval] every must be \"epoch\" or a number of steps ≥ 1");
        }
        if !["best", "last", "all"].contains(&e.keep.as_str()) {
            bail!("[eval] keep must be \"best\", \"last\" or \"all\", not `{}`", e.keep);
        }
        if e.keep != "last" && e.heldout_fraction == 0.0 && e.sets.is_empty() && self.dev_sets.is_empty() {
            bail!("[eval] keep = \"{}\" compares held-out losses: set [eval] heldout_fraction (e.g. 0.05), sets or [[dev_sets]]", e.keep);
        }
        for d in &self.dev_sets {
            d.fraction_of(e)?;
        }
        if !e.select_on.is_empty() && e.keep != "best" {
            bail!("[eval] select_on chooses the evaluation that keep = \"best\" keeps; keep is `{}`", e.keep);
        }
        if e.batch_size == Some(0) {
            bail!("[eval] batch_size must be at least 1");
        }
        crate::names::check_distinct(self.evals.iter().map(|b| b.name.as_str()), "[[evals]] name")?;
        for b in &self.evals {
            b.check().with_context(|| format!("[[evals]] `{}`", b.name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn load(text: &str) -> Result<Recipe> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, text).unwrap();
        Recipe::load(&p)
    }

    #[test]
    fn benchmark_paths_resolve_once_against_a_relative_recipe_folder() {
        let mut r: Recipe = toml::from_str(OK).unwrap();
        r.base_dir = PathBuf::from("recipes");
        assert_eq!(r.resolve_benchmark(Path::new("x/a.csv")), PathBuf::from("recipes/x/a.csv"));
        r.benchmarks_root = Some(PathBuf::from("../benchmarks"));
        assert_eq!(r.resolve_benchmark(Path::new("x/a.csv")), PathBuf::from("recipes/../benchmarks/x/a.csv"));
        r.benchmarks_root = Some(PathBuf::from("/data/b"));
        assert_eq!(r.resolve_benchmark(Path::new("x/a.csv")), PathBuf::from("/data/b/x/a.csv"));
        assert_eq!(r.resolve_benchmark(Path::new("/abs/a.csv")), PathBuf::from("/abs/a.csv"));
    }

    #[test]
    fn set_enters_lists_of_tables_by_name_or_star() {
        let text = "[train]\nepochs = 3\n[[evals]]\nname = \"a\"\ntask = \"judge\"\njudge = { url = \"https://x/v1\", model = \"gpt-4\" }\n[[evals]]\nname = \"b\"\ntask = \"mc\"\n";
        let mut t: toml::Table = toml::from_str(text).unwrap();
        let set = |t: &mut toml::Table, o: &[&str]| apply_overrides(t, &o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        set(&mut t, &["evals.a.judge={ local = \"data/tiny-llama\" }", "evals.*.batch_size=2", "train.max_steps=2"]).unwrap();
        let evals = t["evals"].as_array().unwrap();
        assert_eq!(evals[0]["judge"].as_table().unwrap().len(), 1, "the whole judge table is replaced");
        assert_eq!(evals[0]["judge"]["local"].as_str(), Some("data/tiny-llama"));
        assert_eq!((evals[0]["batch_size"].as_integer(), evals[1]["batch_size"].as_integer()), (Some(2), Some(2)));
        assert!(t["train"].get("epochs").is_none() && t["train"]["max_steps"].as_integer() == Some(2));
        let e = set(&mut t, &["evals.c.shots=1"]).unwrap_err().to_string();
        assert!(e.contains("no entry named `c`") && e.contains("a, b"), "{e}");
        let e = set(&mut t, &["evals.a=1"]).unwrap_err().to_string();
        assert!(e.contains("is a list"), "{e}");
    }

    /// The smallest recipe that loads; other modules' tests build their cases on it too.
    pub(crate) const OK: &str = r#"
name = "t"
output_dir = "out"
[model]
path = "m"
[train]
lr = [1e-4, 1e-6]
max_steps = 3
[[sources]]
name = "en"
path = "en.json"
"#;

    #[test]
    fn minimal_recipe_loads_with_defaults() {
        let r = load(OK).unwrap();
        assert_eq!(r.lrs(), vec![1e-4, 1e-6]);
        assert_eq!(r.train.batch_size, 8);
        assert_eq!(r.template.name, "alpaca");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let e = load(&OK.replace("max_steps = 3", "max_steps = 3\nlearning_rate = 1")).unwrap_err().to_string();
        assert!(e.contains("r.toml") && e.contains("learning_rate") && e.contains("line 9"), "{e}");
    }

    #[test]
    fn inconsistent_batching_is_refused() {
        let e = format!("{:#}", load(&OK.replace("max_steps = 3", "max_steps = 3\nbatch_size = 8\nmicro_batch_size = 3")).unwrap_err());
        assert!(e.contains("multiple of micro_batch_size"), "{e}");
        let e = format!("{:#}", load(&OK.replace("max_steps = 3", "epochs = 1\nmax_steps = 3")).unwrap_err());
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn the_recipe_is_a_schema_that_imports_no_reader_of_it() {
        // The modules that read a recipe (data pipeline, evaluation, sweep, training, sessions, generation) import
        // it; importing any of them back would make the recipe part of a cycle again.
        let readers = ["crate::data::pipeline", "crate::data::filter", "crate::data::mix", "crate::eval", "crate::sweep", "crate::train", "crate::session", "crate::generate", "super::data"];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![dir.join("recipe.rs")];
        files.extend(std::fs::read_dir(dir.join("recipe")).unwrap().map(|e| e.unwrap().path()));
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            // The code, not these tests, which name the readers.
            let code = text.split("#[cfg(test)]").next().unwrap();
            for (n, line) in code.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")) {
                if let Some(r) = readers.iter().find(|r| line.contains(*r)) {
                    panic!("{}:{}: the recipe imports `{r}`, which reads the recipe", f.display(), n + 1);
                }
            }
        }
    }

    #[test]
    fn set_reaches_list_entries_by_index_or_all_and_an_empty_value_unsets() {
        let text = "[train]\nepochs = 2\n[[evals]]\nname = \"a\"\n[[evals]]\nname = \"b\"\n[evals.judge]\nurl = \"https://x/v1\"\nmodel = \"gpt-4\"\n";
        let set = |o: &[&str]| -> Result<toml::Table> {
            let mut t: toml::Table = toml::from_str(text).unwrap();
            apply_overrides(&mut t, &o.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
            Ok(t)
        };
        let t = set(&["evals.*.max_new_tokens=8", "evals.1.name=c", "evals.*.judge.url=", "evals.*.judge.local=data/tiny-llama"]).unwrap();
        let evals = t["evals"].as_array().unwrap();
        assert_eq!((evals[0]["max_new_tokens"].as_integer(), evals[1]["max_new_tokens"].as_integer()), (Some(8), Some(8)));
        assert_eq!(evals[1]["name"].as_str(), Some("c"));
        assert!(evals[0].get("judge").is_none(), "under `*` a missing table is not created");
        let judge = evals[1]["judge"].as_table().unwrap();
        assert_eq!((judge.get("url"), judge["local"].as_str(), judge["model"].as_str()), (None, Some("data/tiny-llama"), Some("gpt-4")));
        let err = |o: &str| format!("{:#}", set(&[o]).unwrap_err());
        assert!(err("evals.2.name=x").contains("has 2 entries"), "{}", err("evals.2.name=x"));
        assert!(err("evals.x.name=y").contains("0-based index"));
        assert!(err("evals.*=y").contains("list of tables"));
        assert!(err("evals.*.cache.dir=y").contains("matched no entry that holds `cache`"), "{}", err("evals.*.cache.dir=y"));
        assert!(err("train.epochs.x=1").contains("`train.epochs` is not a table"));
        assert_eq!(set(&["train.max_steps=1"]).unwrap()["train"].as_table().unwrap().get("epochs"), None);
    }
}
