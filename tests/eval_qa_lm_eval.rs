//! Generative benchmarks in their released layouts against lm-evaluation-harness 0.4.13 itself
//! (tests/fixtures/lm_eval/qa_expected.json, written by run_lm_eval_qa.py on the samples in data/benchmarks): for
//! every item our prompt equals lm-eval's context string byte for byte, our greedy generation equals its generation
//! (tiny llama + adapter, float32 on CPU, batch size 1, 16 new tokens), each filter's answer is the same, and
//! exact match / F1 are exactly equal, item by item and on average. Then the command line: `--format` and
//! `--json` print the same numbers, and bad input is one error naming the file, row and column.

use candle_core::{DType, Device};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use trainer::eval::prompt::PromptTemplate;
use trainer::eval::qa_formats::{read_bench, run_bench, summary, QaFormat};
use trainer::lora::Adapter;
use trainer::session::Session;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/lm_eval/qa_expected.json")).unwrap()).unwrap()
}

/// lm-eval logs a score as a bool, an int or a float.
fn num(v: &Value) -> f64 {
    v.as_f64().or_else(|| v.as_bool().map(|b| b as u8 as f64)).unwrap_or_else(|| panic!("not a score: {v}"))
}

#[test]
fn prompts_generations_and_scores_equal_lm_eval() {
    let want = expected();
    let s = Session::open(repo().join(want["model"].as_str().unwrap()).to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
    let adapter = Adapter::load_peft(&repo().join(want["adapter"].as_str().unwrap()), &s.model.cfg, &Device::Cpu).unwrap();
    let max_gen_toks = want["max_gen_toks"].as_u64().unwrap() as usize;
    let runs = want["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 13);
    for run in runs {
        let task = run["task"].as_str().unwrap();
        let format = QaFormat::parse(run["format"].as_str().unwrap()).unwrap().unwrap();
        let lang = run["language"].as_str().unwrap();
        let read = |p: &str| read_bench(&repo().join(p), format, &BTreeMap::new(), (format != QaFormat::Tydiqa).then_some(lang)).unwrap();
        // lm-eval's per-language task sees only its language's items (tydiqa's process_docs filter by id prefix).
        let items: Vec<_> = read(run["data"].as_str().unwrap()).into_iter().filter(|it| it.language == lang).collect();
        let dev = run["dev"].as_str().map(read).unwrap_or_default();
        let shots = run["shots"].as_u64().unwrap() as usize;
        let outcomes = run_bench(&s.model, Some(&adapter), &s.text.tokenizer, s.text.eos_id, s.text.pad_id, format, &items, &dev, shots, &PromptTemplate::None, max_gen_toks, 1).unwrap();
        let theirs = run["items"].as_array().unwrap();
        assert_eq!(outcomes.len(), theirs.len(), "{task}");
        for (o, t) in outcomes.iter().zip(theirs) {
            let what = format!("{task} item {}", t["doc_id"]);
            assert_eq!(o.prompt, t["prompt"].as_str().unwrap(), "{what}: prompt");
            assert_eq!(o.generation, t["generation"].as_str().unwrap(), "{what}: generation");
            let filters = t["filters"].as_object().unwrap();
            if format.filters().is_empty() {
                let f = &filters["none"];
                assert_eq!(o.exact_match, vec![num(&f["exact_match"])], "{what}: exact_match");
                assert_eq!(o.f1, Some(num(&f["f1"])), "{what}: f1");
            } else {
                for (i, name) in format.filters().iter().enumerate() {
                    let f = &filters[*name];
                    assert_eq!(o.filtered[i], f["filtered"].as_str().unwrap(), "{what}: {name}");
                    assert_eq!(o.exact_match[i], num(&f["exact_match"]), "{what}: {name} exact_match");
                }
            }
        }
        let ours = summary(format, &outcomes);
        for (key, v) in run["metrics"].as_object().unwrap() {
            let Some((metric, filter)) = key.split_once(',') else { continue };
            let got = if filter == "none" { &ours[metric] } else { &ours["filters"][filter] };
            assert_eq!(got.as_f64(), Some(num(v)), "{task} {key}");
        }
    }
}

fn trainer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).current_dir(repo()).args(args).output().unwrap()
}

#[test]
fn command_line_scores_mgsm_as_lm_eval() {
    let want = expected();
    let run = want["runs"].as_array().unwrap().iter().find(|r| r["task"] == "mgsm_native_cot_zh").unwrap().clone();
    let args = [
        "eval", "--model", want["model"].as_str().unwrap(), "--adapter", want["adapter"].as_str().unwrap(), "--dtype", "f32", "--task", "qa", "--format", "mgsm_native_cot", "--data",
        run["data"].as_str().unwrap(), "--dev", run["dev"].as_str().unwrap(), "--shots", "2", "--language", "zh", "--max-new-tokens", "16", "--batch-size", "1", "--json",
    ];
    let o = trainer(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["items"], 2);
    assert_eq!(r["exact_match"].as_f64(), Some(num(&run["metrics"]["exact_match,strict-match"])));
    assert_eq!(r["filters"]["flexible-extract"].as_f64(), Some(num(&run["metrics"]["exact_match,flexible-extract"])));
    assert!(r.get("f1").is_none(), "lm-eval reports no f1 for mgsm");

    // `--format mgsm` (issue 12's name: the train split's worked answers as exemplars) is the chain-of-thought task,
    // item for item: the same prompts, generations and scores.
    let as_mgsm: Vec<&str> = args.iter().map(|a| if *a == "mgsm_native_cot" { "mgsm" } else { *a }).collect();
    let o = trainer(&as_mgsm);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), r, "--format mgsm scores as mgsm_native_cot");

    let e = trainer(&["eval", "--model", "x", "--task", "qa", "--format", "squad", "--data", "d.jsonl"]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && err.contains("unknown qa format `squad`") && err.contains("xquad, tydiqa, mgsm, mgsm_direct, mgsm_native_cot"), "{err}");
}

#[test]
fn renamed_and_missing_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    std::fs::write(&path, "{\"id\": \"1\", \"passage\": \"P\", \"question\": \"Q\", \"answers\": {\"text\": [\"a\"]}}\n").unwrap();
    let err = read_bench(&path, QaFormat::Xquad, &BTreeMap::new(), Some("es")).unwrap_err().to_string();
    assert!(err.contains("x.jsonl:1") && err.contains("missing column `context`"), "{err}");
    let fields = BTreeMap::from([("context".to_string(), "passage".to_string())]);
    let items = read_bench(&path, QaFormat::Xquad, &fields, Some("es")).unwrap();
    assert_eq!((items[0].context.as_str(), items[0].answers.clone()), ("P", vec!["a".to_string()]));
    let bad = BTreeMap::from([("passage".to_string(), "x".to_string())]);
    assert!(read_bench(&path, QaFormat::Xquad, &bad, Some("es")).unwrap_err().to_string().contains("unknown field `passage`"));
    assert!(read_bench(&path, QaFormat::Xquad, &fields, None).unwrap_err().to_string().contains("--language"));
    assert!(read_bench(&path, QaFormat::Xquad, &fields, Some("xx")).unwrap_err().to_string().contains("languages: ar, de"));
    // TyDi QA takes the language from the id; a language lm-eval has no task for is an error.
    std::fs::write(&path, "{\"id\": \"japanese-1\", \"title\": \"t\", \"context\": \"C\", \"question\": \"Q\", \"answers\": {\"text\": [\"a\"]}}\n").unwrap();
    let err = read_bench(&path, QaFormat::Tydiqa, &BTreeMap::new(), None).unwrap_err().to_string();
    assert!(err.contains("no tydiqa_goldp task for `japanese`"), "{err}");
    // `language` picks one language of a TyDi QA file.
    let tydi = repo().join("data/benchmarks/tydiqa/tydiqa-goldp.validation.jsonl");
    let ru = read_bench(&tydi, QaFormat::Tydiqa, &BTreeMap::new(), Some("ru")).unwrap();
    assert_eq!(ru.iter().map(|it| it.id.clone().unwrap()).collect::<Vec<_>>(), ["russian-2001", "russian-2002"]);
    assert_eq!(read_bench(&tydi, QaFormat::Tydiqa, &BTreeMap::new(), None).unwrap().len(), 6);
    assert!(read_bench(&tydi, QaFormat::Tydiqa, &BTreeMap::new(), Some("fi")).unwrap_err().to_string().contains("no items in language `fi`"));
}

fn task_format(task: &str) -> (QaFormat, String) {
    let (prefix, lang) = task.rsplit_once('_').unwrap();
    let format = match prefix {
        "xquad" => QaFormat::Xquad,
        "tydiqa_goldp" => QaFormat::Tydiqa,
        "mgsm_direct" => QaFormat::MgsmDirect,
        "mgsm_native_cot" => QaFormat::MgsmNativeCot,
        other => panic!("{other}"),
    };
    (format, lang.to_string())
}

fn task_items(want: &Value, task: &str) -> (QaFormat, Vec<trainer::eval::qa_formats::BenchItem>, Vec<trainer::eval::qa_formats::BenchItem>) {
    let run = want["runs"].as_array().unwrap().iter().find(|r| r["task"] == task).unwrap();
    let (format, lang) = task_format(task);
    let read = |p: &str| read_bench(&repo().join(p), format, &BTreeMap::new(), (format != QaFormat::Tydiqa).then_some(lang.as_str())).unwrap();
    let items = read(run["data"].as_str().unwrap()).into_iter().filter(|it| it.language == lang).collect();
    (format, items, run["dev"].as_str().map(read).unwrap_or_default())
}

/// Hand-written answers (references with extra words, punctuation, articles; multi-paragraph chain of thought)
/// through each task's own filters and process_results in lm-eval, and through ours: the same filtered answers and
/// exactly the same exact match and F1.
#[test]
fn hand_written_answers_score_as_lm_eval() {
    let want = expected();
    let checks = want["metric_checks"].as_array().unwrap();
    assert!(checks.len() > 50);
    let (mut nonzero_em, mut partial_f1) = (0, 0);
    for c in checks {
        let task = c["task"].as_str().unwrap();
        let (format, items, _) = task_items(&want, task);
        let it = &items[c["doc_id"].as_u64().unwrap() as usize];
        let answer = c["answer"].as_str().unwrap();
        let (em, f1) = format.score(it, answer);
        let filtered = format.filtered(answer, &it.language);
        let what = format!("{task} item {} answer {answer:?}", c["doc_id"]);
        if format.filters().is_empty() {
            let f = &c["filters"]["none"];
            assert_eq!((em[0], f1), (num(&f["exact_match"]), Some(num(&f["f1"]))), "{what}");
            partial_f1 += (0.0 < f1.unwrap() && f1.unwrap() < 1.0) as usize;
        } else {
            for (i, name) in format.filters().iter().enumerate() {
                let f = &c["filters"][*name];
                assert_eq!((filtered[i].as_str(), em[i]), (f["filtered"].as_str().unwrap(), num(&f["exact_match"])), "{what} {name}");
            }
        }
        nonzero_em += (em[0] > 0.0) as usize;
    }
    assert!(nonzero_em > 10 && partial_f1 > 5, "the checks exercise matches and partial overlaps ({nonzero_em}, {partial_f1})");
}

/// `--template chatml`: prompts as lm-eval's `--apply_chat_template` builds them (few-shot examples as turns,
/// simple_evaluate's default `fewshot_as_multiturn`) with the same template on the tokenizer.
#[test]
fn chat_template_prompts_equal_lm_eval() {
    let want = expected();
    let tok = trainer::tokenizer::TextTokenizer::from_files(&repo().join("tests/fixtures/models/llama-gqa/tokenizer.json"), Some(&repo().join("tests/fixtures/models/llama-gqa/tokenizer_config.json"))).unwrap();
    let template = PromptTemplate::parse("chatml", &tok).unwrap();
    let cases = want["chat_prompts"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for c in cases {
        let task = c["task"].as_str().unwrap();
        let (format, items, dev) = task_items(&want, task);
        let messages = trainer::eval::qa_formats::prompts(format, &items, &dev, c["shots"].as_u64().unwrap() as usize).unwrap();
        let ours = trainer::eval::prompt::render(&messages[c["doc_id"].as_u64().unwrap() as usize], &template).unwrap();
        assert_eq!(ours, c["prompt"].as_str().unwrap(), "{task} item {}", c["doc_id"]);
    }
}
