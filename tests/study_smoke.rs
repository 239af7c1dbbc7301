//! The study end to end on its released data (`../shared/data/good-data-or-bad-eval`): recipes/native-vs-translated.toml
//! with the tiny model, two steps per run, every `[[evals]]` benchmark read from our samples in data/benchmarks/
//! (the releases' relative paths and file types: CSV, parquet, JSONL), the judged questions graded by a scripted
//! judge on 127.0.0.1. Then scores.csv, report.md's ΔS section and the ΔS plots must exist and agree with each
//! other, and every run selects its epoch on its language's shared native dev set. CI runs it
//! (`TRAINER_REQUIRE_SHARED=1`); .ci/run does not run the study a second time.

mod common;

use common::{repo, stderr, trainer};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

/// An OpenAI-compatible endpoint that rates every answer `[[1]]`–`[[10]]` by a hash of the request, so judged
/// scores differ between runs (a constant would leave ΔS and its correlations undefined).
fn scripted_judge() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut line, mut length) = (String::new(), 0usize);
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                line.clear();
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let rating = 1 + body.iter().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64)) % 10;
            let reply = serde_json::json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Fine. Rating: [[{rating}]]")}, "finish_reason": "stop"}]}).to_string();
            let mut s = stream;
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len());
        }
    });
    url
}

/// The benchmarks of each language and the metrics scores.csv has for each (lm-eval's: acc and acc_norm for
/// multiple choice, exact_match and f1 for XQuAD and TyDi QA, exact_match for MGSM, the judge's mean rating).
fn expected() -> BTreeMap<&'static str, Vec<(&'static str, &'static [&'static str])>> {
    let mc: &[&str] = &["acc", "acc_norm"];
    let span: &[&str] = &["exact_match", "f1"];
    let mgsm: &[&str] = &["exact_match"];
    let judge: &[&str] = &["score"];
    BTreeMap::from([
        ("es", vec![("xquad-es", span), ("mgsm-es", mgsm), ("okapi-es", mc), ("mmmlu-es", mc), ("open-es", judge)]),
        ("ru", vec![("tydiqa-ru", span), ("xquad-ru", span), ("mgsm-ru", mgsm), ("okapi-ru", mc), ("open-ru", judge)]),
        ("zh", vec![("xquad-zh", span), ("mgsm-zh", mgsm), ("cmmlu-zh", mc), ("ceval-zh", mc), ("okapi-zh", mc), ("mmmlu-zh", mc), ("open-zh", judge)]),
    ])
}

#[test]
fn the_study_scores_every_benchmark_and_its_report_agrees_with_scores_csv() {
    let Some(data) = trainer::testing::shared("data/good-data-or-bad-eval") else { return };
    let out = tempfile::tempdir().unwrap();
    let judge = scripted_judge();
    let cache = out.path().join("judge-cache");
    let judge_sets: Vec<String> = ["es", "ru", "zh"].iter().map(|l| format!("evals.open-{l}.judge={{ url = \"{judge}\", model = \"scripted\", cache = \"{}\" }}", cache.display())).collect();
    let (recipe, samples, tiny, dir) = (repo().join("recipes/native-vs-translated.toml"), repo().join("data/benchmarks"), repo().join("data/tiny-llama"), out.path().join("study"));
    let mut args = vec!["run", recipe.to_str().unwrap(), "--data-root", data.to_str().unwrap(), "--benchmarks-root", samples.to_str().unwrap()];
    args.extend(["--model", tiny.to_str().unwrap(), "--device", "cpu", "--output-dir", dir.to_str().unwrap(), "--quiet"]);
    // Kept small for CI (measured on a shared 2-core machine): two steps of 2 sequences of up to 128 tokens per run,
    // 1% held out and 1% of native as each language's dev set (ru: 4 records, 22 target tokens; at 0.5% every
    // ru-dev response is cut off at 128 tokens), answers of up to 4 tokens (the benchmarks' own 256 and
    // FastChat's 1024 would only make CI slower: the tiny model rarely stops by itself).
    for s in ["train.max_steps=2", "train.batch_size=2", "train.micro_batch_size=2", "train.max_seq_len=128", "eval.heldout_fraction=0.01", "evals.*.max_new_tokens=4"] {
        args.extend(["--set", s]);
    }
    for s in &judge_sets {
        args.extend(["--set", s.as_str()]);
    }
    let started = std::time::Instant::now();
    let o = trainer(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("the study: 30 runs with their benchmarks in {:.0} s", started.elapsed().as_secs_f64());

    // Every run finished.
    let runs: Vec<serde_json::Value> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.path().join("run.json")).filter(|p| p.is_file()).map(|p| common::json(&p)).collect();
    assert_eq!(runs.len(), 30);
    assert!(runs.iter().all(|r| r["status"] == "ok"), "every run ok");

    // Selection: every run of a language kept the evaluation with the lowest loss on that language's native dev
    // set — the same records for all five conditions —, evaluated on no other language's dev set.
    let mut dev: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &runs {
        let lang = &r["condition"].as_str().unwrap()[..2];
        let set = format!("{lang}-dev");
        assert_eq!(r["selected_on"], set.as_str(), "{}", r["run"]);
        assert_eq!(r["sets"].as_object().unwrap().keys().collect::<Vec<_>>(), [&set], "{}", r["run"]);
        let d = &r["sets"][&set];
        let size = (d["examples"].as_u64().unwrap(), d["tokens"].as_u64().unwrap());
        assert_eq!(*dev.entry(set.clone()).or_insert(size), size, "{}: the same dev records as the language's other runs", r["run"]);
        // Two steps, one evaluation: the kept one, judged by the dev set's loss (not the run's own held-out share).
        assert_eq!((r["best"]["step"].as_u64(), r["best"]["loss"].as_f64()), (Some(2), d["loss"].as_f64()), "{}", r["run"]);
    }
    assert_eq!(dev.keys().collect::<Vec<_>>(), ["es-dev", "ru-dev", "zh-dev"]);

    // scores.csv: one row per run × benchmark of its language × metric (one item language per benchmark), and no
    // benchmark of another language.
    let mut reader = csv::Reader::from_path(dir.join("scores.csv")).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header[..13].join(","), "model,condition,language,origin,engine,lr,seed,benchmark,metric,score,items,low,high");
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let all_rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    // The dev sets are scores.csv's only set rows: each run on its language's dev set, loss and perplexity.
    let set_rows: BTreeSet<(String, String, String)> = all_rows.iter().filter(|r| &r[col("task")] == "set").map(|r| (r[col("run")].to_string(), r[col("benchmark")].to_string(), r[col("metric")].to_string())).collect();
    let want_sets: BTreeSet<(String, String, String)> = runs.iter().flat_map(|r| ["loss", "perplexity"].map(|m| (r["run"].as_str().unwrap().to_string(), format!("{}-dev", &r["condition"].as_str().unwrap()[..2]), m.to_string()))).collect();
    assert_eq!(set_rows, want_sets);
    let rows: Vec<csv::StringRecord> = all_rows.into_iter().filter(|r| &r[col("task")] != "set").collect();
    let mut want = BTreeSet::new();
    for r in &runs {
        let (condition, lr) = (r["condition"].as_str().unwrap().to_string(), r["lr"].as_f64().unwrap());
        let lang = &condition[..2];
        for (bench, metrics) in &expected()[lang] {
            for m in *metrics {
                want.insert((condition.clone(), format!("{lr:e}"), bench.to_string(), m.to_string(), lang.to_string()));
            }
        }
    }
    let got: Vec<(String, String, String, String, String)> = rows.iter().map(|r| (r[col("condition")].to_string(), format!("{:e}", r[col("lr")].parse::<f64>().unwrap()), r[col("benchmark")].to_string(), r[col("metric")].to_string(), r[col("language")].to_string())).collect();
    assert_eq!(got.len(), want.len(), "one row per run × benchmark × metric × language");
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(want.len(), 10 * 8 + 10 * 8 + 10 * 12);
    for r in &rows {
        let (score, low, high) = (r[col("score")].parse::<f64>().unwrap(), r[col("low")].parse::<f64>().unwrap(), r[col("high")].parse::<f64>().unwrap());
        assert!(low <= score && score <= high && r[col("items")].parse::<usize>().unwrap() > 0, "{r:?}");
        let origin = &r[col("benchmark_origin")];
        assert!(origin == "native" || origin == "translated", "every benchmark declares its origin: {r:?}");
        assert!(["structured", "generative"].contains(&&r[col("form")]), "{r:?}");
    }
    let score_of = |condition: &str, lr: &str, bench: &str, metric: &str| -> f64 {
        let r = rows.iter().find(|r| &r[col("condition")] == condition && format!("{:e}", r[col("lr")].parse::<f64>().unwrap()) == lr && &r[col("benchmark")] == bench && &r[col("metric")] == metric).unwrap_or_else(|| panic!("no row {condition} {lr} {bench} {metric}"));
        r[col("score")].parse().unwrap()
    };

    // report.md's ΔS section: every non-native run against its native run, per benchmark and metric, with the
    // scores of scores.csv; each benchmark's plot written and linked.
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    // Perplexity is compared on the shared dev sets only; the runs' own held-out shares come after, as a diagnostic.
    let shared = md.find("## Shared evaluation sets: perplexity by origin").expect("the dev sets' perplexity table");
    assert!(["es", "ru", "zh"].iter().all(|l| md.contains(&format!("| {l}-dev ({l}) |"))), "{md}");
    assert!(shared < md.find("## Training diagnostic").unwrap());
    let delta = md.split("\n## ΔS\n").nth(1).expect("a ΔS section").split("\n## ").next().unwrap();
    let mut deltas = 0;
    let mut benches = BTreeSet::new();
    let mut bench = String::new();
    for line in delta.lines() {
        if let Some(b) = line.strip_prefix("### ") {
            bench = b.to_string();
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() != 13 || cells[0] == "model" || cells[0].starts_with("---") || bench.starts_with("Correlation") {
            continue;
        }
        let (lr, lang, metric, condition) = (cells[1], cells[3], cells[4], cells[5]);
        let native = format!("{lang}-native");
        let (s_native, s_cond, ds): (f64, f64, f64) = (cells[7].parse().unwrap(), cells[8].parse().unwrap(), cells[9].parse().unwrap());
        let (want_native, want_cond) = (score_of(&native, lr, &bench, metric), score_of(condition, lr, &bench, metric));
        assert!((s_native - want_native).abs() <= 5e-5 && (s_cond - want_cond).abs() <= 5e-5, "{bench}: {line}");
        assert!((ds - (want_cond - want_native)).abs() <= 1e-4, "{bench}: {line}");
        assert!(condition.starts_with(lang) && !condition.ends_with("native"), "{line}");
        benches.insert(bench.clone());
        deltas += 1;
    }
    let metrics_per_language: usize = expected().values().map(|b| b.iter().map(|(_, m)| m.len()).sum::<usize>()).sum();
    assert_eq!(deltas, 4 * 2 * metrics_per_language, "4 other conditions × 2 lrs × every benchmark metric of each language");
    let all: BTreeSet<String> = expected().values().flatten().map(|(b, _)| b.to_string()).collect();
    assert_eq!(benches, all);
    for b in &all {
        let plot = dir.join(format!("plots/delta-{b}.svg"));
        assert!(std::fs::read_to_string(&plot).is_ok_and(|s| s.contains("<svg")), "{}", plot.display());
        assert!(delta.contains(&format!("](plots/delta-{b}.svg)")), "report links {b}'s plot");
    }
    let correlations = delta.split("### Correlation of ΔS with S(native)").nth(1).expect("the correlations");
    for kind in ["native, structured", "native, generative", "translated, structured", "translated, generative"] {
        assert!(correlations.contains(&format!("| {kind} |")), "{kind}: {correlations}");
    }
}
