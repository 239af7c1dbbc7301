//! The sweep's report, rebuilt from whatever runs in an output folder (or several) have a run.json (so shards and
//! partial sweeps merge): `report.csv` (one row per run), `scores.csv` (one row per run × benchmark × metric ×
//! language, see [`super::scores`]), `report.md` (the benchmarks' native vs translated vs round-trip comparison per
//! language, model and learning rate, ΔS and its statistics, shared sets, every run, failures, and the conditions'
//! own held-out perplexity as a training diagnostic), `plots/<condition>.svg` (training and held-out loss curves)
//! and `plots/delta-<benchmark>.svg` (ΔS against S(native)).

use super::run::RunSummary;
use super::scores::{Delta, Score, METRICS};
use crate::stats::{RESAMPLES, SEED};
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Reads every `<dir>/*/run.json`, sorted by run name.
pub fn collect(dir: &Path) -> Result<Vec<RunSummary>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path().join("run.json");
        if let Ok(text) = std::fs::read_to_string(&p) {
            let mut r = serde_json::from_str::<RunSummary>(&text).with_context(|| format!("{} is not a run summary", p.display()))?;
            r.dir = dir.to_path_buf();
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.run.cmp(&b.run));
    Ok(out)
}

/// Writes report.md, report.csv, scores.csv and the plots into `dir`; returns the path of report.md.
pub fn write(dir: &Path) -> Result<PathBuf> {
    write_many(&[dir.to_path_buf()], dir)
}

/// The report over the runs of several output folders (each with its own runs, e.g. one per model), written into
/// `out`; returns the path of report.md.
pub fn write_many(dirs: &[PathBuf], out: &Path) -> Result<PathBuf> {
    let mut runs = Vec::new();
    for dir in dirs {
        let found = collect(dir)?;
        if found.is_empty() {
            anyhow::bail!("{} holds no runs (no */run.json)", dir.display());
        }
        runs.extend(found);
    }
    runs.sort_by(|a, b| (&a.model, &a.run, &a.dir).cmp(&(&b.model, &b.run, &b.dir)));
    let dir = out;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::fsutil::write_atomic(&dir.join("report.csv"), csv(&runs).as_bytes())?;
    let scores = super::scores::scores(&runs);
    crate::fsutil::write_atomic(&dir.join("scores.csv"), super::scores::csv(&scores).as_bytes())?;
    let deltas = super::scores::deltas(&scores);
    let plots = super::plots::write(dir, &runs)?;
    let delta_plots = super::plots::write_deltas(dir, &deltas)?;
    let md = markdown_with(&runs, &plots, &scores, &deltas, &delta_plots);
    let path = dir.join("report.md");
    crate::fsutil::write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

fn languages(runs: &[RunSummary]) -> Vec<String> {
    let set: BTreeSet<String> = runs.iter().filter_map(|r| r.heldout.as_ref()).flat_map(|h| h.languages.keys().filter(|l| !l.is_empty()).cloned()).collect();
    set.into_iter().collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn num(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite()).map(|v| format!("{v}")).unwrap_or_default()
}

pub fn csv(runs: &[RunSummary]) -> String {
    let langs = languages(runs);
    let mut header = vec!["run", "status", "model", "condition", "languages", "origins", "lr", "seed", "steps", "best_step", "best_epoch", "heldout_loss", "heldout_perplexity"].into_iter().map(String::from).collect::<Vec<_>>();
    for l in &langs {
        header.push(format!("heldout_loss_{l}"));
        header.push(format!("heldout_perplexity_{l}"));
    }
    let sets: BTreeSet<String> = runs.iter().flat_map(|r| r.sets.keys().cloned()).collect();
    for set in &sets {
        header.push(format!("set_{set}_loss"));
        header.push(format!("set_{set}_perplexity"));
    }
    let metrics = benchmark_columns(runs);
    for (name, metric) in &metrics {
        header.push(format!("{name}_{metric}"));
    }
    header.extend(["train_examples", "train_tokens", "final_train_loss", "seconds", "error"].map(String::from));
    let mut out = header.join(",") + "\n";
    for r in runs {
        let h = r.heldout.as_ref();
        let mut row = vec![
            csv_field(&r.run),
            r.status.clone(),
            csv_field(&r.model),
            csv_field(&r.condition),
            csv_field(&r.languages.join("+")),
            csv_field(&r.origins.join("+")),
            format!("{:e}", r.lr),
            r.seed.to_string(),
            r.steps.to_string(),
            r.best.as_ref().map(|b| b.step.to_string()).unwrap_or_default(),
            r.best.as_ref().map(|b| b.epoch.to_string()).unwrap_or_default(),
            num(h.map(|h| h.loss)),
            num(h.map(|h| h.perplexity)),
        ];
        for l in &langs {
            let x = h.and_then(|h| h.languages.get(l));
            row.push(num(x.map(|x| x.loss)));
            row.push(num(x.map(|x| x.perplexity)));
        }
        for set in &sets {
            let x = r.sets.get(set);
            row.push(num(x.map(|x| x.loss)));
            row.push(num(x.map(|x| x.perplexity)));
        }
        for (name, metric) in &metrics {
            row.push(num(r.benchmarks.get(name).and_then(|b| b.get(metric)).and_then(Value::as_f64)));
        }
        row.extend([r.train_examples.to_string(), r.train_tokens.to_string(), num(Some(r.final_loss)), format!("{:.1}", r.seconds), csv_field(r.error.as_deref().unwrap_or(""))]);
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// (benchmark, metric) pairs with a number in some run, in a fixed order.
fn benchmark_columns(runs: &[RunSummary]) -> Vec<(String, String)> {
    const METRICS: [&str; 10] = ["acc", "acc_norm", "exact_match", "f1", "contains", "number", "score", "win_rate", "loss", "perplexity"];
    let mut out = BTreeSet::new();
    for r in runs {
        for (name, b) in &r.benchmarks {
            for m in METRICS.iter().filter(|m| b.get(**m).is_some_and(Value::is_number)) {
                out.insert((name.clone(), m.to_string()));
            }
        }
    }
    out.into_iter().collect()
}

/// Mean and, over several seeds, the sample standard deviation.
fn mean_sd(xs: &[f64]) -> String {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return format!("{mean:.2}");
    }
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    format!("{mean:.2} ± {sd:.2} (n={})", xs.len())
}

/// For each model and lr, a table with one row per `rows` entry (key, label) and one column per origin; a cell
/// is the mean ± sd of `value` over that origin's runs (–: none).
fn origin_tables(md: &mut String, runs: &[&RunSummary], first_column: &str, rows: impl Fn(&[&RunSummary]) -> Vec<(String, String)>, value: impl Fn(&RunSummary, &str) -> Option<f64>) {
    let groups: BTreeSet<(String, String)> = runs.iter().map(|r| (r.model.clone(), format!("{:e}", r.lr))).collect();
    for (model, lr) in groups {
        let group: Vec<&RunSummary> = runs.iter().copied().filter(|r| r.model == model && format!("{:e}", r.lr) == lr).collect();
        let origins: BTreeSet<String> = group.iter().map(|r| origin_of(r)).collect();
        let _ = writeln!(md, "### {model}, lr {lr}\n");
        let _ = writeln!(md, "| {first_column} | {} |", origins.iter().cloned().collect::<Vec<_>>().join(" | "));
        let _ = writeln!(md, "|---|{}", "---|".repeat(origins.len()));
        for (key, label) in rows(&group) {
            let mut row = format!("| {label} |");
            for o in &origins {
                let xs: Vec<f64> = group.iter().filter(|r| &origin_of(r) == o).filter_map(|r| value(r, &key)).collect();
                let _ = write!(row, " {} |", if xs.is_empty() { "–".into() } else { mean_sd(&xs) });
            }
            md.push_str(&row);
            md.push('\n');
        }
        md.push('\n');
    }
}

fn origin_of(r: &RunSummary) -> String {
    if r.origins.is_empty() {
        "?".into()
    } else {
        r.origins.join(" + ")
    }
}

pub fn markdown(runs: &[RunSummary], plots: &[(String, PathBuf)]) -> String {
    let scores = super::scores::scores(runs);
    let deltas = super::scores::deltas(&scores);
    markdown_with(runs, plots, &scores, &deltas, &[])
}

/// report.md from the runs, their loss-curve plots, scores, ΔS and ΔS plots (benchmark, path).
pub fn markdown_with(runs: &[RunSummary], plots: &[(String, PathBuf)], scores: &[Score], deltas: &[Delta], delta_plots: &[(String, PathBuf)]) -> String {
    let ok: Vec<&RunSummary> = runs.iter().filter(|r| r.status == "ok").collect();
    let failed: Vec<&RunSummary> = runs.iter().filter(|r| r.status != "ok").collect();
    let mut md = String::from("# Sweep report\n\n");
    let _ = writeln!(md, "{} runs: {} finished, {} failed. Rebuild with `trainer report <dir>`.\n", runs.len(), ok.len(), failed.len());

    benchmark_sections(&mut md, scores, deltas, delta_plots);

    // Shared sets: every run evaluated on the same data. A set of one language compares the runs trained on that
    // language across origins; the CSV has every run on every set (cross-lingual results included).
    let with_sets: Vec<&RunSummary> = ok.iter().copied().filter(|r| !r.sets.is_empty()).collect();
    if !with_sets.is_empty() {
        md.push_str("## Shared evaluation sets: perplexity by origin\n\n");
        md.push_str("Each cell: perplexity on the whole set (the same data for every run), of the runs trained on the set's language; mean ± sd over seeds when there are several.\n\n");
        // The set's language, when it has exactly one.
        let set_language = |x: &crate::eval::HeldoutResult| {
            let langs: Vec<&String> = x.languages.keys().filter(|l| !l.is_empty()).collect();
            (langs.len() == 1).then(|| langs[0].clone())
        };
        origin_tables(
            &mut md,
            &with_sets,
            "set",
            |group| {
                let names: BTreeSet<&String> = group.iter().flat_map(|r| r.sets.keys()).collect();
                names
                    .into_iter()
                    .map(|set| {
                        let lang = group.iter().find_map(|r| r.sets.get(set)).and_then(set_language);
                        (set.clone(), lang.map_or_else(|| set.clone(), |l| format!("{set} ({l})")))
                    })
                    .collect()
            },
            |r, set| {
                let x = r.sets.get(set)?;
                let trained_on_it = set_language(x).is_none_or(|l| r.languages.len() == 1 && r.languages[0] == l);
                trained_on_it.then_some(x.perplexity)
            },
        );
    }

    let columns = benchmark_columns(runs);
    if !columns.is_empty() {
        md.push_str("## Benchmarks by run\n\nScores of each run's exported adapter (`[[evals]]`), over all items.\n\n");
        let _ = writeln!(md, "| run | {} |", columns.iter().map(|(n, m)| format!("{n} {m}")).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(md, "|---|{}", "---|".repeat(columns.len()));
        for r in &ok {
            let cells: Vec<String> = columns.iter().map(|(n, m)| r.benchmarks.get(n).and_then(|b| b.get(m)).and_then(Value::as_f64).map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into())).collect();
            let _ = writeln!(md, "| {} | {} |", r.run, cells.join(" | "));
        }
        md.push('\n');
    }

    data_tables(&mut md, &ok);
    md.push_str("## Runs\n\n| run | model | condition | origin | lr | seed | steps | best step (epoch) | held-out loss | held-out ppl | final train loss | train tokens | time |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &ok {
        let best = r.best.as_ref().map(|b| format!("{} ({})", b.step, b.epoch)).unwrap_or_else(|| "–".into());
        let (hl, hp) = r.heldout.as_ref().map(|h| (format!("{:.4}", h.loss), format!("{:.2}", h.perplexity))).unwrap_or(("–".into(), "–".into()));
        let _ = writeln!(md, "| {} | {} | {} | {} | {:e} | {} | {} | {best} | {hl} | {hp} | {:.4} | {} | {:.0} s |", r.run, r.model, r.condition, origin_of(r), r.lr, r.seed, r.steps, r.final_loss, r.train_tokens, r.seconds);
    }
    md.push('\n');
    if !failed.is_empty() {
        md.push_str("## Failed runs\n\n");
        for r in &failed {
            let _ = writeln!(md, "- **{}**: {}", r.run, r.error.as_deref().unwrap_or("unknown error").replace('\n', " "));
        }
        md.push('\n');
    }
    // The conditions' own held-out shares: a training diagnostic. Each condition's share is its own kind of data
    // (translated for a translated condition), so these numbers do not compare conditions.
    let has_mono = ok.iter().any(|r| r.languages.len() == 1 && r.heldout.is_some());
    let has_multi = ok.iter().any(|r| r.languages.len() > 1 && r.heldout.is_some());
    if has_mono || has_multi {
        md.push_str("## Training diagnostic: perplexity on each condition's own held-out share\n\n");
        md.push_str("Not comparable across conditions: each condition is evaluated on a held-out share of its own data (translated text for a translated condition). Compare conditions on the benchmarks and shared sets above.\n\n");
    }
    // The comparison: for each model and lr, one row per language and one column per origin, held-out
    // perplexity of that language (of the adapter kept), over single-language conditions.
    let mono: Vec<&RunSummary> = ok.iter().copied().filter(|r| r.languages.len() == 1 && r.heldout.is_some()).collect();
    if !mono.is_empty() {
        md.push_str("### Held-out perplexity by origin\n\n");
        md.push_str("Each cell: perplexity on the run's own held-out share of that language (lower is better), for the adapter kept; mean ± sd over seeds when there are several.\n\n");
        origin_tables(
            &mut md,
            &mono,
            "language",
            |group| group.iter().map(|r| r.languages[0].clone()).collect::<BTreeSet<_>>().into_iter().map(|l| (l.clone(), l)).collect(),
            |r, l| r.heldout.as_ref().filter(|_| r.languages[0] == l).and_then(|h| h.languages.get(l)).map(|x| x.perplexity),
        );
    }

    let multi: Vec<&&RunSummary> = ok.iter().filter(|r| r.languages.len() > 1 && r.heldout.is_some()).collect();
    if !multi.is_empty() {
        let langs: BTreeSet<String> = multi.iter().flat_map(|r| r.languages.clone()).collect();
        md.push_str("### Multilingual mixes: held-out perplexity per language\n\n");
        let _ = writeln!(md, "| run | origins | {} | all |", langs.iter().cloned().collect::<Vec<_>>().join(" | "));
        let _ = writeln!(md, "|---|---|{}---|", "---|".repeat(langs.len()));
        for r in multi {
            let h = r.heldout.as_ref().expect("filtered");
            let cells: Vec<String> = langs.iter().map(|l| h.languages.get(l).map(|x| format!("{:.2}", x.perplexity)).unwrap_or_else(|| "–".into())).collect();
            let _ = writeln!(md, "| {} | {} | {} | {:.2} |", r.run, origin_of(r), cells.join(" | "), h.perplexity);
        }
        md.push('\n');
    }

    if !plots.is_empty() {
        md.push_str("## Loss curves\n\nTraining loss (lines) and held-out loss (points) per step.\n\n");
        for (condition, path) in plots {
            let _ = writeln!(md, "### {condition}\n\n![{condition}]({})\n", path.display());
        }
    }
    md
}

/// Per condition: examples `max_seq_len` truncates and what `keep = "best"` selected on; per source: records
/// cleaning dropped, by rule.
fn data_tables(md: &mut String, ok: &[&RunSummary]) {
    let mut conditions: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    let mut dropped: BTreeMap<&str, &BTreeMap<String, usize>> = BTreeMap::new();
    for r in ok {
        conditions.entry(&r.condition).or_insert((r.truncated_examples, r.selected_on.clone().unwrap_or_else(|| "–".into())));
        dropped.extend(r.dropped.iter().map(|(s, rules)| (s.as_str(), rules)));
    }
    if conditions.is_empty() {
        return;
    }
    md.push_str("## Data\n\n| condition | examples truncated at max_seq_len | best selected on |\n|---|---|---|\n");
    for (c, (truncated, selected)) in &conditions {
        let _ = writeln!(md, "| {c} | {truncated} | {selected} |");
    }
    md.push('\n');
    if !dropped.is_empty() {
        md.push_str("Records dropped by cleaning:\n\n| source | rule | dropped |\n|---|---|---|\n");
        for (source, rules) in dropped {
            for (rule, n) in rules {
                let _ = writeln!(md, "| {source} | `{}` | {n} |", rule.replace('|', "\\|"));
            }
        }
        md.push('\n');
    }
}

/// A run's metrics.jsonl: (step, training loss) and (step, held-out loss).
pub fn curves(run_dir: &Path) -> (Vec<(f64, f64)>, Vec<(f64, f64)>) {
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    let Ok(text) = std::fs::read_to_string(run_dir.join("metrics.jsonl")) else { return (train, heldout) };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(step), Some(loss)) = (v["step"].as_f64(), v["loss"].as_f64()) else { continue };
        if !loss.is_finite() {
            continue;
        }
        if v["kind"] == "eval" {
            heldout.push((step, loss));
        } else {
            train.push((step, loss));
        }
    }
    (train, heldout)
}

/// Runs grouped by condition (and model, when there are several).
pub fn by_condition(runs: &[RunSummary]) -> BTreeMap<String, Vec<&RunSummary>> {
    let models: BTreeSet<&str> = runs.iter().map(|r| r.model.as_str()).collect();
    let mut out: BTreeMap<String, Vec<&RunSummary>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.status == "ok") {
        let key = if models.len() > 1 { format!("{}-{}", r.model, r.condition) } else { r.condition.clone() };
        out.entry(key).or_default().push(r);
    }
    out
}

/// A table cell of scores: one run's score with its interval, or the mean ± sd over several seeds.
fn score_cell(xs: &[&Score]) -> String {
    match xs {
        [] => "–".into(),
        [one] => match one.ci {
            Some((lo, hi)) => format!("{:.4} [{lo:.4}, {hi:.4}]", one.score),
            None => format!("{:.4}", one.score),
        },
        _ => {
            let v: Vec<f64> = xs.iter().map(|s| s.score).collect();
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            format!("{mean:.4} ± {sd:.4} (n={})", v.len())
        }
    }
}

fn metric_order(m: &str) -> usize {
    METRICS.iter().position(|x| *x == m).unwrap_or(METRICS.len())
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.filter(|v| v.is_finite()).map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".into())
}

/// The report's lead: each benchmark's scores by origin per model and lr, then ΔS with its tests and correlations.
fn benchmark_sections(md: &mut String, scores: &[Score], deltas: &[Delta], delta_plots: &[(String, PathBuf)]) {
    let bench: Vec<&Score> = scores.iter().filter(|s| s.task != "set").collect();
    if bench.is_empty() {
        return;
    }
    md.push_str("## Benchmarks: native vs translated vs round-trip\n\n");
    let _ = writeln!(
        md,
        "Each cell: the benchmark score of the run's exported adapter and its 95% interval (percentile bootstrap over items, {RESAMPLES} resamples, seed {SEED}); mean ± sd over seeds when there are several. Loss benchmarks: token-weighted, no interval. Every number is in `scores.csv`.\n"
    );
    let names: BTreeSet<&str> = bench.iter().map(|s| s.benchmark.as_str()).collect();
    for name in &names {
        let rows: Vec<&Score> = bench.iter().copied().filter(|s| s.benchmark == *name).collect();
        let _ = writeln!(md, "### {name} ({}; {})\n", rows[0].task, rows[0].kind());
        let groups: BTreeSet<(String, String)> = rows.iter().map(|s| (s.model.clone(), format!("{:e}", s.lr))).collect();
        for (model, lr) in groups {
            let group: Vec<&Score> = rows.iter().copied().filter(|s| s.model == model && format!("{:e}", s.lr) == lr).collect();
            let origins: BTreeSet<&str> = group.iter().map(|s| s.origin_label.as_str()).collect();
            let _ = writeln!(md, "#### {model}, lr {lr}\n");
            let _ = writeln!(md, "| language | metric | {} |", origins.iter().copied().collect::<Vec<_>>().join(" | "));
            let _ = writeln!(md, "|---|---|{}", "---|".repeat(origins.len()));
            let keys: BTreeSet<(String, usize, String)> = group.iter().map(|s| (s.language.clone(), metric_order(&s.metric), s.metric.clone())).collect();
            for (language, _, metric) in keys {
                let cells: Vec<String> = origins.iter().map(|o| score_cell(&group.iter().copied().filter(|s| s.origin_label == *o && s.language == language && s.metric == metric).collect::<Vec<_>>())).collect();
                let lang = if language.is_empty() { "–" } else { &language };
                let _ = writeln!(md, "| {lang} | {metric} | {} |", cells.join(" | "));
            }
            md.push('\n');
        }
    }

    md.push_str("## ΔS\n\n");
    let _ = writeln!(
        md,
        "ΔS = S(condition) − S(native): a run's benchmark score minus that of the native run of the same model, training languages, lr and seed, on the same benchmark, metric and item language (benchmark metrics only: no loss or perplexity). Tests on the items both runs scored (paired by item id, else position): a two-sided paired bootstrap p-value ({RESAMPLES} resamples of the per-item differences, seed {SEED}), and for 0/1 metrics McNemar's test — exact binomial when fewer than {} items are discordant, else chi-square with continuity correction, as statsmodels' `mcnemar`; b: items only the native run got right, c: items only the other run got right.\n",
        crate::stats::MCNEMAR_EXACT_BELOW
    );
    if deltas.is_empty() {
        md.push_str("No ΔS: no run has a native run of the same model, training languages, lr and seed.\n\n");
        return;
    }
    let names: BTreeSet<&str> = deltas.iter().map(|d| d.other.benchmark.as_str()).collect();
    for name in names {
        let _ = writeln!(md, "### {name}\n");
        md.push_str("| model | lr | seed | language | metric | condition | origin | S(native) | S(condition) | ΔS | items paired | bootstrap p | McNemar b / c, p |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let mut rows: Vec<&Delta> = deltas.iter().filter(|d| d.other.benchmark == name).collect();
        rows.sort_by(|a, b| {
            let (a, b) = (a.other, b.other);
            (a.model.cmp(&b.model)).then(a.lr.total_cmp(&b.lr)).then(a.seed.cmp(&b.seed)).then(a.language.cmp(&b.language)).then(metric_order(&a.metric).cmp(&metric_order(&b.metric))).then(a.condition.cmp(&b.condition))
        });
        for d in rows {
            let o = d.other;
            let mcnemar = d.mcnemar.map(|m| format!("{} / {}, {:.4}{}", m.b, m.c, m.p, if m.exact { " (exact)" } else { " (χ²)" })).unwrap_or_else(|| "–".into());
            let lang = if o.language.is_empty() { "–" } else { &o.language };
            let _ = writeln!(
                md,
                "| {} | {:e} | {} | {lang} | {} | {} | {} | {:.4} | {:.4} | {:+.4} | {} | {} | {mcnemar} |",
                o.model, o.lr, o.seed, o.metric, o.condition, o.origin_label, d.native.score, o.score, d.delta, d.paired, opt(d.bootstrap_p, 4)
            );
        }
        md.push('\n');
        if let Some((_, path)) = delta_plots.iter().find(|(b, _)| b == name) {
            let _ = writeln!(md, "![ΔS against S(native), {name}]({})\n", path.display());
        }
    }
    md.push_str("### Correlation of ΔS with S(native)\n\n");
    md.push_str("Per benchmark type (its `origin_type` and `form`), over every model, lr, seed, language and benchmark of the type: does the gap to native data depend on how well the native-trained model scores? Pearson's r and Spearman's rho (average ranks for ties); – when undefined (fewer than 2 points, or a constant).\n\n");
    md.push_str("| benchmark type | compared with native | metric | n | Pearson r | Spearman rho |\n|---|---|---|---|---|---|\n");
    for c in super::scores::correlations(deltas) {
        let _ = writeln!(md, "| {} | {} | {} | {} | {} | {} |", c.kind, c.origin, c.metric, c.n, opt(c.pearson, 4), opt(c.spearman, 4));
    }
    md.push('\n');
}
