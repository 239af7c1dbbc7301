//! Held-out loss and perplexity: token-weighted mean NLL over response tokens (and the EOS).

pub mod judge;
pub mod multiturn;

use crate::data::batch::{Batch, Example};
use crate::lora::Adapter;
use crate::model::Model;
use anyhow::Result;
use serde::Serialize;

/// Loss and perplexity over a set of examples (also each language's share of a [`HeldoutResult`]).
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq)]
pub struct EvalResult {
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    pub tokens: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub perplexity: f64,
    pub examples: usize,
}

pub fn evaluate(model: &Model, adapter: Option<&Adapter>, examples: &[Example], batch_size: usize, pad_id: u32) -> Result<EvalResult> {
    evaluate_refs(model, adapter, &examples.iter().collect::<Vec<_>>(), batch_size, pad_id)
}

fn evaluate_refs(model: &Model, adapter: Option<&Adapter>, examples: &[&Example], batch_size: usize, pad_id: u32) -> Result<EvalResult> {
    let mut nll = 0f64;
    let mut tokens = 0usize;
    for refs in examples.chunks(batch_size.max(1)) {
        let batch = Batch::pad(refs, pad_id);
        nll += model.loss_sum(&batch, adapter)?;
        tokens += batch.target_tokens();
    }
    let loss = if tokens > 0 { nll / tokens as f64 } else { f64::NAN };
    Ok(EvalResult { loss, tokens, perplexity: loss.exp(), examples: examples.len() })
}

/// JSON has no NaN: serde_json writes it as null, and this reads null back as NaN.
pub fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Held-out results of one evaluation: over all examples and per language.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct HeldoutResult {
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub perplexity: f64,
    pub tokens: usize,
    pub examples: usize,
    /// Per language label ("" = unlabelled); token-weighted, so the languages combine into the overall loss.
    pub languages: std::collections::BTreeMap<String, EvalResult>,
}

/// Evaluates `examples`, grouping the loss by `labels` (one per example). Each language is batched on its own, so
/// its loss does not depend on which other languages share the held-out set.
pub fn evaluate_by_language(model: &Model, adapter: Option<&Adapter>, examples: &[Example], labels: &[String], batch_size: usize, pad_id: u32) -> Result<HeldoutResult> {
    anyhow::ensure!(examples.len() == labels.len(), "one language label per held-out example");
    let mut groups: std::collections::BTreeMap<&str, Vec<&Example>> = Default::default();
    for (e, l) in examples.iter().zip(labels) {
        groups.entry(l.as_str()).or_default().push(e);
    }
    let (mut nll, mut tokens) = (0f64, 0usize);
    let mut languages = std::collections::BTreeMap::new();
    for (label, group) in groups {
        let r = evaluate_refs(model, adapter, &group, batch_size, pad_id)?;
        if r.tokens > 0 {
            nll += r.loss * r.tokens as f64;
        }
        tokens += r.tokens;
        languages.insert(label.to_string(), r);
    }
    let loss = if tokens > 0 { nll / tokens as f64 } else { f64::NAN };
    Ok(HeldoutResult { loss, perplexity: loss.exp(), tokens, examples: examples.len(), languages })
}

/// An evaluation as the command line or a recipe's `[[evals]]` describes it.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Its name in run.json and the report (recipes only).
    #[serde(default)]
    pub name: String,
    /// "loss" (held-out loss and perplexity per language), "mc" (multiple choice) or "qa" (generative QA).
    pub task: String,
    pub path: std::path::PathBuf,
    /// mc / qa: the items k-shot prompts take their examples from.
    pub dev: Option<std::path::PathBuf>,
    #[serde(default)]
    pub shots: usize,
    /// mc: "continuation" or "letters".
    #[serde(default = "continuation")]
    pub style: String,
    /// qa: answer length limit.
    #[serde(default = "sixty_four")]
    pub max_new_tokens: usize,
    /// loss: the file's format and template, and its language when the records carry none.
    #[serde(default = "alpaca")]
    pub format: String,
    #[serde(default = "alpaca")]
    pub template: String,
    pub language: Option<String>,
    #[serde(default = "five_twelve")]
    pub max_seq_len: usize,
    #[serde(default = "eight")]
    pub batch_size: usize,
    /// The benchmark's own origin, for the report's ΔS analysis: "native" (written in the language) or
    /// "translated" (translated from another); unset: unlabelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_type: Option<String>,
    /// "structured" (answers scored by choice: mc) or "generative" (free text: qa); default: from the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
}

fn continuation() -> String {
    "continuation".into()
}
fn sixty_four() -> usize {
    64
}
fn alpaca() -> String {
    "alpaca".into()
}
fn five_twelve() -> usize {
    512
}
fn eight() -> usize {
    8
}

/// A task with its data read and tokenized.
pub enum Task {
    Loss { examples: Vec<Example>, languages: Vec<String>, batch_size: usize },
    Mc { items: Vec<crate::bench::McItem>, dev: Vec<crate::bench::McItem>, shots: usize, style: crate::bench::McStyle, batch_size: usize },
    Qa { items: Vec<crate::bench::QaItem>, dev: Vec<crate::bench::QaItem>, shots: usize, max_new_tokens: usize, batch_size: usize },
}

impl TaskSpec {
    #[allow(clippy::too_many_arguments)]
    pub fn parse(task: &str, data: &std::path::Path, dev: Option<&std::path::Path>, shots: usize, style: &str, max_new_tokens: usize, format: &str, template: &str, language: Option<&str>, max_seq_len: usize, batch_size: usize) -> Result<Self> {
        let spec = TaskSpec {
            name: String::new(),
            task: task.into(),
            path: data.into(),
            dev: dev.map(Into::into),
            shots,
            style: style.into(),
            max_new_tokens,
            format: format.into(),
            template: template.into(),
            language: language.map(str::to_string),
            max_seq_len,
            batch_size,
            origin_type: None,
            form: None,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Checks the settings without reading data.
    pub fn check(&self) -> Result<()> {
        match self.task.as_str() {
            "loss" | "mc" | "qa" => {}
            other => anyhow::bail!("task must be loss, mc or qa, not `{other}`"),
        }
        if !["continuation", "letters"].contains(&self.style.as_str()) {
            anyhow::bail!("style must be continuation or letters, not `{}`", self.style);
        }
        if self.task != "loss" && self.shots > 0 && self.dev.is_none() {
            anyhow::bail!("{}-shot prompts need a dev file", self.shots);
        }
        if let Some(o) = &self.origin_type {
            anyhow::ensure!(["native", "translated"].contains(&o.as_str()), "origin_type must be native or translated, not `{o}`");
        }
        if let Some(f) = &self.form {
            anyhow::ensure!(["structured", "generative"].contains(&f.as_str()), "form must be structured or generative, not `{f}`");
        }
        crate::data::format::Format::parse(&self.format)?;
        anyhow::ensure!(self.batch_size > 0 && self.max_seq_len > 1 && self.max_new_tokens > 0, "batch_size, max_seq_len and max_new_tokens must be positive");
        Ok(())
    }

    /// The benchmark's form: as set, else structured for mc, generative for qa, none for loss.
    pub fn form(&self) -> Option<String> {
        self.form.clone().or_else(|| match self.task.as_str() {
            "mc" => Some("structured".into()),
            "qa" => Some("generative".into()),
            _ => None,
        })
    }

    /// What the report needs to know of the benchmark, stored under `spec` in its run.json result.
    pub fn about(&self) -> serde_json::Value {
        serde_json::json!({ "task": self.task, "language": self.language, "origin_type": self.origin_type, "form": self.form() })
    }

    /// Reads and tokenizes the data for `session`'s model.
    pub fn load(&self, session: &crate::session::Session) -> Result<Task> {
        use anyhow::Context;
        let what = || format!("{} {}", self.task, self.path.display());
        Ok(match self.task.as_str() {
            "loss" => {
                let format = crate::data::format::Format::parse(&self.format)?;
                let records = crate::data::pipeline::read_file(&self.path, format, self.language.clone()).with_context(what)?;
                let encoder = session.text.encoder(&self.template, self.max_seq_len, crate::data::TrainOn::Response)?;
                Task::Loss {
                    examples: encoder.encode_all(&records)?,
                    languages: records.iter().map(|r| r.provenance.language.clone().unwrap_or_default()).collect(),
                    batch_size: self.batch_size,
                }
            }
            "mc" => Task::Mc {
                items: crate::bench::read_mc(&self.path).with_context(what)?.into_iter().map(|mut it| {
                    it.language = it.language.or_else(|| self.language.clone());
                    it
                }).collect(),
                dev: self.dev.as_deref().map(crate::bench::read_mc).transpose().with_context(what)?.unwrap_or_default(),
                shots: self.shots,
                style: if self.style == "letters" { crate::bench::McStyle::Letters } else { crate::bench::McStyle::Continuation },
                batch_size: self.batch_size,
            },
            _ => Task::Qa {
                items: crate::bench::read_qa(&self.path).with_context(what)?.into_iter().map(|mut it| {
                    it.language = it.language.or_else(|| self.language.clone());
                    it
                }).collect(),
                dev: self.dev.as_deref().map(crate::bench::read_qa).transpose().with_context(what)?.unwrap_or_default(),
                shots: self.shots,
                max_new_tokens: self.max_new_tokens,
                batch_size: self.batch_size,
            },
        })
    }
}

impl Task {
    /// The task's metrics as JSON: loss → {loss, perplexity, tokens, examples, languages}; mc → {acc, acc_norm,
    /// items}; qa → {exact_match, f1, contains, number, items}.
    pub fn run(&self, session: &crate::session::Session, adapter: Option<&Adapter>) -> Result<serde_json::Value> {
        Ok(self.run_items(session, adapter)?.0)
    }

    /// The task's metrics (as [`Task::run`]) and, for mc and qa, one JSON object per item: `index`, `id` and
    /// `language` when the item has them, and its score on each metric (mc: acc, acc_norm; qa: exact_match, f1,
    /// contains, and number for numeric references). Loss tasks have no per-item scores.
    pub fn run_items(&self, session: &crate::session::Session, adapter: Option<&Adapter>) -> Result<(serde_json::Value, Vec<serde_json::Value>)> {
        use serde_json::json;
        let (model, text) = (&session.model, &session.text);
        let about = |i: usize, id: &Option<String>, language: &Option<String>, mut scores: serde_json::Value| {
            scores["index"] = json!(i);
            if let Some(id) = id {
                scores["id"] = json!(id);
            }
            if let Some(l) = language {
                scores["language"] = json!(l);
            }
            scores
        };
        Ok(match self {
            Task::Loss { examples, languages, batch_size } => (serde_json::to_value(evaluate_by_language(model, adapter, examples, languages, *batch_size, text.pad_id)?)?, Vec::new()),
            Task::Mc { items, dev, shots, style, batch_size } => {
                let mut r = crate::bench::score_mc(model, adapter, &text.tokenizer, items, dev, *shots, *style, *batch_size)?;
                r.loglikelihoods.clear();
                let lines = items.iter().zip(&r.item_scores).enumerate().map(|(i, (it, (acc, norm)))| about(i, &it.id, &it.language, json!({ "acc": acc, "acc_norm": norm }))).collect();
                (serde_json::to_value(r)?, lines)
            }
            Task::Qa { items, dev, shots, max_new_tokens, batch_size } => {
                let (r, preds) = crate::bench::run_qa(model, adapter, &text.tokenizer, text.eos_id, text.pad_id, items, dev, *shots, *max_new_tokens, *batch_size)?;
                let scores = crate::bench::score_qa_items(&preds, items);
                let lines = items.iter().zip(&scores).enumerate().map(|(i, (it, s))| about(i, &it.id, &it.language, serde_json::to_value(s).expect("plain numbers"))).collect();
                (serde_json::to_value(r)?, lines)
            }
        })
    }
}

/// Runs a sweep's benchmark: its per-item scores go to `items_path` (JSON lines, see [`Task::run_items`]; none for
/// loss tasks) and the returned metrics carry `spec` ([`TaskSpec::about`]) when the spec is known.
pub fn run_benchmark(task: &Task, spec: Option<&TaskSpec>, session: &crate::session::Session, adapter: Option<&Adapter>, items_path: &std::path::Path) -> Result<serde_json::Value> {
    let (mut r, lines) = task.run_items(session, adapter)?;
    if !lines.is_empty() {
        let mut text = String::new();
        for l in &lines {
            text.push_str(&l.to_string());
            text.push('\n');
        }
        if let Some(dir) = items_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        crate::fsutil::write_atomic(items_path, text.as_bytes())?;
    }
    if let Some(spec) = spec {
        r["spec"] = spec.about();
    }
    Ok(r)
}

/// One line for people: the task's headline numbers.
pub fn summary_line(r: &serde_json::Value) -> String {
    let keys = ["loss", "perplexity", "acc", "acc_norm", "exact_match", "f1", "contains", "number", "score", "win_rate"];
    let mut parts: Vec<String> = keys.iter().filter_map(|k| r.get(*k).and_then(|v| v.as_f64()).map(|v| format!("{k} {v:.4}"))).collect();
    if let Some(n) = r.get("items").or_else(|| r.get("examples")) {
        parts.push(format!("({n} items)"));
    }
    if let Some(n) = r.get("unparsed").filter(|n| n.as_u64() != Some(0)) {
        parts.push(format!("{n} unparsed judgments"));
    }
    parts.join("  ")
}

/// The adapters of a sweep's finished runs, and the runs that were skipped with why (failed, unfinished, an
/// unreadable run.json or adapter).
pub struct SweepAdapters {
    pub adapters: Vec<(String, Adapter)>,
    pub skipped: std::collections::BTreeMap<String, String>,
}

/// Every run folder of a sweep's output folder: the adapter of each finished run, and what was skipped.
pub fn sweep_adapters(dir: &std::path::Path, cfg: &crate::config::ModelConfig, device: &candle_core::Device) -> Result<SweepAdapters> {
    use anyhow::Context;
    let mut out = SweepAdapters { adapters: Vec::new(), skipped: Default::default() };
    let mut folders: Vec<std::path::PathBuf> = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    folders.sort();
    for folder in folders {
        let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let summary = folder.join("run.json");
        if !summary.is_file() {
            // Run folders always hold config.json from their start; other folders (plots/) are not runs.
            if folder.join("config.json").is_file() {
                out.skipped.insert(name, "unfinished: no run.json yet".into());
            }
            continue;
        }
        let read = std::fs::read_to_string(&summary).map_err(anyhow::Error::from).and_then(|t| Ok(serde_json::from_str::<crate::sweep::run::RunSummary>(&t)?));
        let why = match read {
            Err(e) => format!("unreadable {}: {e:#}", summary.display()),
            Ok(r) if r.status != "ok" => format!("{}: {}", r.status, r.error.as_deref().unwrap_or("no error recorded")),
            Ok(_) => match Adapter::load_peft(&folder.join("adapter"), cfg, device) {
                Ok(a) => {
                    out.adapters.push((name, a));
                    continue;
                }
                Err(e) => format!("{e:#}"),
            },
        };
        out.skipped.insert(name, why);
    }
    anyhow::ensure!(!out.adapters.is_empty(), "{} holds no finished runs{}", dir.display(), out.skipped.iter().map(|(r, why)| format!("\n  skipped {r}: {why}")).collect::<String>());
    Ok(out)
}
