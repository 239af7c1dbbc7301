//! Benchmarks: multiple-choice log-likelihoods against transformers + PEFT (tests/fixtures/golden/mc.json, from
//! `gen_fixtures.py gen-mc`, within 1e-4), and `trainer eval --task mc|qa|loss` on the sample benchmarks in
//! data/benchmarks, for one adapter and for every run of a sweep; `[[evals]]` results in run.json and the report.

use candle_core::{DType, Device};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use trainer::eval::items::read_mc;
use trainer::eval::mc::{score_mc, McDoc, McStyle, ShotSource};
use trainer::lora::Adapter;
use trainer::session::Session;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().unwrap()
}

fn ok_json(o: Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn choice_loglikelihoods_match_transformers() {
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(trainer::testing::fixtures_dir().join("golden/mc.json")).unwrap()).unwrap();
    let items = read_mc(&repo().join("data/benchmarks/mc-es.jsonl")).unwrap();
    let dev = read_mc(&repo().join("data/benchmarks/mc-es-dev.jsonl")).unwrap();
    for (name, styles) in golden["models"].as_object().unwrap() {
        let root = trainer::testing::fixtures_dir();
        let s = Session::open(root.join("models").join(name).to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
        let adapter = Adapter::load_peft(&root.join("adapters").join(name), &s.model.cfg, &Device::Cpu).unwrap();
        for (style_name, style) in [("continuation", McStyle::Continuation), ("letters", McStyle::Letters)] {
            let docs = |v: &[trainer::eval::items::McItem]| v.iter().map(|i| i.to_doc(style)).collect::<Vec<McDoc>>();
            let r = score_mc(&s.model, Some(&adapter), &s.text.tokenizer, &docs(&items), &docs(&dev), 1, ShotSource::Dev, &trainer::eval::prompt::PromptTemplate::None, 5).unwrap();
            let want = styles[style_name].as_array().unwrap();
            for (i, (ours, theirs)) in r.loglikelihoods.iter().zip(want).enumerate() {
                for (c, (a, b)) in ours.iter().zip(theirs.as_array().unwrap()).enumerate() {
                    let b = b.as_f64().unwrap();
                    assert!((a - b).abs() <= 1e-4, "{name} {style_name} item {i} choice {c}: {a} vs {b}");
                }
            }
            // Accuracy follows from those log-likelihoods.
            let argmax = |v: &Vec<f64>| v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best });
            let acc = r.loglikelihoods.iter().zip(&items).filter(|(l, it)| argmax(l) == it.answer).count() as f64 / items.len() as f64;
            assert_eq!(r.acc, acc);
        }
    }
}

#[test]
fn eval_command_scores_benchmarks_for_an_adapter_and_a_sweep() {
    let tiny = repo().join("data/tiny-llama");
    let bench = repo().join("data/benchmarks");
    let path = |f: &str| bench.join(f).to_str().unwrap().to_string();
    let base = |extra: &[&str]| {
        let mut a = vec!["eval", "--model", tiny.to_str().unwrap(), "--json"];
        a.extend(extra);
        ok_json(trainer(&a))
    };
    let mc = base(&["--task", "mc", "--data", &path("mc-es.jsonl"), "--dev", &path("mc-es-dev.jsonl"), "--shots", "2"]);
    assert_eq!(mc["items"], 8);
    assert!((0.0..=1.0).contains(&mc["acc"].as_f64().unwrap()) && mc["acc_norm"].is_number(), "{mc}");
    let qa = base(&["--task", "qa", "--data", &path("qa-es.jsonl"), "--max-new-tokens", "8"]);
    assert_eq!(qa["items"], 6);
    for k in ["exact_match", "f1", "contains", "number"] {
        assert!(qa[k].is_number(), "{k}: {qa}");
    }
    let loss = base(&["--task", "loss", "--data", repo().join("data/samples/es-test.json").to_str().unwrap(), "--language", "es"]);
    assert_eq!(loss["examples"], 12);
    assert_eq!(loss["languages"]["es"]["tokens"], loss["tokens"]);
    // Mistakes.
    let o = trainer(&["eval", "--model", tiny.to_str().unwrap(), "--task", "mc", "--data", &path("mc-es.jsonl"), "--shots", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1-shot prompts need a dev file"));
    let o = trainer(&["eval", "--model", tiny.to_str().unwrap(), "--task", "qa", "--data", repo().join("data/samples/es-test.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("es-test.json:2: missing field `question`"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = trainer(&["eval", "--model", tiny.to_str().unwrap(), "--task", "qa", "--data", &path("qa-es.jsonl"), "--max-new-tokens", "0"]);
    assert_eq!(o.status.code(), Some(1));

    // A sweep with [[evals]]: scores in run.json and the report, and `eval --runs` over its folder.
    let dir = tempfile::tempdir().unwrap();
    let recipe = repo().join("tests/recipes/chat.toml");
    let evals = format!(
        "evals=[{{name = \"mc-es\", task = \"mc\", path = \"{}\", dev = \"{}\", shots = 1}}, {{name = \"qa-es\", task = \"qa\", path = \"{}\", max_new_tokens = 8}}]",
        path("mc-es.jsonl"),
        path("mc-es-dev.jsonl"),
        path("qa-es.jsonl")
    );
    let o = trainer(&["run", recipe.to_str().unwrap(), "--quiet", "--output-dir", dir.path().to_str().unwrap(), "--set", "train.lr=[1e-3, 1e-4]", "--set", "train.max_steps=1", "--set", &evals]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("chat-lr1e-3/run.json")).unwrap()).unwrap();
    assert!(run["benchmarks"]["mc-es"]["acc"].is_number() && run["benchmarks"]["qa-es"]["f1"].is_number(), "{run}");
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("## Benchmarks") && report.contains("mc-es acc"), "{report}");
    assert!(std::fs::read_to_string(dir.path().join("report.csv")).unwrap().lines().next().unwrap().contains("mc-es_acc_norm"));
    let all = base(&["--runs", dir.path().to_str().unwrap(), "--task", "mc", "--data", &path("mc-es.jsonl"), "--dev", &path("mc-es-dev.jsonl"), "--shots", "1"]);
    let runs = all["runs"].as_object().unwrap();
    assert_eq!(runs.keys().collect::<Vec<_>>(), ["chat-lr1e-3", "chat-lr1e-4"]);
    assert_eq!(runs["chat-lr1e-3"]["acc"], run["benchmarks"]["mc-es"]["acc"], "the same score from the sweep and from eval --runs");
}
