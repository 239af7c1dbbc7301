//! Multiple-choice benchmarks in their released layouts, scored as lm-evaluation-harness 0.4.13 scores them: the
//! samples in data/benchmarks, with the llama-gqa fixture model and its adapter, against what lm-eval reported for
//! the same files, model and adapter (tests/fixtures/lm_eval/mc_expected.json, written by run_lm_eval.py there).
//! Prompts must be lm-eval's to the character, accuracies (overall and per subject) equal, and every choice's
//! log-likelihood within 1e-4 (float32 on both sides; the rest is summation order). ARC and HellaSwag draw their
//! examples at random as lm-eval does; the runs with `"template": "chatml"` are lm-eval's `--apply_chat_template`
//! (description as a system message, examples as turns, choices scored without the target delimiter).

use candle_core::{DType, Device};
use serde_json::Value;
use std::path::PathBuf;
use trainer::eval::mc::{contexts, score_mc, target_delimiter};
use trainer::eval::Task;
use trainer::lora::Adapter;
use trainer::recipe::BenchmarkSection;
use trainer::session::Session;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

use trainer::eval::prompt::PromptTemplate;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/lm_eval/mc_expected.json")).unwrap()).unwrap()
}

fn spec(run: &Value) -> BenchmarkSection {
    let dev = run["dev"].as_str().map(|d| repo().join(d));
    BenchmarkSection::parse("mc", &repo().join(run["data"].as_str().unwrap()), dev.as_deref(), run["shots"].as_u64().unwrap() as usize, "continuation", Some(8), run["format"].as_str(), run["template"].as_str(), Default::default(), run["language"].as_str(), 512, 4).unwrap()
}

#[test]
fn every_format_scores_as_lm_eval_does() {
    let want = expected();
    let root = trainer::testing::fixtures_dir();
    let s = Session::open(root.join("models/llama-gqa").to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
    let adapter = Adapter::load_peft(&root.join("adapters/llama-gqa"), &s.model.cfg, &Device::Cpu).unwrap();
    let runs = want["runs"].as_array().unwrap();
    assert!(runs.len() >= 18, "every format at 0 and 2 shots");
    assert_eq!(runs.iter().filter(|r| r["template"] == "chatml").count(), 2, "cmmlu and arc under a chat template");
    for run in runs {
        let what = format!("{} {}-shot {}", run["name"].as_str().unwrap(), run["shots"], run["template"].as_str().unwrap_or("none"));
        check_run(&what, run, &spec(run), &s, &adapter);
    }
}

/// Scores `spec` and checks every prompt, continuation, log-likelihood and accuracy against lm-eval's `run`.
fn check_run(what: &str, run: &Value, spec: &BenchmarkSection, s: &Session, adapter: &Adapter) {
    let adapter = Some(adapter);
    let Task::Mc { items, examples, shots, source, batch_size, template, .. } = Task::load(spec, s).unwrap() else { panic!("{what}: not an mc task") };
    let template = PromptTemplate::parse(&template, &s.text.tokenizer).unwrap();
    let theirs = run["per_item"].as_array().unwrap();
    assert_eq!(items.len(), theirs.len(), "{what}: items");
    for (i, (ctx, t)) in contexts(&items, &examples, shots, source, &template).unwrap().iter().zip(theirs).enumerate() {
        assert_eq!(ctx, t["context"].as_str().unwrap(), "{what} item {i}: context");
        let conts: Vec<String> = items[i].choices.iter().map(|c| format!("{}{c}", target_delimiter(&template))).collect();
        assert_eq!(serde_json::json!(conts), t["continuations"], "{what} item {i}: continuations");
    }
    let r = score_mc(&s.model, adapter, &s.text.tokenizer, &items, &examples, shots, source, &template, batch_size).unwrap();
    for (i, (ours, t)) in r.loglikelihoods.iter().zip(theirs).enumerate() {
        let lls = t["loglikelihoods"].as_array().unwrap();
        assert_eq!(ours.len(), lls.len(), "{what} item {i}: choices");
        for (c, (a, b)) in ours.iter().zip(lls).enumerate() {
            let b = b.as_f64().unwrap();
            assert!((a - b).abs() <= 1e-4, "{what} item {i} choice {c}: log-likelihood {a} vs lm-eval's {b}");
        }
        assert_eq!(r.item_scores[i], (t["acc"].as_f64().unwrap(), t["acc_norm"].as_f64().unwrap()), "{what} item {i}: acc, acc_norm");
    }
    assert_eq!((r.acc, r.acc_norm, r.items), (run["acc"].as_f64().unwrap(), run["acc_norm"].as_f64().unwrap(), run["items"].as_u64().unwrap() as usize), "{what}");
    let subjects = run["subjects"].as_object().unwrap();
    assert_eq!(r.subjects.len(), subjects.len(), "{what}: subjects {:?}", r.subjects.keys());
    for (name, m) in subjects {
        let ours = &r.subjects[name];
        assert_eq!((ours.acc, ours.acc_norm, ours.items), (m["acc"].as_f64().unwrap(), m["acc_norm"].as_f64().unwrap(), m["items"].as_u64().unwrap() as usize), "{what} subject {name}");
    }
}

/// CMMLU and MMMLU as released: CSV with pandas' unnamed index column (`,Question,A,B,C,D,Answer`), MMMLU's file
/// named `test/mmlu_ZH-CN.csv`. Written from the JSONL samples by data/benchmarks/make_release_layout.py, they
/// must give lm-eval's prompts and scores for the JSONL files exactly; and a glob over CMMLU's subject files (one
/// benchmark) the same agronomy results.
#[test]
fn csv_releases_score_as_lm_eval_scored_the_same_items() {
    let want = expected();
    let root = trainer::testing::fixtures_dir();
    let s = Session::open(root.join("models/llama-gqa").to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
    let adapter = Adapter::load_peft(&root.join("adapters/llama-gqa"), &s.model.cfg, &Device::Cpu).unwrap();
    let as_released = |p: &str| {
        let p = p.replace("mmmlu/mmlu_ES_LA.jsonl", "mmmlu/test/mmlu_ES-LA.csv").replace("mmmlu/mmlu_ZH_CN.jsonl", "mmmlu/test/mmlu_ZH-CN.csv");
        p.replace("agronomy.jsonl", "agronomy.csv")
    };
    let mut checked = 0;
    for run in want["runs"].as_array().unwrap().iter().filter(|r| r["format"] == "cmmlu" || r["format"] == "mmmlu") {
        let mut csv = run.clone();
        csv["data"] = as_released(run["data"].as_str().unwrap()).into();
        if let Some(d) = run["dev"].as_str() {
            csv["dev"] = as_released(d).into();
        }
        assert!(csv["data"].as_str().unwrap().ends_with(".csv"), "{csv}");
        check_run(&format!("{} {}-shot {} as CSV", run["name"].as_str().unwrap(), run["shots"], run["template"].as_str().unwrap_or("none")), run, &spec(&csv), &s, &adapter);
        checked += 1;
    }
    assert_eq!(checked, 7, "cmmlu and both MMMLU locales at 0 and 2 shots, and cmmlu under ChatML");
    // Every CMMLU subject file as one benchmark: agronomy's items score as they do alone (prompts and examples
    // stay per subject), the other subject beside them.
    for run in want["runs"].as_array().unwrap().iter().filter(|r| r["format"] == "cmmlu") {
        let mut all = run.clone();
        all["data"] = "data/benchmarks/cmmlu/test/*.csv".into();
        all["dev"] = "data/benchmarks/cmmlu/dev/*.csv".into();
        let Task::Mc { items, examples, shots, source, batch_size, template, .. } = Task::load(&spec(&all), &s).unwrap() else { panic!("mc") };
        let template = PromptTemplate::parse(&template, &s.text.tokenizer).unwrap();
        let r = score_mc(&s.model, Some(&adapter), &s.text.tokenizer, &items, &examples, shots, source, &template, batch_size).unwrap();
        let agronomy = &r.subjects["agronomy"];
        assert_eq!((agronomy.acc, agronomy.acc_norm, agronomy.items), (run["acc"].as_f64().unwrap(), run["acc_norm"].as_f64().unwrap(), run["items"].as_u64().unwrap() as usize));
        assert_eq!((r.items, r.subjects.len()), (run["items"].as_u64().unwrap() as usize + 2, 2), "agronomy and astronomy");
    }
}

#[test]
fn eval_command_prints_acc_acc_norm_items_and_subjects() {
    let want = expected();
    let run = want["runs"].as_array().unwrap().iter().find(|r| r["name"] == "mmlu" && r["shots"] == 2).unwrap();
    let root = trainer::testing::fixtures_dir();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["eval", "--model", root.join("models/llama-gqa").to_str().unwrap(), "--adapter", root.join("adapters/llama-gqa").to_str().unwrap()])
        .args(["--task", "mc", "--format", "mmlu", "--data", repo().join("data/benchmarks/mmlu/all/test.jsonl").to_str().unwrap()])
        .args(["--dev", repo().join("data/benchmarks/mmlu/all/dev.jsonl").to_str().unwrap(), "--shots", "2", "--dtype", "f32", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["acc"], run["acc"]);
    assert_eq!(got["acc_norm"], run["acc_norm"]);
    assert_eq!(got["items"], run["items"]);
    for (name, m) in run["subjects"].as_object().unwrap() {
        assert_eq!(got["subjects"][name]["acc"], m["acc"], "{name}");
        assert_eq!(got["subjects"][name]["items"], m["items"], "{name}");
    }
}

/// `trainer eval --task mc` on the fixture model with `args`: its stderr when it fails (it must).
fn eval_fails(args: &[&str]) -> String {
    let root = trainer::testing::fixtures_dir();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer")).args(["eval", "--model", root.join("models/llama-gqa").to_str().unwrap(), "--task", "mc", "--json"]).args(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_benchmark_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bench = |f: &str| repo().join("data/benchmarks").join(f).to_str().unwrap().to_string();
    let err = eval_fails(&["--format", "mmlux", "--data", &bench("mmlu/all/test.jsonl")]);
    assert!(err.contains("unknown multiple-choice format `mmlux`") && err.contains("cmmlu, ceval, mmlu, okapi, mmmlu, arc, hellaswag"), "{err}");
    // A file missing a column: named with its row and the column.
    let bad = dir.path().join("agronomy.jsonl");
    std::fs::write(&bad, "{\"Question\": \"q\", \"A\": \"a\", \"B\": \"b\", \"C\": \"c\", \"D\": \"d\", \"Answer\": \"A\"}\n{\"Question\": \"q\", \"A\": \"a\", \"B\": \"b\", \"D\": \"d\", \"Answer\": \"A\"}\n").unwrap();
    let err = eval_fails(&["--format", "cmmlu", "--data", bad.to_str().unwrap()]);
    assert!(err.contains("agronomy.jsonl:2") && err.contains("missing column `C`"), "{err}");
    // A renamed column is found through --field; an unknown field is an error naming the format's fields.
    let renamed = dir.path().join("anatomy.jsonl");
    std::fs::write(&renamed, "{\"frage\": \"q\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": 1}\n").unwrap();
    let err = eval_fails(&["--format", "mmlu", "--data", renamed.to_str().unwrap()]);
    assert!(err.contains("anatomy.jsonl:1") && err.contains("missing column `question`"), "{err}");
    let err = eval_fails(&["--format", "mmlu", "--field", "frage=question", "--data", renamed.to_str().unwrap()]);
    assert!(err.contains("no field `frage`") && err.contains("question, choices, answer, subject"), "{err}");
    let err = eval_fails(&["--format", "mmlu", "--field", "question=frage", "--data", renamed.to_str().unwrap(), "--dev", &bench("mmlu/all/dev.jsonl"), "--shots", "1"]);
    assert!(err.contains("dev.jsonl:1: missing column `frage` (field `question`)"), "the dev file is read with the same fields: {err}");
    let err = eval_fails(&["--format", "mmlu", "--data", &bench("mmlu/all/test.jsonl"), "--shots", "3", "--dev", &bench("mmlu/all/dev.jsonl")]);
    assert!(err.contains("3-shot prompts need 3 examples of subject `anatomy`; the dev split has 2"), "{err}");
    // ARC answer keys must be one of the row's labels.
    let arc = dir.path().join("arc.jsonl");
    std::fs::write(&arc, "{\"question\": \"q\", \"choices\": {\"text\": [\"a\", \"b\"], \"label\": [\"1\", \"2\"]}, \"answerKey\": \"B\"}\n").unwrap();
    let err = eval_fails(&["--format", "arc", "--data", arc.to_str().unwrap()]);
    assert!(err.contains("arc.jsonl:1") && err.contains("`B` is not one of the labels 1, 2"), "{err}");
}

#[test]
fn context_and_continuation_are_tokenized_as_lm_evals_encode_pair() {
    // Ids from lm-eval 0.4.13's HFLM._encode_pair with the llama-gqa fixture tokenizer (which adds <s> = 1). The
    // samples' prompts never reach these cases, hence the direct check: a trailing space of the context moves into
    // the continuation (" that" is one token, "that" alone three), and where the whole text merges across the
    // boundary the continuation is what the whole adds after as many tokens as the context alone has.
    let s = Session::open(trainer::testing::fixtures_dir().join("models/llama-gqa").to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
    let tok = &s.text.tokenizer;
    let (ctx, cont) = trainer::eval::mc::encode_pair(tok, "Question: 2+2?\nAnswer: ", "that").unwrap();
    assert_eq!(ctx, [1, 51, 87, 259, 274, 263, 28, 223, 20, 13, 20, 33, 201, 35, 80, 85, 89, 71, 84, 28]);
    assert_eq!(cont, [269]);
    let (ctx, cont) = trainer::eval::mc::encode_pair(tok, "Answer: d", "es x y").unwrap();
    assert_eq!(ctx, [1, 35, 80, 85, 89, 71, 84, 28, 223, 70]);
    assert_eq!(cont, [90, 223, 91]);
}
