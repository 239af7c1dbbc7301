//! recipes/ultralink.toml and recipes/polyglot-x.toml end to end on tiny made-up copies of their training data
//! (tests/data, written by tests/data/make_recipe_data.py) and our benchmark samples (data/benchmarks): `plan`
//! expands each grid, and a smoke run of a few of its runs (one step each, answers of 8 tokens) scores every
//! `[[evals]]` entry — the judged ones through a scripted OpenAI-compatible judge on 127.0.0.1 (so the scores are
//! known), and once through a local judge checkpoint, as the recipes' documented smoke command does.

mod common;

use common::{repo, stderr};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// A judge that rates every single-answer judgment [[6]] and answers every pairwise one [[A]]: asked in both
/// orders, the model wins in one and the baseline in the other, which counts as a tie (win rate ½).
fn scripted_judge() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut stream = stream;
                let mut reader = BufReader::new(stream.try_clone()?);
                let (mut line, mut length) = (String::new(), 0usize);
                loop {
                    line.clear();
                    reader.read_line(&mut line)?;
                    if line.trim_end().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body)?;
                let request: Value = serde_json::from_slice(&body).unwrap();
                let pairwise = request["messages"].to_string().contains("[[A]]");
                let content = if pairwise { "[[A]]" } else { "Rating: [[6]]" };
                let reply = json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}).to_string();
                write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len())?;
                stream.flush()
            });
        }
    });
    url
}

fn recipe(name: &str) -> String {
    repo().join(format!("recipes/{name}.toml")).to_str().unwrap().to_string()
}

/// The flags every smoke run shares: the tiny model on the CPU, one step, short answers, our benchmark samples.
fn smoke_args(data: &str) -> Vec<String> {
    let r = repo();
    [
        "--data-root", &r.join(data).to_string_lossy(), "--benchmarks-root", &r.join("data/benchmarks").to_string_lossy(),
        "--model", &r.join("data/tiny-llama").to_string_lossy(), "--device", "cpu", "--set", "train.max_steps=1", "--set", "evals.*.max_new_tokens=8",
    ]
    .map(str::to_string)
    .to_vec()
}

/// `trainer plan --json`'s runs.
fn plan(name: &str, data: &str) -> Vec<Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.arg("plan").arg(recipe(name)).args(smoke_args(data)).arg("--json");
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()["runs"].as_array().unwrap().clone()
}

/// Runs `only` of the recipe into `out` with extra `--set`s, without a proxy or an API key in sight.
fn run(name: &str, data: &str, out: &Path, only: &[&str], sets: &[String]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.arg("run").arg(recipe(name)).args(smoke_args(data)).arg("--output-dir").arg(out).arg("--quiet");
    for o in only {
        cmd.args(["--only", o]);
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    for v in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "OPENAI_API_KEY"] {
        cmd.env_remove(v);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{name}: {}", stderr(&o));
}

/// The recipe's `[[evals]]` names.
fn eval_names(name: &str) -> Vec<String> {
    let r = trainer::recipe::Recipe::load(Path::new(&recipe(name))).unwrap();
    r.evals.iter().map(|e| e.name.clone()).collect()
}

fn scripted(url: &str, cache: &Path) -> Vec<String> {
    vec![format!("evals.*.judge.url={url}"), "evals.*.judge.model=judge-test".into(), format!("evals.*.judge.cache={}", cache.display())]
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every evaluation of every run in run.json, and in scores.csv with its language.
fn assert_every_eval_scored(out: &Path, runs: &[&str], names: &[String]) {
    let scores = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    for run in runs {
        let summary = common::json(&out.join(run).join("run.json"));
        for name in names {
            let b = &summary["benchmarks"][name];
            assert!(b.is_object(), "{run}: no result for {name}: {}", summary["benchmarks"]);
            let row = scores.lines().find(|l| l.contains(&format!(",{name},")) && l.contains(run)).unwrap_or_else(|| panic!("{run}: {name} not in scores.csv:\n{scores}"));
            let lang = name.rsplit('-').next().unwrap();
            assert!(row.contains(&format!(",{lang},")), "{run} {name}: language {lang} in {row}");
        }
    }
}

#[test]
fn ultralink_plans_and_scores_omgeval_and_mgsm() {
    let data = "tests/data/ultralink";
    let runs = plan("ultralink", data);
    assert_eq!(runs.len(), 11);
    let by = |c: &str| runs.iter().find(|r| r["condition"] == c).unwrap_or_else(|| panic!("no run of {c}"));
    // Nothing pruned: every record of a language's four files (50 each) is trained on or held out.
    let all = |r: &Value| r["train_examples"].as_u64().unwrap() + r["heldout_examples"].as_u64().unwrap();
    assert_eq!((all(by("en-specific")), all(by("en-specific+agnostic")), all(by("all-languages"))), (50, 200, 1000));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // One run: the evaluations are the same for every run, and they are what this test is about.
    let only = [by("all-languages")["run"].as_str().unwrap()];
    run("ultralink", data, &out, &only, &scripted(&scripted_judge(), &dir.path().join("cache")));
    let names = eval_names("ultralink");
    assert_eq!(names.len(), 10, "OMGEval and MGSM in five languages; HumanEval is not scored by the trainer");
    assert_every_eval_scored(&out, &only, &names);
    for run in only {
        let summary = common::json(&out.join(run).join("run.json"));
        for lang in ["en", "zh", "es", "ru", "fr"] {
            let om = &summary["benchmarks"][format!("omgeval-{lang}")];
            // Three questions, each judged in both orders: [[A]] both times is a disagreement, a tie.
            assert_eq!((om["win_rate"].as_f64(), om["items"].as_u64(), om["ties"].as_u64()), (Some(0.5), Some(3), Some(3)), "{run} {lang}: {om}");
            assert_eq!(om["spec"]["origin_type"].as_str(), Some(if lang == "en" { "native" } else { "translated" }));
            let judged = lines(&out.join(run).join(format!("benchmarks/omgeval-{lang}.jsonl")));
            let baseline = lines(&repo().join(format!("data/benchmarks/omgeval/{lang}/baseline.jsonl")));
            assert_eq!(judged[0]["baseline_answer"], baseline[0]["choices"][0]["turns"][0], "{run} {lang}: the baseline's answer was judged");
            let mgsm = &summary["benchmarks"][format!("mgsm-{lang}")];
            assert_eq!(mgsm["items"].as_u64(), Some(2), "{run} {lang}: {mgsm}");
        }
    }
}

#[test]
fn polyglot_x_plans_27_runs_and_scores_mt_bench_x() {
    let data = "tests/data/polyglot-x";
    let runs = plan("polyglot-x", data);
    assert_eq!(runs.len(), 27, "nine compositions on Lima-X, Bactrian-X and Bactrian-X small");
    let by = |c: &str| runs.iter().find(|r| r["condition"] == c).unwrap_or_else(|| panic!("no run of {c}"));
    let all = |r: &Value| r["train_examples"].as_u64().unwrap() + r["heldout_examples"].as_u64().unwrap();
    // Lima-X: 20 lines per language aligned by position. Bactrian-X: 21 ids, Italian lacks one, so the
    // compositions with Italian hold the 20 shared ids. The small variant is Lima-X's size, 20 ids.
    for (data, mono) in [("lima-x", 20), ("bactrian-x", 21), ("bactrian-x-small", 20)] {
        assert_eq!(all(by(&format!("{data}-en-mono"))), mono, "{data}");
        assert_eq!(all(by(&format!("{data}-ENDEFRITES-parallel"))), 5 * 20, "{data}");
        assert_eq!(all(by(&format!("{data}-ENDEFRITES-sampled"))), 20, "{data}");
        assert_eq!(all(by(&format!("{data}-DEFRITES-parallel"))), 4 * 20, "{data}");
        assert_eq!(by(&format!("{data}-DEFRITES-sampled"))["languages"].as_object().unwrap().len(), 4, "{data}");
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let only = [by("bactrian-x-small-ENDEFRITES-sampled")["run"].as_str().unwrap()];
    run("polyglot-x", data, &out, &only, &scripted(&scripted_judge(), &dir.path().join("cache")));
    let names = eval_names("polyglot-x");
    assert_eq!(names.len(), 5);
    assert_every_eval_scored(&out, &only, &names);
    for run in only {
        let summary = common::json(&out.join(run).join("run.json"));
        for lang in ["EN", "DE", "FR", "IT", "ES"] {
            let name = format!("mt-bench-x-{}", lang.to_lowercase());
            let mt = &summary["benchmarks"][&name];
            // Two two-turn questions: four ratings of 6.
            assert_eq!((mt["score"].as_f64(), mt["items"].as_u64(), mt["unparsed"].as_u64()), (Some(6.0), Some(4), Some(0)), "{run} {name}: {mt}");
            // The math question is judged against the release's GPT-4 reference answers, not the question's short ones.
            let judged = lines(&out.join(run).join(format!("benchmarks/{name}.jsonl")));
            let math = judged.iter().find(|j| j["category"] == "math" && j["turn"] == 1).unwrap();
            let reference = &lines(&repo().join(format!("data/benchmarks/mt-bench-x/mt_bench_{lang}/reference_answer/gpt-4.jsonl")))[0]["choices"][0]["turns"];
            assert_eq!((&math["reference"][0], math["prompt"].as_str()), (&reference[0], Some("single-math-v1")), "{run} {name}: {math}");
        }
    }
}

/// The recipes' documented smoke command: every judged evaluation graded by a local checkpoint (the tiny model,
/// whose grades are noise and mostly unreadable — the judgments are all there, readable or counted as unparsed).
#[test]
fn the_documented_smoke_run_judges_with_a_local_checkpoint() {
    let data = "tests/data/polyglot-x";
    let runs = plan("polyglot-x", data);
    let run_name = runs.iter().find(|r| r["condition"] == "lima-x-en-mono").unwrap()["run"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let tiny = repo().join("data/tiny-llama");
    let sets = [
        "evals.*.judge.url=".to_string(),
        "evals.*.judge.model=".into(),
        format!("evals.*.judge.local={}", tiny.display()),
        "evals.*.judge.template=llama2-chat".into(),
        "evals.*.judge.max_tokens=8".into(),
        format!("evals.*.judge.cache={}", dir.path().join("cache").display()),
    ];
    run("polyglot-x", data, &out, &[&run_name], &sets);
    let summary = common::json(&out.join(&run_name).join("run.json"));
    for name in eval_names("polyglot-x") {
        let mt = &summary["benchmarks"][&name];
        // items counts every (question, turn); unparsed ones are left out of the score.
        assert!(mt["items"].as_u64() == Some(4) && mt["unparsed"].as_u64().unwrap() <= 4, "{name}: {mt}");
        assert_eq!(mt["judge"]["url"].as_str(), Some("local"), "{name}: {mt}");
        assert_eq!(lines(&out.join(&run_name).join(format!("benchmarks/{name}.jsonl"))).len(), 4, "{name}");
    }
}
