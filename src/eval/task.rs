//! A benchmark with its data read and tokenized, and its scoring: held-out loss, multiple choice or QA.

use super::items::{read_qa, QaItem};
use super::loss::evaluate_by_language;
use super::mc::{score_mc, McDoc, McStyle, ShotSource};
use super::mc_formats::{read_docs, Source};
use super::qa::{run_qa, score_qa_items};
use super::qa_formats::{read_bench, run_bench, BenchItem, QaFormat};
use crate::data::batch::Example;
use crate::lora::Adapter;
use super::prompt::PromptTemplate;
use crate::recipe::BenchmarkSection;
use anyhow::Result;

/// A task with its data read and tokenized.
pub enum Task {
    Loss { examples: Vec<Example>, languages: Vec<String>, batch_size: usize },
    Mc { items: Vec<McDoc>, examples: Vec<McDoc>, shots: usize, source: ShotSource, template: String, batch_size: usize },
    Qa { items: Vec<QaItem>, dev: Vec<QaItem>, shots: usize, max_new_tokens: usize, template: String, batch_size: usize },
    /// A generative benchmark in its released layout, scored as lm-eval's task.
    Bench { format: QaFormat, items: Vec<BenchItem>, dev: Vec<BenchItem>, shots: usize, max_new_tokens: usize, template: String, batch_size: usize },
    /// Answers to be judged: it writes its own answers and judgments files ([`run_benchmark`]).
    Judge(Box<super::judge::JudgeTask>),
}

impl Task {
    /// Reads and tokenizes `spec`'s data for `session`'s model.
    pub fn load(spec: &BenchmarkSection, session: &crate::session::Session) -> Result<Task> {
        use anyhow::Context;
        let what = || format!("{} {}", spec.task, spec.path.display());
        Ok(match spec.task.as_str() {
            "loss" => {
                let format = crate::data::format::Format::parse(spec.format_name())?;
                let records = crate::data::pipeline::read_file(&spec.path, format, spec.language.clone()).with_context(what)?;
                let encoder = session.text.encoder(spec.template_name(), spec.max_seq_len, crate::data::TrainOn::Response)?;
                Task::Loss {
                    examples: encoder.encode_all(&records)?,
                    languages: records.iter().map(|r| r.provenance.language.clone().unwrap_or_default()).collect(),
                    batch_size: spec.batch_size,
                }
            }
            "mc" => {
                let style = if spec.style == "letters" { McStyle::Letters } else { McStyle::Continuation };
                let read = |path: &std::path::Path| super::files::read_all(path, |path| read_docs(spec.format_name(), &Source { path, fields: &spec.fields, style, language: spec.language.as_deref() })).with_context(what);
                let items = read(&spec.path)?;
                // lm-eval leaves an item out of its own examples when they come from the scored split (MMMLU's only).
                let (examples, source) = match &spec.dev {
                    Some(dev) if dev != &spec.path => (read(dev)?, super::mc_formats::shot_source(spec.format_name())),
                    _ if spec.shots == 0 => (Vec::new(), ShotSource::Dev),
                    _ => (items.clone(), ShotSource::Test),
                };
                Task::Mc { items, examples, shots: spec.shots, source, template: spec.template_name().to_string(), batch_size: spec.batch_size }
            }
            "qa" if QaFormat::parse(spec.format_name())?.is_some() => {
                let format = QaFormat::parse(spec.format_name())?.expect("checked");
                let read = |p: &std::path::Path| super::files::read_all(p, |p| read_bench(p, format, &spec.fields, spec.language.as_deref()));
                Task::Bench {
                    format,
                    items: read(&spec.path).with_context(what)?,
                    dev: spec.dev.as_deref().map(read).transpose().with_context(what)?.unwrap_or_default(),
                    shots: spec.shots,
                    max_new_tokens: spec.max_new_tokens(),
                    template: spec.template_name().to_string(),
                    batch_size: spec.batch_size,
                }
            }
            "judge" => Task::Judge(Box::new(super::judge::JudgeSettings::from_section(spec)?.load(session.model.dtype, &session.model.device).with_context(what)?)),
            _ => Task::Qa {
                items: super::files::read_all(&spec.path, read_qa).with_context(what)?.into_iter().map(|mut it| {
                    it.language = it.language.or_else(|| spec.language.clone());
                    it
                }).collect(),
                dev: spec.dev.as_deref().map(|d| super::files::read_all(d, read_qa)).transpose().with_context(what)?.unwrap_or_default(),
                shots: spec.shots,
                max_new_tokens: spec.max_new_tokens(),
                template: spec.template_name().to_string(),
                batch_size: spec.batch_size,
            },
        })
    }

    /// The task's metrics as JSON: loss → {loss, perplexity, tokens, examples, languages}; mc → {acc, acc_norm,
    /// items, subjects (when the items carry subjects)}; qa → {exact_match, f1, contains, number, items}.
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
            Task::Mc { items, examples, shots, source, template, batch_size } => {
                let template = PromptTemplate::parse(template, &text.tokenizer)?;
                let mut r = score_mc(model, adapter, &text.tokenizer, items, examples, *shots, *source, &template, *batch_size)?;
                r.loglikelihoods.clear();
                let lines = items.iter().zip(&r.item_scores).enumerate().map(|(i, (it, (acc, norm)))| about(i, &it.id, &it.language, json!({ "acc": acc, "acc_norm": norm }))).collect();
                (serde_json::to_value(r)?, lines)
            }
            Task::Judge(_) => anyhow::bail!("a judge task writes its answers and judgments to files: run it with run_benchmark"),
            Task::Qa { items, dev, shots, max_new_tokens, template, batch_size } => {
                let template = PromptTemplate::parse(template, &text.tokenizer)?;
                let (r, preds) = run_qa(model, adapter, &text.tokenizer, text.eos_id, text.pad_id, items, dev, *shots, &template, *max_new_tokens, *batch_size)?;
                let scores = score_qa_items(&preds, items);
                let lines = items.iter().zip(&scores).enumerate().map(|(i, (it, s))| about(i, &it.id, &it.language, serde_json::to_value(s).expect("plain numbers"))).collect();
                (serde_json::to_value(r)?, lines)
            }
            Task::Bench { format, items, dev, shots, max_new_tokens, template, batch_size } => {
                let template = PromptTemplate::parse(template, &text.tokenizer)?;
                let outcomes = run_bench(model, adapter, &text.tokenizer, text.eos_id, text.pad_id, *format, items, dev, *shots, &template, *max_new_tokens, *batch_size)?;
                let lines = items
                    .iter()
                    .zip(&outcomes)
                    .enumerate()
                    .map(|(i, (it, o))| {
                        let mut scores = json!({ "exact_match": o.exact_match[0], "generation": o.generation });
                        if let Some(f1) = o.f1 {
                            scores["f1"] = json!(f1);
                        }
                        for (name, (f, em)) in format.filters().iter().zip(o.filtered.iter().zip(&o.exact_match)) {
                            scores["filters"][*name] = json!({ "filtered": f, "exact_match": em });
                        }
                        about(i, &it.id, &Some(it.language.clone()), scores)
                    })
                    .collect();
                (super::qa_formats::summary(*format, &outcomes), lines)
            }
        })
    }
}

/// Runs a sweep's benchmark: its per-item scores go to `items_path` (JSON lines, see [`Task::run_items`]; none for
/// loss tasks) and the returned metrics carry `spec` ([`BenchmarkSection::about`]) when the spec is known.
pub fn run_benchmark(task: &Task, spec: Option<&BenchmarkSection>, session: &crate::session::Session, adapter: Option<&Adapter>, items_path: &std::path::Path) -> Result<serde_json::Value> {
    if let Task::Judge(judge) = task {
        // The judgments are the per-item lines; the model's answers go beside them (<name>.answers.jsonl).
        let name = items_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let out = super::judge::JudgeOutputs { answers: items_path.with_file_name(format!("{name}.answers.jsonl")), judgments: items_path.to_path_buf(), summary: None };
        let mut r = judge.run(session, adapter, &out)?;
        if let Some(spec) = spec {
            r["spec"] = spec.about();
        }
        return Ok(r);
    }
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
