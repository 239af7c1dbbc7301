//! The report's scores end to end: the quickstart (one step per run) writes per-item benchmark files, scores.csv
//! with a row per run × benchmark × metric × language, the ΔS section and its plots; the numbers in report.md are
//! those of scores.csv; `trainer report` rebuilds the same files, also over several folders.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

mod common;
use common::{repo, trainer};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// scores.csv as maps from column to value (no field of the quickstart's needs quoting).
fn rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = read(path);
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines.map(|l| header.iter().cloned().zip(l.split(',').map(String::from)).collect()).collect()
}

#[test]
fn scores_csv_delta_s_and_report_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let recipe = repo().join("recipes/quickstart.toml");
    let o = trainer(&["run", recipe.to_str().unwrap(), "--quiet", "--output-dir", out.to_str().unwrap(), "--set", "train.max_steps=1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let text = read(&out.join("scores.csv"));
    assert!(text.starts_with("model,condition,language,origin,engine,lr,seed,benchmark,metric,score,items,low,high"), "{text}");
    let scores = rows(&out.join("scores.csv"));
    let mut runs = 0;
    for entry in std::fs::read_dir(&out).unwrap().flatten() {
        let Ok(summary) = std::fs::read_to_string(entry.path().join("run.json")) else { continue };
        runs += 1;
        let summary: Value = serde_json::from_str(&summary).unwrap();
        let run = summary["run"].as_str().unwrap();
        // Every benchmark metric of run.json has its row, with the same score, an interval around it and a file of
        // per-item scores whose mean it is.
        for (name, b) in summary["benchmarks"].as_object().unwrap() {
            assert_eq!(b["spec"]["origin_type"], "native", "{b}");
            let items: Vec<Value> = read(&entry.path().join("benchmarks").join(format!("{name}.jsonl"))).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(items.len() as u64, b["items"].as_u64().unwrap());
            for metric in ["acc", "acc_norm", "exact_match", "f1", "contains", "number"] {
                let Some(expected) = b[metric].as_f64() else { continue };
                let row = scores.iter().find(|r| r["run"] == run && r["benchmark"] == *name && r["metric"] == metric).unwrap_or_else(|| panic!("no row for {run} {name} {metric}"));
                assert_eq!(row["language"], "es");
                let score: f64 = row["score"].parse().unwrap();
                assert_eq!(score, expected, "{run} {name} {metric}");
                let (low, high): (f64, f64) = (row["low"].parse().unwrap(), row["high"].parse().unwrap());
                assert!(low <= score && score <= high, "{row:?}");
                let per_item: Vec<f64> = items.iter().filter_map(|i| i[metric].as_f64()).collect();
                assert_eq!(per_item.len().to_string(), row["items"]);
                assert!((per_item.iter().sum::<f64>() / per_item.len() as f64 - expected).abs() < 1e-12);
            }
        }
        // The shared sets: loss and perplexity rows, without interval.
        for set in ["es-test", "es-test-native"] {
            assert!(scores.iter().any(|r| r["run"] == run && r["benchmark"] == set && r["metric"] == "perplexity" && r["task"] == "set" && r["low"].is_empty()));
        }
    }
    assert_eq!(runs, 6);
    // 6 runs × (mc: 2 metrics + qa: 4 metrics + the two sets: 2 each).
    assert_eq!(scores.len(), 6 * 10);

    let report = read(&out.join("report.md"));
    let lead = report.find("## Benchmarks: native vs translated vs round-trip").expect("the benchmarks lead");
    let delta = report.find("\n## ΔS\n").expect("a ΔS section");
    let sets = report.find("## Shared evaluation sets").unwrap();
    let diagnostic = report.find("## Training diagnostic: perplexity on each condition's own held-out share").unwrap();
    assert!(lead < delta && delta < sets && sets < diagnostic, "{report}");
    assert!(report.contains("| language | native | round-trip | translated |"), "the held-out table stays, as a diagnostic");
    assert!(report.contains("### Correlation of ΔS with S(native)") && report.contains("| native, structured | translated | acc | 2 |"), "{report}");
    for b in ["mc-es", "qa-es"] {
        assert!(out.join(format!("plots/delta-{b}.svg")).is_file());
        assert!(report.contains(&format!("(plots/delta-{b}.svg)")));
    }
    // The numbers in the lead tables are those of scores.csv, and every ΔS row is the difference of two of them.
    for r in scores.iter().filter(|r| r["task"] != "set") {
        let f = |k: &str| r[k].parse::<f64>().unwrap();
        let cell = format!("{:.4} [{:.4}, {:.4}]", f("score"), f("low"), f("high"));
        assert!(report.contains(&cell), "{cell} of {r:?} not in the report");
    }
    let score = |cond: &str, lr: &str, bench: &str, metric: &str| scores.iter().find(|r| r["condition"] == cond && r["lr"] == lr && r["benchmark"] == bench && r["metric"] == metric).unwrap()["score"].parse::<f64>().unwrap();
    let (n, t) = (score("es-native", "1e-3", "mc-es", "acc"), score("es-translated", "1e-3", "mc-es", "acc"));
    let line = format!("| tiny-llama | 1e-3 | 42 | es | acc | es-translated | translated | {n:.4} | {t:.4} | {:+.4} | 8 |", t - n);
    assert!(report.contains(&line), "{line} not in {report}");

    // `trainer report` rebuilds the same scores and report, deterministically.
    let before = (read(&out.join("scores.csv")), report.clone());
    std::fs::remove_file(out.join("scores.csv")).unwrap();
    let o = trainer(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!((read(&out.join("scores.csv")), read(&out.join("report.md"))), before);

    // Several folders: a second folder (here, two runs copied) into --out, which several folders require.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for run in ["es-native-lr1e-3", "es-translated-lr1e-3"] {
        assert!(Command::new("cp").arg("-r").arg(out.join(run)).arg(&other).status().unwrap().success());
    }
    let o = trainer(&["report", out.to_str().unwrap(), other.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--out"), "{}", String::from_utf8_lossy(&o.stderr));
    let combined = tmp.path().join("combined");
    let o = trainer(&["report", out.to_str().unwrap(), other.to_str().unwrap(), "--out", combined.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&combined.join("scores.csv")).len(), 8 * 10);
    assert!(read(&combined.join("report.md")).contains("8 runs: 8 finished"));
    assert!(combined.join("plots/delta-mc-es.svg").is_file() && combined.join("plots/es-native.svg").is_file());
}
