//! `scores.csv`, the long table of every run's scores (one row per run × benchmark × metric × language, with a 95%
//! bootstrap interval over items), and the ΔS analysis built on it: ΔS = S(condition) − S(native) for the same
//! model, training languages, lr, seed, benchmark, metric and item language, paired tests on the same items, and
//! the correlation of ΔS with S(native) per benchmark type.

use super::run::RunSummary;
use crate::stats;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Metrics in the order tables show them (score: the LLM judge's mean 1–10 rating; win_rate: its pairwise win rate);
/// loss and perplexity (lower is better) stay out of ΔS.
pub const METRICS: [&str; 10] = ["acc", "acc_norm", "exact_match", "f1", "contains", "number", "score", "win_rate", "loss", "perplexity"];
/// The bootstrap's confidence level.
pub const LEVEL: f64 = 0.95;

/// One row of scores.csv, with the per-item scores behind it (keyed by item id, else index) for paired tests.
#[derive(Debug, Clone)]
pub struct Score {
    pub run: String,
    pub model: String,
    pub condition: String,
    /// The items' language ("all" for the row over several languages, "" when unlabelled).
    pub language: String,
    /// The training data's origin ("native", "translated", "round-trip"; several joined by "+").
    pub origin: String,
    /// Its translation engine, if any.
    pub engine: String,
    /// The origin column of the report's tables: origin and engine, as run.json's `origins`.
    pub origin_label: String,
    pub train_languages: String,
    pub lr: f64,
    pub seed: u64,
    pub benchmark: String,
    /// mc | qa | loss, or "set" for an `[eval] sets` entry.
    pub task: String,
    /// The benchmark's own origin (`origin_type`) and form, "" when unlabelled.
    pub benchmark_origin: String,
    pub form: String,
    pub metric: String,
    pub score: f64,
    pub items: usize,
    pub ci: Option<(f64, f64)>,
    pub item_scores: Vec<(String, f64)>,
}

impl Score {
    /// The benchmark type ΔS correlations are grouped by.
    pub fn kind(&self) -> String {
        let o = if self.benchmark_origin.is_empty() { "unlabelled origin" } else { &self.benchmark_origin };
        let f = if self.form.is_empty() { "unlabelled form" } else { &self.form };
        format!("{o}, {f}")
    }

    /// Everything but origin and condition: what a native run and another run are paired on.
    fn pair_key(&self) -> (String, String, String, u64, String, String, String) {
        (self.model.clone(), self.train_languages.clone(), format!("{:e}", self.lr), self.seed, self.benchmark.clone(), self.metric.clone(), self.language.clone())
    }
}

/// "translated (google)" → ("translated", "google"); several origins joined with "+".
fn origin_engine(origins: &[String]) -> (String, String) {
    let parts: Vec<(String, String)> = origins
        .iter()
        .map(|o| match o.strip_suffix(')').and_then(|s| s.split_once(" (")) {
            Some((origin, engine)) => (origin.to_string(), engine.to_string()),
            None => (o.clone(), String::new()),
        })
        .collect();
    let engines: Vec<String> = parts.iter().map(|p| p.1.clone()).filter(|e| !e.is_empty()).collect();
    (parts.iter().map(|p| p.0.clone()).collect::<Vec<_>>().join("+"), engines.join("+"))
}

fn origin_label(r: &RunSummary) -> String {
    if r.origins.is_empty() {
        "?".into()
    } else {
        r.origins.join(" + ")
    }
}

/// The per-item lines of `<run>/benchmarks/<name>.jsonl`, if the file is there and readable.
fn item_lines(r: &RunSummary, name: &str) -> Option<Vec<Value>> {
    let text = std::fs::read_to_string(r.dir.join(&r.run).join("benchmarks").join(format!("{name}.jsonl"))).ok()?;
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).ok()).collect()
}

/// Every score of every finished run, in run order.
pub fn scores(runs: &[RunSummary]) -> Vec<Score> {
    let mut out = Vec::new();
    for r in runs.iter().filter(|r| r.status == "ok") {
        let (origin, engine) = origin_engine(&r.origins);
        let base = Score {
            run: r.run.clone(),
            model: r.model.clone(),
            condition: r.condition.clone(),
            language: String::new(),
            origin,
            engine,
            origin_label: origin_label(r),
            train_languages: r.languages.join("+"),
            lr: r.lr,
            seed: r.seed,
            benchmark: String::new(),
            task: String::new(),
            benchmark_origin: String::new(),
            form: String::new(),
            metric: String::new(),
            score: f64::NAN,
            items: 0,
            ci: None,
            item_scores: Vec::new(),
        };
        for (name, v) in &r.benchmarks {
            let spec = &v["spec"];
            let task = spec["task"].as_str().map(str::to_string).unwrap_or_else(|| {
                if v.get("acc").is_some() {
                    "mc".into()
                } else if v.get("exact_match").is_some() {
                    "qa".into()
                } else {
                    "loss".into()
                }
            });
            let bench = Score {
                benchmark: name.clone(),
                task: task.clone(),
                benchmark_origin: spec["origin_type"].as_str().unwrap_or("").to_string(),
                form: spec["form"].as_str().unwrap_or("").to_string(),
                ..base.clone()
            };
            let spec_language = spec["language"].as_str().unwrap_or("").to_string();
            match item_lines(r, name) {
                Some(lines) if !lines.is_empty() => out.extend(from_items(&bench, &lines, &spec_language)),
                _ if task == "loss" => out.extend(from_heldout(&bench, v)),
                _ => {
                    // No per-item file (a run from before they were written): the summary, without an interval.
                    for m in METRICS.iter().filter(|m| v.get(**m).is_some_and(Value::is_number)) {
                        let items = v.get("items").and_then(Value::as_u64).unwrap_or(0) as usize;
                        out.push(Score { language: spec_language.clone(), metric: m.to_string(), score: v[*m].as_f64().unwrap_or(f64::NAN), items, ..bench.clone() });
                    }
                }
            }
        }
        for (name, h) in &r.sets {
            let bench = Score { benchmark: name.clone(), task: "set".into(), ..base.clone() };
            out.extend(from_heldout(&bench, &serde_json::to_value(h).unwrap_or_default()));
        }
    }
    out
}

/// Rows of a loss result (a loss benchmark or a shared set): loss and perplexity per language, and over all when
/// there are several. Token-weighted, so there are no per-item scores and no interval.
fn from_heldout(bench: &Score, v: &Value) -> Vec<Score> {
    let mut out = Vec::new();
    let langs: Vec<(&String, &Value)> = v["languages"].as_object().map(|m| m.iter().collect()).unwrap_or_default();
    let mut push = |language: &str, x: &Value| {
        for m in ["loss", "perplexity"] {
            if let Some(s) = x[m].as_f64() {
                out.push(Score { language: language.to_string(), metric: m.into(), score: s, items: x["examples"].as_u64().unwrap_or(0) as usize, ..bench.clone() });
            }
        }
    };
    if langs.len() == 1 {
        push(langs[0].0, v);
    } else {
        for (l, x) in &langs {
            push(l, x);
        }
        push("all", v);
    }
    out
}

/// Rows from per-item lines: each metric per language (and over all when there are several), the mean with its
/// bootstrap interval.
fn from_items(bench: &Score, lines: &[Value], spec_language: &str) -> Vec<Score> {
    let language = |l: &Value| l["language"].as_str().unwrap_or(spec_language).to_string();
    let key = |l: &Value| l["id"].as_str().map(str::to_string).unwrap_or_else(|| format!("#{}", l["index"]));
    let languages: BTreeSet<String> = lines.iter().map(language).collect();
    let mut groups: Vec<String> = languages.iter().cloned().collect();
    if groups.len() > 1 {
        groups.push("all".into());
    }
    let mut out = Vec::new();
    for g in groups {
        let chosen: Vec<&Value> = lines.iter().filter(|l| g == "all" || language(l) == g).collect();
        for m in METRICS {
            let item_scores: Vec<(String, f64)> = chosen.iter().filter_map(|l| l[m].as_f64().map(|x| (key(l), x))).collect();
            if item_scores.is_empty() {
                continue;
            }
            let xs: Vec<f64> = item_scores.iter().map(|p| p.1).collect();
            out.push(Score {
                language: g.clone(),
                metric: m.into(),
                score: stats::mean(&xs),
                items: xs.len(),
                ci: stats::bootstrap_ci(&xs, LEVEL, stats::RESAMPLES, stats::SEED),
                item_scores,
                ..bench.clone()
            });
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The number as scores.csv and report.md write it (shortest round-trip form; empty for none).
pub fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        String::new()
    }
}

pub const HEADER: &str = "model,condition,language,origin,engine,lr,seed,benchmark,metric,score,items,low,high,run,task,benchmark_origin,form,train_languages";

pub fn csv(scores: &[Score]) -> String {
    let mut out = format!("{HEADER}\n");
    for s in scores {
        let (low, high) = s.ci.map(|(l, h)| (num(l), num(h))).unwrap_or_default();
        let row = [
            csv_field(&s.model),
            csv_field(&s.condition),
            csv_field(&s.language),
            csv_field(&s.origin),
            csv_field(&s.engine),
            format!("{:e}", s.lr),
            s.seed.to_string(),
            csv_field(&s.benchmark),
            s.metric.clone(),
            num(s.score),
            s.items.to_string(),
            low,
            high,
            csv_field(&s.run),
            s.task.clone(),
            csv_field(&s.benchmark_origin),
            csv_field(&s.form),
            csv_field(&s.train_languages),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// ΔS of one run against the native run of the same model, training languages, lr and seed, on one benchmark,
/// metric and item language, with the paired tests on the items both scored.
#[derive(Debug, Clone)]
pub struct Delta<'a> {
    pub native: &'a Score,
    pub other: &'a Score,
    pub delta: f64,
    /// Items paired (by id, else index).
    pub paired: usize,
    pub bootstrap_p: Option<f64>,
    /// For 0/1 metrics (accuracies).
    pub mcnemar: Option<stats::McNemar>,
}

/// ΔS for every non-native run with a native counterpart; benchmark metrics only (no loss or perplexity, no
/// shared sets).
pub fn deltas(scores: &[Score]) -> Vec<Delta<'_>> {
    let eligible = |s: &&Score| s.task != "set" && s.task != "loss" && s.metric != "loss" && s.metric != "perplexity" && s.score.is_finite();
    let mut native: BTreeMap<_, &Score> = BTreeMap::new();
    for s in scores.iter().filter(eligible).filter(|s| s.origin == "native") {
        // The first native run of a key (by run name) is the reference.
        native.entry(s.pair_key()).or_insert(s);
    }
    let mut out = Vec::new();
    for s in scores.iter().filter(eligible).filter(|s| s.origin != "native") {
        let Some(n) = native.get(&s.pair_key()) else { continue };
        let theirs: BTreeMap<&str, f64> = n.item_scores.iter().map(|(k, x)| (k.as_str(), *x)).collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (k, x) in &s.item_scores {
            if let Some(y) = theirs.get(k.as_str()) {
                a.push(*x);
                b.push(*y);
            }
        }
        let binary = !a.is_empty() && a.iter().chain(&b).all(|x| *x == 0.0 || *x == 1.0);
        let mcnemar = binary.then(|| {
            let right_native_only = a.iter().zip(&b).filter(|(x, y)| **y == 1.0 && **x == 0.0).count() as u64;
            let right_other_only = a.iter().zip(&b).filter(|(x, y)| **x == 1.0 && **y == 0.0).count() as u64;
            stats::mcnemar(right_native_only, right_other_only)
        });
        out.push(Delta { native: n, other: s, delta: s.score - n.score, paired: a.len(), bootstrap_p: stats::paired_bootstrap_p(&a, &b, stats::RESAMPLES, stats::SEED), mcnemar });
    }
    out
}

/// The metric a benchmark's ΔS plot shows: the first of acc, exact_match, f1, contains, number, score, win_rate,
/// acc_norm it has (score and win_rate: a judged benchmark's only metrics).
pub fn headline_metric<'a>(deltas: &[Delta<'a>], benchmark: &str) -> Option<String> {
    ["acc", "exact_match", "f1", "contains", "number", "score", "win_rate", "acc_norm"].into_iter().find(|m| deltas.iter().any(|d| d.other.benchmark == benchmark && d.other.metric == *m)).map(str::to_string)
}

/// Correlation of ΔS with S(native): n, Pearson r, Spearman rho.
pub struct Correlation {
    pub kind: String,
    pub origin: String,
    pub metric: String,
    pub n: usize,
    pub pearson: Option<f64>,
    pub spearman: Option<f64>,
}

/// Per benchmark type × compared origin × metric, over every pair (models, lrs, seeds, languages, benchmarks of
/// the type).
pub fn correlations(deltas: &[Delta]) -> Vec<Correlation> {
    // (kind, origin, metric order, metric) → (S(native), ΔS) pairs.
    type Points = (Vec<f64>, Vec<f64>);
    let mut groups: BTreeMap<(String, String, usize, String), Points> = BTreeMap::new();
    for d in deltas.iter().filter(|d| d.other.language != "all") {
        let order = METRICS.iter().position(|m| *m == d.other.metric).unwrap_or(METRICS.len());
        let g = groups.entry((d.other.kind(), d.other.origin_label.clone(), order, d.other.metric.clone())).or_default();
        g.0.push(d.native.score);
        g.1.push(d.delta);
    }
    groups
        .into_iter()
        .map(|((kind, origin, _, metric), (x, y))| Correlation { kind, origin, metric, n: x.len(), pearson: stats::pearson(&x, &y), spearman: stats::spearman(&x, &y) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_split_into_origin_and_engine() {
        assert_eq!(origin_engine(&["translated (google)".into()]), ("translated".into(), "google".into()));
        assert_eq!(origin_engine(&["native".into()]), ("native".into(), "".into()));
        assert_eq!(origin_engine(&["native".into(), "round-trip (cohere)".into()]), ("native+round-trip".into(), "cohere".into()));
    }
}
