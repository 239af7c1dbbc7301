//! Multi-turn generation against transformers (tests/fixtures/golden/multiturn.json, from `gen_fixtures.py
//! gen-multiturn`) and the LLM judge end to end (`trainer eval --task judge`) against a scripted OpenAI-compatible
//! server on 127.0.0.1: ratings and verdicts, malformed, slow and failing answers, a dead endpoint, the cache and
//! the API key.

mod common;

use candle_core::{DType, Device};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trainer::eval::multiturn::{answer_questions, Question};
use trainer::generate::GenOptions;
use trainer::lora::Adapter;
use trainer::session::Session;

fn golden() -> Value {
    common::json(&trainer::testing::fixtures_dir().join("golden/multiturn.json"))
}

#[test]
fn two_turn_answers_match_transformers_and_turn_two_sees_turn_one() {
    let g = golden();
    let questions: Vec<Question> = g["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| Question { question_id: q["question_id"].clone(), category: q["category"].as_str().unwrap().into(), turns: q["turns"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect(), reference: None, language: None })
        .collect();
    let max_new = g["max_new_tokens"].as_u64().unwrap() as usize;
    let root = trainer::testing::fixtures_dir();
    for (name, m) in g["models"].as_object().unwrap() {
        let session = Session::open(root.join("models").join(name).to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
        let adapter = Adapter::load_peft(&root.join("adapters").join(name), &session.model.cfg, &Device::Cpu).unwrap();
        assert_eq!(session.text.eos_id as u64, m["eos_token_id"].as_u64().unwrap());
        let opts = GenOptions { max_new_tokens: max_new, temperature: 0.0, top_p: 1.0, stop: Vec::new(), seed: 0 };
        // Both questions in one batch per turn: left padding is exercised as well.
        let ours = answer_questions(&session, Some(&adapter), &questions, g["template"].as_str().unwrap(), 8, &opts).unwrap();
        for (q, (a, want)) in questions.iter().zip(ours.iter().zip(m["rows"].as_array().unwrap())) {
            for turn in 0..2 {
                let at = format!("{name} question {} turn {}", q.key(), turn + 1);
                assert_eq!(a.prompts[turn], want["prompts"][turn].as_str().unwrap(), "{at}: prompt");
                let ids: Vec<u32> = session.text.tokenizer.encode(&a.prompts[turn], false).unwrap();
                let want_ids: Vec<u32> = want["prompt_ids"][turn].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
                assert_eq!(ids, want_ids, "{at}: prompt ids");
                let generated: Vec<u32> = want["generated"][turn].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
                assert_eq!(a.new_tokens[turn] + usize::from(a.finish[turn] == "eos"), generated.len(), "{at}: number of new tokens");
                assert_eq!(a.answers[turn], want["answers"][turn].as_str().unwrap(), "{at}: answer text (generated {generated:?})");
            }
            // The model's own turn-1 answer, exactly as generated, sits in the turn-2 prompt.
            assert!(a.prompts[1].contains(&format!("<|im_start|>assistant\n{}<|im_end|>", a.answers[0])), "{name}: {}", a.prompts[1]);
            assert!(a.prompts[1].starts_with(&a.prompts[0]));
        }
    }
}

#[test]
fn generate_answers_the_shipped_mt_bench_sample_turn_by_turn() {
    let dir = tempfile::tempdir().unwrap();
    let model = trainer::testing::fixtures_dir().join("models/llama-gqa");
    let data = common::repo().join("data/benchmarks/mt-bench-sample.jsonl");
    let out = dir.path().join("answers.jsonl");
    let args = |template: &'static str| ["generate", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--format", "mt-bench", "--template", template, "--max-new-tokens", "3", "--out", out.to_str().unwrap()].map(str::to_string);
    let o = common::trainer(&args("chatml").each_ref().map(String::as_str));
    assert!(o.status.success(), "{}", common::stderr(&o));
    let rows = lines(&out);
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert_eq!((r["turns"].as_array().unwrap().len(), r["answers"].as_array().unwrap().len(), r["prompts"].as_array().unwrap().len()), (2, 2, 2));
        let (first, second) = (r["answers"][0].as_str().unwrap(), r["prompts"][1].as_str().unwrap());
        assert!(second.contains(&format!("assistant\n{first}<|im_end|>")), "{second}");
    }
    // The alpaca template has no second turn.
    let o = common::trainer(&args("alpaca").each_ref().map(String::as_str));
    assert!(!o.status.success() && common::stderr(&o).contains("question 1 has two turns"), "{}", common::stderr(&o));
}

// ---------------------------------------------------------------------------------------------------------------
// A scripted chat-completions server.

/// What the server does with one request.
#[derive(Clone)]
enum Reply {
    /// A well-formed completion with this content.
    Say(String),
    Status(u16),
    /// HTTP 401 with this message.
    Refuse(String),
    /// HTTP 200 with a body that is not a chat completion.
    Garbage,
    /// Waits, then does the rest.
    Slow(Duration, Box<Reply>),
    /// Closes the connection without answering.
    Hangup,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    authorization: Option<String>,
    body: Value,
}

impl Seen {
    fn system(&self) -> &str {
        self.body["messages"][0]["content"].as_str().unwrap()
    }
    fn user(&self) -> &str {
        self.body["messages"][1]["content"].as_str().unwrap()
    }
}

struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The most requests that were being answered at once.
    most_at_once: Arc<AtomicUsize>,
}

impl Server {
    /// Serves forever on a free port (the thread ends with the test process). `script(request, how many earlier
    /// requests had the same user message)` decides each reply.
    fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script = Arc::new(script);
        let (log, now, most_at_once) = (seen.clone(), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let most = most_at_once.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let (log, script, now, most) = (log.clone(), script.clone(), now.clone(), most.clone());
                std::thread::spawn(move || {
                    if let Ok(s) = stream {
                        most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        let _ = answer(s, &log, &*script);
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Server { url, seen, most_at_once }
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn answer(mut stream: TcpStream, log: &Mutex<Vec<Seen>>, script: &(dyn Fn(&Seen, usize) -> Reply + Send + Sync)) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let (mut length, mut authorization) = (0usize, None);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    assert!(line.starts_with("POST /v1/chat/completions "), "request line {line:?}");
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().unwrap(),
            "authorization" => authorization = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let seen = Seen { authorization, body: serde_json::from_slice(&body).unwrap() };
    let reply = {
        let mut log = log.lock().unwrap();
        let earlier = log.iter().filter(|s| s.user() == seen.user()).count();
        log.push(seen.clone());
        script(&seen, earlier)
    };
    let mut reply = reply;
    while let Reply::Slow(d, then) = reply {
        std::thread::sleep(d);
        reply = *then;
    }
    let (status, body) = match reply {
        Reply::Say(text) => (200, json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}).to_string()),
        Reply::Status(code) => (code, json!({"error": {"message": "scripted failure"}}).to_string()),
        Reply::Refuse(message) => (401, json!({"error": {"message": message}}).to_string()),
        Reply::Garbage => (200, "<html>upstream proxy error</html>".to_string()),
        Reply::Hangup => return Ok(()),
        Reply::Slow(..) => unreachable!("unwrapped above"),
    };
    write!(stream, "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    stream.flush()
}

// ---------------------------------------------------------------------------------------------------------------
// The CLI against it.

const KEY: &str = "sk-test-DO-NOT-LEAK-31337";

fn write_questions(dir: &Path, rows: &[Value]) -> PathBuf {
    let p = dir.join("questions.jsonl");
    std::fs::write(&p, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    p
}

/// `trainer eval --task judge` with the fixture model answering (chatml, a few tokens), the key in JUDGE_TEST_KEY
/// and millisecond backoffs.
fn judge(url: &str, questions: &Path, out: &Path, cache: &Path, extra: &[&str]) -> Output {
    let model = trainer::testing::fixtures_dir().join("models/llama-gqa");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.args(["eval", "--task", "judge", "--model", model.to_str().unwrap(), "--data", questions.to_str().unwrap(), "--template", "chatml", "--max-new-tokens", "4"]);
    cmd.args(["--judge-url", url, "--judge-model", "judge-9000", "--api-key-env", "JUDGE_TEST_KEY", "--judge-timeout", "0.5", "--judge-retries", "3", "--judge-concurrency", "3"]);
    cmd.args(["--out", out.to_str().unwrap(), "--judge-cache", cache.to_str().unwrap(), "--json"]);
    cmd.args(extra);
    cmd.env("JUDGE_TEST_KEY", KEY).env("TRAINER_JUDGE_BACKOFF_MS", "5");
    // The server is local: a proxy configured on the test machine must not see these requests.
    for v in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        cmd.env_remove(v);
    }
    cmd.output().unwrap()
}

fn stdout_json(o: &Output) -> Value {
    assert!(o.status.success(), "trainer failed: {}", common::stderr(o));
    serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn assert_key_nowhere(o: &Output, dirs: &[&Path]) {
    assert!(!String::from_utf8_lossy(&o.stdout).contains(KEY) && !common::stderr(o).contains(KEY), "the key is in the output");
    for d in dirs {
        for f in files(d) {
            assert!(!String::from_utf8_lossy(&std::fs::read(&f).unwrap()).contains(KEY), "the API key is in {}", f.display());
        }
    }
}

#[test]
fn single_grading_with_references_unparsed_answers_and_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_questions(
        dir.path(),
        &[
            json!({"question_id": 1, "category": "writing", "turns": ["Q-ALPHA: write a poem.", "Q-ALPHA2: shorter."]}),
            json!({"question_id": 2, "category": "math", "turns": ["Q-BRAVO: 2+2?"], "reference": ["REF-FOUR"]}),
            json!({"question_id": "c", "category": "roleplay", "turns": ["Q-CHARLIE: be a pirate."]}),
            json!({"question_id": 4, "category": "stem", "turns": ["Q-DELTA: what is ice?"]}),
        ],
    );
    let server = Server::start(|s, _| {
        let u = s.user();
        // Slow enough that requests overlap: the concurrency limit is what keeps them to 3.
        let slowly = |text: String| Reply::Slow(Duration::from_millis(40), Box::new(Reply::Say(text)));
        slowly(if u.contains("Q-ALPHA2") {
            "Turn two is weaker. Rating: [[6]]".into()
        } else if u.contains("Q-ALPHA") {
            "Fine. Rating: [[8]]".into()
        } else if u.contains("Q-BRAVO") {
            // FastChat's backup form.
            "Compared with the reference it is wrong. Rating: [4]".into()
        } else if u.contains("Q-CHARLIE") {
            "A pleasant answer, I would say seven out of ten.".into()
        } else {
            "Rating: [[9]]".into()
        })
    });
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let o = judge(&server.url, &questions, &out, &cache, &[]);
    let r = stdout_json(&o);
    // Items: question 1 turns 1 and 2, questions 2, c and 4; c has no readable rating.
    assert_eq!(r["items"], 5);
    assert_eq!(r["unparsed"], 1);
    assert_eq!(r["score"].as_f64().unwrap(), (8.0 + 6.0 + 4.0 + 9.0) / 4.0);
    assert_eq!(r["turns"]["2"].as_f64().unwrap(), 6.0);
    let seen = server.requests();
    let most = server.most_at_once.load(Ordering::SeqCst);
    assert!((1..=3).contains(&most), "{most} requests at once with --judge-concurrency 3");
    // Question c: asked once, then again `parse_retries` (2) times.
    assert_eq!(seen.iter().filter(|s| s.user().contains("Q-CHARLIE")).count(), 3);
    assert_eq!(seen.len(), 4 + 3);
    for s in &seen {
        assert_eq!(s.authorization.as_deref(), Some(format!("Bearer {KEY}").as_str()));
        assert_eq!((s.body["model"].as_str(), s.body["temperature"].as_f64(), s.body["max_tokens"].as_u64()), (Some("judge-9000"), Some(0.0), Some(2048)));
    }
    // MT-Bench's prompts: the reference-based one for math, the multi-turn one for turn 2.
    let bravo = seen.iter().find(|s| s.user().contains("Q-BRAVO")).unwrap();
    assert!(bravo.user().contains("[The Start of Reference Answer]\nREF-FOUR\n[The End of Reference Answer]"));
    assert!(seen.iter().find(|s| s.user().contains("Q-ALPHA2")).unwrap().system().contains("focus on the assistant's answer to the second user question"));
    assert_eq!(seen.iter().find(|s| s.user().contains("Q-DELTA")).unwrap().system(), "You are a helpful assistant.");

    let items = lines(&out.join("judgments.jsonl"));
    assert_eq!(items.len(), 5);
    let answers = lines(&out.join("answers.jsonl"));
    let charlie = items.iter().find(|i| i["question_id"] == "c").unwrap();
    assert_eq!((charlie["score"].clone(), charlie["unparsed"].clone()), (Value::Null, json!(true)));
    let alpha2 = items.iter().find(|i| i["question_id"] == 1 && i["turn"] == 2).unwrap();
    assert_eq!(alpha2["answer"], answers[0]["answers"][1]);
    assert_eq!((alpha2["score"].as_f64(), alpha2["prompt"].as_str()), (Some(6.0), Some("single-v1-multi-turn")));
    assert!(alpha2["judgment"].as_str().unwrap().contains("[[6]]"));
    assert_eq!(common::json(&out.join("summary.json"))["score"], r["score"]);
    assert_key_nowhere(&o, &[&out, &cache]);

    // Again, into another folder: everything comes from the cache, nothing is asked.
    let again = judge(&server.url, &questions, &dir.path().join("out2"), &cache, &[]);
    let r2 = stdout_json(&again);
    assert_eq!(server.requests().len(), seen.len(), "the second run asked the judge again");
    assert_eq!((r2["score"].clone(), r2["unparsed"].clone(), r2["requests"].clone()), (r["score"].clone(), json!(1), json!(0)));
}

/// Two endpoints that serve different models under one name (`judge-9000` here) never share cached judgments:
/// the cache key holds the endpoint's URL, so the second server is asked every question the first one answered.
#[test]
fn endpoints_sharing_a_model_name_do_not_share_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_questions(dir.path(), &[json!({"question_id": 1, "category": "writing", "turns": ["Q-ONE", "Q-TWO"]}), json!({"question_id": 2, "category": "stem", "turns": ["Q-THREE"]})]);
    let strict = Server::start(|_, _| Reply::Say("Rating: [[2]]".into()));
    let lenient = Server::start(|_, _| Reply::Say("Rating: [[9]]".into()));
    let cache = dir.path().join("cache");
    let first = stdout_json(&judge(&strict.url, &questions, &dir.path().join("a"), &cache, &[]));
    assert_eq!((first["score"].as_f64(), first["requests"].clone()), (Some(2.0), json!(3)));
    let second = stdout_json(&judge(&lenient.url, &questions, &dir.path().join("b"), &cache, &[]));
    assert_eq!((second["score"].as_f64(), second["requests"].clone()), (Some(9.0), json!(3)), "the other endpoint's judgments were taken from the cache");
    assert_eq!(lenient.requests().len(), 3);
    // Each endpoint still finds its own judgments.
    let again = stdout_json(&judge(&strict.url, &questions, &dir.path().join("c"), &cache, &[]));
    assert_eq!((again["score"].as_f64(), again["requests"].clone()), (Some(2.0), json!(0)));
    assert_eq!(strict.requests().len(), 3);
}

#[test]
fn transient_failures_are_retried_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Value> = ["T429", "T500", "TSLOW", "TGARBAGE", "THANGUP"].iter().enumerate().map(|(i, m)| json!({"question_id": i, "category": "writing", "turns": [format!("{m}: say hi")]})).collect();
    let questions = write_questions(dir.path(), &rows);
    let server = Server::start(|s, earlier| {
        let u = s.user();
        if earlier == 0 {
            // Each question's first request fails in its own way; the second is answered.
            if u.contains("T429") {
                return Reply::Status(429);
            } else if u.contains("T500") {
                return Reply::Status(503);
            } else if u.contains("TSLOW") {
                return Reply::Slow(Duration::from_millis(1500), Box::new(Reply::Say("Rating: [[1]]".into())));
            } else if u.contains("TGARBAGE") {
                return Reply::Garbage;
            } else if u.contains("THANGUP") {
                return Reply::Hangup;
            }
        }
        Reply::Say("Rating: [[5]]".into())
    });
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let o = judge(&server.url, &questions, &out, &cache, &[]);
    let r = stdout_json(&o);
    assert_eq!((r["items"].clone(), r["unparsed"].clone(), r["score"].as_f64()), (json!(5), json!(0), Some(5.0)), "the slow answer (rating 1) came after the timeout and must not count");
    let seen = server.requests();
    for m in ["T429", "T500", "TSLOW", "TGARBAGE", "THANGUP"] {
        assert_eq!(seen.iter().filter(|s| s.user().contains(m)).count(), 2, "{m}: one failure, one retry");
    }
}

#[test]
fn a_dead_or_broken_endpoint_fails_the_eval_naming_it_and_writes_no_results() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_questions(dir.path(), &[json!({"question_id": 1, "category": "writing", "turns": ["hello"]})]);
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let out = dir.path().join("out");
    let o = judge(&url, &questions, &out, &dir.path().join("cache"), &[]);
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains(&format!("{url}/chat/completions")) && e.contains("failed 4 times"), "{e}");
    assert!(!out.join("judgments.jsonl").exists() && !out.join("summary.json").exists());

    // Up, but never a usable answer.
    let server = Server::start(|_, _| Reply::Status(500));
    let o = judge(&server.url, &questions, &out, &dir.path().join("cache"), &[]);
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains(&server.url) && e.contains("HTTP 500"), "{e}");
    assert_eq!(server.requests().len(), 4, "1 + 3 retries");
    assert!(!out.join("judgments.jsonl").exists() && !out.join("summary.json").exists());
    assert!(files(&out).iter().all(|f| !f.file_name().unwrap().to_string_lossy().ends_with(".tmp")), "no temporary files left");
    assert_key_nowhere(&o, &[&out]);

    // A refused key: no retry, and the endpoint's answer (which may quote the key) is not repeated.
    let server = Server::start(|s, _| Reply::Refuse(format!("Incorrect API key provided: {}", s.authorization.clone().unwrap_or_default())));
    let o = judge(&server.url, &questions, &out, &dir.path().join("cache"), &[]);
    assert!(!o.status.success() && common::stderr(&o).contains("HTTP 401"), "{}", common::stderr(&o));
    assert_eq!(server.requests().len(), 1);
    assert_key_nowhere(&o, &[&out]);
}

#[test]
fn pairwise_asks_both_orders_and_counts_disagreement_as_a_tie() {
    let dir = tempfile::tempdir().unwrap();
    let tags = ["PWIN", "PWIN2", "PFLIP", "PLOSS", "PTIE"];
    let rows: Vec<Value> = tags.iter().enumerate().map(|(i, m)| json!({"question_id": i, "category": "writing", "turns": [format!("{m}: tell me something")]})).collect();
    let questions = write_questions(dir.path(), &rows);
    let baseline = dir.path().join("baseline.jsonl");
    std::fs::write(&baseline, (0..tags.len()).map(|i| format!("{}\n", json!({"question_id": i, "answers": ["BASELINE-ANSWER"]}))).collect::<String>()).unwrap();
    let server = Server::start(|s, _| {
        let u = s.user();
        let a = u.split("[The Start of Assistant A's Answer]").nth(1).unwrap().split("[The End of Assistant A's Answer]").next().unwrap();
        let baseline_is_a = a.contains("BASELINE-ANSWER");
        let (model_wins, baseline_wins) = if baseline_is_a { ("[[B]]", "[[A]]") } else { ("[[A]]", "[[B]]") };
        Reply::Say(if u.contains("PWIN") {
            format!("The model is better. {model_wins}")
        } else if u.contains("PFLIP") {
            // Position bias: always the first answer.
            "The first one. [[A]]".into()
        } else if u.contains("PLOSS") {
            format!("Verdict: {baseline_wins}")
        } else {
            "Equally good: [[C]]".into()
        })
    });
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let o = judge(&server.url, &questions, &out, &cache, &["--judge-mode", "pairwise", "--baseline", baseline.to_str().unwrap()]);
    let r = stdout_json(&o);
    assert_eq!((r["wins"].clone(), r["losses"].clone(), r["ties"].clone(), r["unparsed"].clone(), r["items"].clone()), (json!(2), json!(1), json!(2), json!(0), json!(5)));
    assert_eq!(r["win_rate"].as_f64().unwrap(), (2.0 + 0.5 * 2.0) / 5.0);
    let seen = server.requests();
    assert_eq!(seen.len(), 10, "two orders per question");
    for m in tags {
        let asks: Vec<&Seen> = seen.iter().filter(|s| s.user().contains(&format!("{m}:"))).collect();
        let firsts: Vec<bool> = asks.iter().map(|s| s.user().find("BASELINE-ANSWER").unwrap() < s.user().find("[The Start of Assistant B's Answer]").unwrap()).collect();
        assert_eq!(asks.len(), 2, "{m}");
        assert!(firsts.contains(&true) && firsts.contains(&false), "{m}: the baseline was shown first in one order and second in the other");
        assert!(asks[0].system().contains("output your final verdict"), "pair-v2's system prompt");
    }
    let items = lines(&out.join("judgments.jsonl"));
    let flip = items.iter().find(|i| i["question"].as_str().unwrap().starts_with("PFLIP")).unwrap();
    assert_eq!((flip["winner_model_first"].as_str(), flip["winner_baseline_first"].as_str(), flip["outcome"].as_str()), (Some("model"), Some("baseline"), Some("tie")));
    assert_eq!(flip["baseline_answer"], "BASELINE-ANSWER");
    let per_item: Vec<f64> = items.iter().map(|i| i["win_rate"].as_f64().unwrap()).collect();
    assert_eq!(per_item.iter().sum::<f64>() / per_item.len() as f64, r["win_rate"].as_f64().unwrap(), "the items' mean is the win rate (the report's per-item scores)");
    assert_eq!(flip["id"], "2#1");
    assert_key_nowhere(&o, &[&out, &cache]);

    // Without the baseline's answers there is nothing to compare with.
    let o = judge(&server.url, &questions, &dir.path().join("o2"), &cache, &["--judge-mode", "pairwise"]);
    assert!(!o.status.success() && common::stderr(&o).contains("--baseline"), "{}", common::stderr(&o));
}

#[test]
fn a_local_checkpoint_judges_offline_once_per_item() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_questions(dir.path(), &[json!({"question_id": 1, "category": "writing", "turns": ["Q-ONE", "Q-TWO"]}), json!({"question_id": 2, "category": "math", "turns": ["2+2?"], "reference": ["4"]})]);
    let fixtures = trainer::testing::fixtures_dir();
    let (model, judge_model) = (fixtures.join("models/llama-gqa"), fixtures.join("models/qwen2-tied"));
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let run = |out: &Path| {
        common::trainer(&[
            "eval", "--task", "judge", "--model", model.to_str().unwrap(), "--data", questions.to_str().unwrap(), "--template", "chatml", "--max-new-tokens", "3",
            "--judge-local", judge_model.to_str().unwrap(), "--judge-template", "chatml", "--judge-max-tokens", "5", "--judge-cache", cache.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json",
        ])
    };
    let r = stdout_json(&run(&out));
    assert_eq!((r["items"].clone(), r["requests"].clone(), r["judge"]["url"].clone()), (json!(3), json!(3), json!("local")), "greedy judgments are not asked again");
    let items = lines(&out.join("judgments.jsonl"));
    for it in &items {
        assert!(!it["judgment"].as_str().unwrap().is_empty());
        assert_eq!(it["score"].is_null(), it["unparsed"] == json!(true));
    }
    assert_eq!(items.iter().filter(|i| i["unparsed"] == json!(true)).count() as u64, r["unparsed"].as_u64().unwrap());
    let again = stdout_json(&run(&dir.path().join("out2")));
    assert_eq!(again["requests"], 0);
    assert_eq!(lines(&dir.path().join("out2/judgments.jsonl")).iter().map(|i| i["judgment"].clone()).collect::<Vec<_>>(), items.iter().map(|i| i["judgment"].clone()).collect::<Vec<_>>());
}

#[test]
fn a_sweep_judges_each_run_and_a_second_sweep_asks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_questions(dir.path(), &[json!({"question_id": 1, "category": "writing", "language": "es", "turns": ["SW-1 hola", "SW-2 adiós"]}), json!({"question_id": 2, "category": "math", "language": "en", "turns": ["SW-3 2+2?"], "reference": ["4"]})]);
    let r = common::repo();
    let recipe = |out: &str, url: &str| {
        let text = format!(
            r#"name = "j"
output_dir = "{dir}/{out}"
[model]
path = "{tiny}"
[train]
lr = [1e-3]
max_steps = 2
batch_size = 4
micro_batch_size = 4
max_seq_len = 96
[[sources]]
name = "es"
path = "{samples}/es-native.json"
language = "es"
[[conditions]]
name = "es"
sources = ["es"]
[[evals]]
name = "mt"
task = "judge"
path = "{questions}"
template = "chatml"
max_new_tokens = 3
[evals.judge]
url = "{url}"
model = "judge-9000"
api_key_env = "JUDGE_TEST_KEY"
cache = "{dir}/judge-cache"
"#,
            tiny = r.join("data/tiny-llama").display(),
            samples = r.join("data/samples").display(),
            questions = questions.display(),
            dir = dir.path().display(),
        );
        let p = dir.path().join(format!("{out}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let server = Server::start(|s, _| Reply::Say(if s.user().contains("SW-2") { "Rating: [[3]]".into() } else { "Rating: [[7]]".into() }));
    let run = |out: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
        cmd.args(["run", recipe(out, &server.url).to_str().unwrap(), "--quiet"]).env("JUDGE_TEST_KEY", KEY);
        for v in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
            cmd.env_remove(v);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", common::stderr(&o));
        o
    };
    let o = run("out1");
    let out = dir.path().join("out1");
    let run_dir = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.path()).find(|p| p.join("run.json").is_file()).expect("a finished run");
    let summary = common::json(&run_dir.join("run.json"));
    let mt = &summary["benchmarks"]["mt"];
    assert_eq!((mt["score"].as_f64(), mt["items"].as_u64(), mt["unparsed"].as_u64()), (Some((7.0 + 3.0 + 7.0) / 3.0), Some(3), Some(0)), "{mt}");
    assert_eq!((mt["spec"]["task"].as_str(), mt["spec"]["form"].as_str()), (Some("judge"), Some("generative")));
    assert_eq!(lines(&run_dir.join("benchmarks/mt.jsonl")).len(), 3);
    assert_eq!(lines(&run_dir.join("benchmarks/mt.answers.jsonl")).len(), 2);
    let scores = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    assert!(scores.lines().any(|l| l.contains(",mt,score,") && l.contains(",es,")), "per-language judge scores in scores.csv:\n{scores}");
    assert_eq!(server.requests().len(), 3);
    assert_key_nowhere(&o, &[&out, &dir.path().join("judge-cache")]);

    // Another sweep over the same answers (the same seed trains the same adapter): all judgments from the cache.
    run("out2");
    assert_eq!(server.requests().len(), 3, "the second sweep asked the judge again");
}
