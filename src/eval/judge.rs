//! The LLM judge (`--task judge`): a model's answers to MT-Bench-style questions graded by a strong model behind
//! an OpenAI-compatible endpoint (or a checkpoint loaded here, [`local`]), as FastChat's llm_judge grades them.
//!
//! - single: every turn of every question gets a 1–10 rating (turn 1 with "single-v1", turn 2 with
//!   "single-v1-multi-turn"; questions of the math, reasoning and coding categories with the reference-based
//!   "single-math-v1" prompts); the score is the mean rating.
//! - pairwise: every turn is compared with a baseline's answer in both orders ("pair-v2" family); two verdicts that
//!   disagree, or a tie in the first order, count as a tie (FastChat's show_result); win rate = (wins + ties/2) /
//!   judged items.
//!
//! A judgment whose rating or verdict cannot be read is asked again (`parse_retries` times), then counted as
//! unparsed: it is left out of the score and reported, never scored 0. Judgments are cached on disk under a sha256
//! of (judge, prompt name, system message, user message) — the user message holds the question, the answer and any
//! reference — so a re-run asks nothing it asked before. The judge is identified by what answers, not by its name
//! alone ([`Backend::identity`]): two endpoints serving different models under one name never share judgments.

pub mod client;
pub mod local;
pub mod prompts;

use crate::eval::multiturn::{Answered, Question};
use crate::recipe::{BenchmarkSection, JudgeSection};
use anyhow::{bail, Context, Result};
use client::Endpoint;
use prompts::{fill, JudgePrompt, Verdict};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Single,
    Pairwise,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "single" => Ok(Mode::Single),
            "pairwise" => Ok(Mode::Pairwise),
            other => bail!("judge mode must be single or pairwise, not `{other}`"),
        }
    }
}

/// Who judges: an OpenAI-compatible endpoint, or a checkpoint loaded here (offline judging).
pub enum Backend {
    Http(Endpoint),
    Local(Box<local::LocalJudge>),
}

impl Backend {
    /// The judge's name in the cache key and the summary.
    fn model(&self) -> &str {
        match self {
            Backend::Http(e) => &e.model,
            Backend::Local(l) => &l.name,
        }
    }

    /// Who answers, as the cache key sees it: an endpoint's URL, model name and answer limit (two servers may call
    /// different models by one name); a local checkpoint's folder, files, template and limit
    /// ([`local::LocalJudge::identity`]).
    fn identity(&self) -> String {
        match self {
            Backend::Http(e) => format!("endpoint {}\nmodel {}\nmax_tokens {}", e.url, e.model, e.max_tokens),
            Backend::Local(l) => l.identity.clone(),
        }
    }

    fn url(&self) -> &str {
        match self {
            Backend::Http(e) => &e.url,
            Backend::Local(_) => "local",
        }
    }

    fn complete(&self, system: &str, user: &str) -> Result<String> {
        match self {
            Backend::Http(e) => e.complete(system, user),
            Backend::Local(l) => l.complete(system, user),
        }
    }

    /// A local judge decodes greedily: asking it again gives the same judgment.
    fn repeats_itself(&self) -> bool {
        matches!(self, Backend::Local(_))
    }
}

pub struct JudgeConfig {
    pub backend: Backend,
    pub mode: Mode,
    pub cache_dir: PathBuf,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// New requests for a judgment without a readable rating or verdict.
    pub parse_retries: usize,
}

/// The judge's verdicts and the summary.
pub struct Judged {
    /// single: {score, items, unparsed, turns: {"1": mean, "2": mean}}; pairwise: {win_rate, wins, losses, ties,
    /// items, unparsed}; both with `judge` {model, url, mode}.
    pub summary: Value,
    /// One object per (question, turn).
    pub items: Vec<Value>,
}

/// A judgment on disk, keyed by everything that went into the request.
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn key(judge: &str, prompt: &str, system: &str, user: &str) -> String {
        let mut h = Sha256::new();
        // Lengths first, so that no two different tuples hash the same bytes.
        for part in [judge, prompt, system, user] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// A cached judgment, if there is a readable one (an unreadable entry is asked again and overwritten).
    fn get(&self, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.path(key)).ok()?;
        serde_json::from_str::<Value>(&text).ok()?.get("judgment")?.as_str().map(str::to_string)
    }

    fn put(&self, key: &str, model: &str, prompt: &str, judgment: &str) -> Result<()> {
        let path = self.path(key);
        let dir = path.parent().expect("cache entries live in a folder");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the judge cache folder {}", dir.display()))?;
        crate::fsutil::write_atomic(&path, json!({ "judge_model": model, "prompt": prompt, "judgment": judgment }).to_string().as_bytes())
    }
}

/// One request to the judge: which prompt, and its filled-in messages.
struct Ask {
    prompt: &'static JudgePrompt,
    user: String,
}

/// What one request came back with (from the endpoint or the cache).
#[derive(Debug, Clone, Serialize)]
struct Reply {
    judgment: String,
    cached: bool,
}

struct Judge<'a> {
    cfg: &'a JudgeConfig,
    cache: Cache,
    requests: AtomicUsize,
}

impl Judge<'_> {
    /// The judge's answer to `ask`, read with `parse`: from the cache, else asked (again while it cannot be read,
    /// up to `parse_retries` times). The last judgment is cached whether or not it could be read, so a re-run
    /// never pays for it twice.
    fn ask<T>(&self, ask: &Ask, parse: impl Fn(&str) -> Option<T>) -> Result<(Reply, Option<T>)> {
        let model = self.cfg.backend.model();
        let key = Cache::key(&self.cfg.backend.identity(), &ask.prompt.name, &ask.prompt.system_prompt, &ask.user);
        if let Some(judgment) = self.cache.get(&key) {
            let parsed = parse(&judgment);
            return Ok((Reply { judgment, cached: true }, parsed));
        }
        let mut judgment = String::new();
        let mut parsed = None;
        let attempts = if self.cfg.backend.repeats_itself() { 1 } else { 1 + self.cfg.parse_retries };
        for _ in 0..attempts {
            self.requests.fetch_add(1, Ordering::Relaxed);
            judgment = self.cfg.backend.complete(&ask.prompt.system_prompt, &ask.user)?;
            parsed = parse(&judgment);
            if parsed.is_some() {
                break;
            }
        }
        self.cache.put(&key, model, &ask.prompt.name, &judgment)?;
        Ok((Reply { judgment, cached: false }, parsed))
    }
}

/// The reference answers of a question, if its category needs them (FastChat's NEED_REF_CATS): from `references`
/// (a reference file), else the question's own `reference`; an error when there are none or too few.
fn reference_for<'a>(q: &'a Question, references: &'a HashMap<String, Vec<String>>) -> Result<Option<&'a [String]>> {
    if !prompts::NEED_REF_CATS.contains(&q.category.as_str()) {
        return Ok(None);
    }
    let r = references.get(&q.key()).or(q.reference.as_ref()).with_context(|| {
        format!("question {} ({}) is judged against a reference answer, as MT-Bench does for math, reasoning and coding: give it in the question's `reference` or in --reference", q.key(), q.category)
    })?;
    anyhow::ensure!(r.len() >= q.turns.len(), "question {}: {} reference answer(s) for {} turns", q.key(), r.len(), q.turns.len());
    Ok(Some(r))
}

/// The user message of a single-answer judgment of `turn` (1-based).
fn single_ask(q: &Question, answers: &[String], reference: Option<&[String]>, turn: usize) -> Result<Ask> {
    let prompt = prompts::for_turn(false, reference.is_some(), turn);
    let r = |k: usize| reference.map_or("", |r| r[k].as_str());
    let user = if turn == 1 {
        fill(&prompt.prompt_template, &[("question", &q.turns[0]), ("answer", &answers[0]), ("ref_answer_1", r(0))])?
    } else {
        fill(&prompt.prompt_template, &[("question_1", &q.turns[0]), ("question_2", &q.turns[1]), ("answer_1", &answers[0]), ("answer_2", &answers[1]), ("ref_answer_1", r(0)), ("ref_answer_2", r(1))])?
    };
    Ok(Ask { prompt, user })
}

/// The user message of a pairwise judgment of `turn` with `a` shown as assistant A and `b` as assistant B.
fn pair_ask(q: &Question, a: &[String], b: &[String], reference: Option<&[String]>, turn: usize) -> Result<Ask> {
    let prompt = prompts::for_turn(true, reference.is_some(), turn);
    let r = |k: usize| reference.map_or("", |r| r[k].as_str());
    let user = if turn == 1 {
        fill(&prompt.prompt_template, &[("question", &q.turns[0]), ("answer_a", &a[0]), ("answer_b", &b[0]), ("ref_answer_1", r(0))])?
    } else {
        fill(
            &prompt.prompt_template,
            &[("question_1", &q.turns[0]), ("question_2", &q.turns[1]), ("answer_a_1", &a[0]), ("answer_a_2", &a[1]), ("answer_b_1", &b[0]), ("answer_b_2", &b[1]), ("ref_answer_1", r(0)), ("ref_answer_2", r(1))],
        )?
    };
    Ok(Ask { prompt, user })
}

/// Who won one ordering, in the model's terms.
fn winner(v: Verdict, model_is_a: bool) -> &'static str {
    match (v, model_is_a) {
        (Verdict::Tie, _) => "tie",
        (Verdict::A, true) | (Verdict::B, false) => "model",
        _ => "baseline",
    }
}

/// One unit of work: a question's turn.
struct Item<'a> {
    question: &'a Question,
    answers: &'a [String],
    baseline: Option<&'a [String]>,
    reference: Option<&'a [String]>,
    turn: usize,
}

fn judge_item(judge: &Judge, it: &Item) -> Result<Value> {
    let q = it.question;
    // `id` pairs the item across runs in the report's paired tests.
    let mut line = json!({ "id": format!("{}#{}", q.key(), it.turn), "question_id": q.question_id, "category": q.category, "turn": it.turn, "question": q.turns[it.turn - 1], "answer": it.answers[it.turn - 1] });
    if let Some(l) = &q.language {
        line["language"] = json!(l);
    }
    if let Some(r) = it.reference {
        line["reference"] = json!(r[..it.turn]);
    }
    match it.baseline {
        None => {
            let ask = single_ask(q, it.answers, it.reference, it.turn)?;
            let (reply, score) = judge.ask(&ask, prompts::parse_rating)?;
            line["prompt"] = json!(ask.prompt.name);
            line["judgment"] = json!(reply.judgment);
            line["cached"] = json!(reply.cached);
            line["score"] = json!(score);
            line["unparsed"] = json!(score.is_none());
        }
        Some(base) => {
            line["baseline_answer"] = json!(base[it.turn - 1]);
            // g1: the model as assistant A; g2: the baseline as A (FastChat's play_a_match_pair).
            let g1 = pair_ask(q, it.answers, base, it.reference, it.turn)?;
            let g2 = pair_ask(q, base, it.answers, it.reference, it.turn)?;
            let (r1, v1) = judge.ask(&g1, prompts::parse_verdict)?;
            let (r2, v2) = judge.ask(&g2, prompts::parse_verdict)?;
            let (w1, w2) = (v1.map(|v| winner(v, true)), v2.map(|v| winner(v, false)));
            let outcome = match (w1, w2) {
                (Some(a), Some(b)) if a == "tie" || a != b => Some("tie"),
                (Some("model"), Some(_)) => Some("win"),
                (Some(_), Some(_)) => Some("loss"),
                _ => None,
            };
            line["prompt"] = json!(g1.prompt.name);
            line["judgment_model_first"] = json!(r1.judgment);
            line["judgment_baseline_first"] = json!(r2.judgment);
            line["winner_model_first"] = json!(w1);
            line["winner_baseline_first"] = json!(w2);
            line["cached"] = json!(r1.cached && r2.cached);
            line["outcome"] = json!(outcome);
            // Per item, 1 for a win, ½ for a tie, 0 for a loss: the mean over items is the win rate.
            line["win_rate"] = json!(outcome.map(|o| match o {
                "win" => 1.0,
                "tie" => 0.5,
                _ => 0.0,
            }));
            line["unparsed"] = json!(outcome.is_none());
        }
    }
    Ok(line)
}

/// Judges `answers` (the model's, in question order). `baseline` (pairwise mode) holds the other model's answers
/// by question id; `references` reference answers by question id (they override the questions' own).
pub fn judge_answers(cfg: &JudgeConfig, questions: &[Question], answers: &[Answered], baseline: Option<&HashMap<String, Vec<String>>>, references: &HashMap<String, Vec<String>>) -> Result<Judged> {
    anyhow::ensure!(questions.len() == answers.len(), "one set of answers per question");
    anyhow::ensure!(cfg.concurrency > 0, "judge concurrency must be at least 1");
    if cfg.mode == Mode::Pairwise {
        anyhow::ensure!(baseline.is_some(), "pairwise judging needs the baseline's answers (--baseline)");
    }
    let mut items = Vec::new();
    for (q, a) in questions.iter().zip(answers) {
        anyhow::ensure!(a.answers.len() == q.turns.len(), "question {}: {} answers for {} turns", q.key(), a.answers.len(), q.turns.len());
        let reference = reference_for(q, references)?;
        let base = match (cfg.mode, baseline) {
            (Mode::Pairwise, Some(b)) => {
                let base = b.get(&q.key()).with_context(|| format!("the baseline has no answer to question {}", q.key()))?;
                anyhow::ensure!(base.len() >= q.turns.len(), "the baseline answers {} of the {} turns of question {}", base.len(), q.turns.len(), q.key());
                Some(base.as_slice())
            }
            _ => None,
        };
        for turn in 1..=q.turns.len() {
            items.push(Item { question: q, answers: &a.answers, baseline: base, reference, turn });
        }
    }
    let judge = Judge { cfg, cache: Cache { dir: cfg.cache_dir.clone() }, requests: AtomicUsize::new(0) };
    let lines = run_parallel(&items, cfg.concurrency, |it| judge_item(&judge, it).with_context(|| format!("judging question {} turn {}", it.question.key(), it.turn)))?;
    let requests = judge.requests.load(Ordering::Relaxed);
    let unparsed = lines.iter().filter(|l| l["unparsed"] == json!(true)).count();
    let about = json!({ "model": cfg.backend.model(), "url": cfg.backend.url(), "mode": if cfg.mode == Mode::Single { "single" } else { "pairwise" } });
    let summary = match cfg.mode {
        Mode::Single => {
            let mean = |turn: Option<u64>| {
                let s: Vec<f64> = lines.iter().filter(|l| turn.is_none_or(|t| l["turn"] == json!(t))).filter_map(|l| l["score"].as_f64()).collect();
                if s.is_empty() {
                    Value::Null
                } else {
                    json!(s.iter().sum::<f64>() / s.len() as f64)
                }
            };
            let mut turns = serde_json::Map::new();
            for t in 1..=2u64 {
                if lines.iter().any(|l| l["turn"] == json!(t)) {
                    turns.insert(t.to_string(), mean(Some(t)));
                }
            }
            json!({ "score": mean(None), "items": lines.len(), "unparsed": unparsed, "turns": turns, "requests": requests, "judge": about })
        }
        Mode::Pairwise => {
            let count = |o: &str| lines.iter().filter(|l| l["outcome"] == json!(o)).count();
            let (wins, losses, ties) = (count("win"), count("loss"), count("tie"));
            let judged = wins + losses + ties;
            let win_rate = if judged == 0 { Value::Null } else { json!((wins as f64 + 0.5 * ties as f64) / judged as f64) };
            json!({ "win_rate": win_rate, "wins": wins, "losses": losses, "ties": ties, "items": lines.len(), "unparsed": unparsed, "requests": requests, "judge": about })
        }
    };
    Ok(Judged { summary, items: lines })
}

/// `work` on every item with at most `threads` at once, results in item order. The first error stops the others
/// from starting new items and is returned.
fn run_parallel<T: Sync, R: Send>(items: &[T], threads: usize, work: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let first_error: Mutex<Option<(usize, anyhow::Error)>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()).max(1) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    match work(item) {
                        Ok(r) => results.lock().expect("no panics while held")[i] = Some(r),
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut slot = first_error.lock().expect("no panics while held");
                            // Report the earliest item's error, so the message does not depend on thread timing.
                            if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                                *slot = Some((i, e));
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some((_, e)) = first_error.into_inner().expect("threads joined") {
        return Err(e);
    }
    Ok(results.into_inner().expect("threads joined").into_iter().map(|r| r.expect("every item done")).collect())
}

/// Reference answers by question id: FastChat's reference-answer layout (`choices[0].turns`, as in
/// `reference_answer/gpt-4.jsonl`), our answers layout (`answers`), or a question file's `reference`.
pub fn read_references(path: &Path) -> Result<HashMap<String, Vec<String>>> {
    let rows = crate::eval::multiturn::read_jsonl(path, |row| {
        let id = row.get("question_id").map(crate::eval::multiturn::id_key).context("`question_id` is missing")?;
        let turns = if row.get("reference").is_some() {
            crate::eval::multiturn::string_list(row, "reference")?
        } else if row.get("answers").is_some() {
            crate::eval::multiturn::string_list(row, "answers")?
        } else {
            let choice = row.pointer("/choices/0").context("no `choices` (FastChat reference answers), `answers` or `reference`")?;
            crate::eval::multiturn::string_list(choice, "turns").context("choices[0]")?
        };
        Ok((id, turns))
    })?;
    Ok(rows.into_iter().collect())
}

/// Writes the per-item judgments (JSON lines) and the summary (JSON), each through a temporary file.
pub fn write_results(judged: &Judged, items_path: &Path, summary_path: Option<&Path>) -> Result<()> {
    let mut text = String::new();
    for l in &judged.items {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    crate::fsutil::write_atomic(items_path, text.as_bytes())?;
    if let Some(p) = summary_path {
        crate::fsutil::write_atomic(p, serde_json::to_string_pretty(&judged.summary)?.as_bytes())?;
    }
    Ok(())
}

/// Everything `--task judge` (or a `task = "judge"` eval) is given, before any file is read.
#[derive(Debug, Clone)]
pub struct JudgeSettings {
    /// MT-Bench-style questions.
    pub questions: PathBuf,
    pub judge: JudgeSection,
    /// How the answering model is prompted.
    pub template: String,
    pub max_new_tokens: usize,
    pub batch_size: usize,
}

/// The environment variable a judge's API key is read from unless told otherwise.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";

/// Where judgments are cached unless told otherwise: shared by every run on the machine, so a re-run, a resumed
/// sweep or another sweep over the same answers asks nothing twice.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"))).unwrap_or_else(std::env::temp_dir);
    base.join("trainer").join("judge")
}

/// A judge task with its files read: ready to answer and judge.
pub struct JudgeTask {
    pub questions: Vec<Question>,
    pub references: HashMap<String, Vec<String>>,
    pub baseline: Option<HashMap<String, Vec<String>>>,
    pub config: JudgeConfig,
    pub template: String,
    pub max_new_tokens: usize,
    pub batch_size: usize,
}

impl JudgeSettings {
    /// A recipe's `task = "judge"` benchmark (its paths already resolved).
    pub fn from_section(spec: &BenchmarkSection) -> Result<Self> {
        let judge = spec.judge.clone().context("task = \"judge\" needs its judge table")?;
        Ok(Self { questions: spec.path.clone(), judge, template: spec.template_name().to_string(), max_new_tokens: spec.max_new_tokens(), batch_size: spec.batch_size })
    }

    /// Reads the questions, references and baseline, and the API key from its environment variable (an unset
    /// variable is an error when one was named, and means "no key" for the default: local servers need none), or
    /// loads the local judge on `device`.
    pub fn load(&self, dtype: candle_core::DType, device: &candle_core::Device) -> Result<JudgeTask> {
        let j = &self.judge;
        j.check()?;
        anyhow::ensure!(self.batch_size > 0 && self.max_new_tokens > 0, "batch_size and max_new_tokens must be positive");
        let backend = match (&j.url, &j.local) {
            (Some(url), None) => Backend::Http(self.endpoint(url)?),
            (None, Some(local)) => Backend::Local(Box::new(local::LocalJudge::open(local, &j.template, j.max_tokens, dtype, device)?)),
            _ => bail!("name one judge: an endpoint or a local checkpoint"),
        };
        let mode = Mode::parse(&j.mode)?;
        let config = JudgeConfig { backend, mode, cache_dir: j.cache.clone().unwrap_or_else(default_cache_dir), concurrency: j.concurrency, parse_retries: 2 };
        let questions = crate::eval::multiturn::read_questions(&self.questions)?;
        let references = j.reference.as_deref().map(read_references).transpose()?.unwrap_or_default();
        for q in &questions {
            reference_for(q, &references).with_context(|| self.questions.display().to_string())?;
        }
        let baseline = match (mode, &j.baseline) {
            (Mode::Pairwise, Some(p)) => Some(crate::eval::multiturn::read_answers(p)?),
            _ => None,
        };
        Ok(JudgeTask { questions, references, baseline, config, template: self.template.clone(), max_new_tokens: self.max_new_tokens, batch_size: self.batch_size })
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let j = &self.judge;
        let api_key = match std::env::var(&j.api_key_env) {
            Ok(k) if !k.is_empty() => Some(k),
            _ if j.api_key_env == DEFAULT_API_KEY_ENV => None,
            _ => bail!("the judge's API key variable {} is not set", j.api_key_env),
        };
        // Tests shorten the waits between attempts; a run has no reason to.
        let backoff = std::env::var("TRAINER_JUDGE_BACKOFF_MS").ok().and_then(|v| v.parse().ok()).map_or(Duration::from_secs(2), Duration::from_millis);
        Ok(Endpoint {
            url: client::completions_url(url)?,
            model: j.model.clone().unwrap_or_default(),
            api_key,
            timeout: Duration::from_secs_f64(j.timeout),
            retries: j.retries,
            backoff,
            max_backoff: Duration::from_secs(60).max(backoff),
            max_tokens: j.max_tokens,
        })
    }
}

/// Where a judge task writes: the model's answers (reusable as another run's `--baseline`), one line per judged
/// item, and the summary (the sweep keeps it in run.json instead).
pub struct JudgeOutputs {
    pub answers: PathBuf,
    pub judgments: PathBuf,
    pub summary: Option<PathBuf>,
}

impl JudgeOutputs {
    /// answers.jsonl, judgments.jsonl and summary.json in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self { answers: dir.join("answers.jsonl"), judgments: dir.join("judgments.jsonl"), summary: Some(dir.join("summary.json")) }
    }
}

impl JudgeTask {
    /// Generates the answers (greedy), writes them, has them judged and writes the judgments: the summary comes
    /// back. When the judge fails, no judgments or summary are written.
    pub fn run(&self, session: &crate::session::Session, adapter: Option<&crate::lora::Adapter>, out: &JudgeOutputs) -> Result<Value> {
        let opts = crate::generate::GenOptions { max_new_tokens: self.max_new_tokens, temperature: 0.0, top_p: 1.0, stop: Vec::new(), seed: 0 };
        let answers = crate::eval::multiturn::answer_questions(session, adapter, &self.questions, &self.template, self.batch_size, &opts)?;
        for p in [Some(&out.answers), Some(&out.judgments), out.summary.as_ref()].into_iter().flatten() {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
        }
        crate::eval::multiturn::write_answers(&out.answers, &answers)?;
        let judged = judge_answers(&self.config, &self.questions, &answers, self.baseline.as_ref(), &self.references)?;
        write_results(&judged, &out.judgments, out.summary.as_deref())?;
        Ok(judged.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(category: &str, turns: &[&str], reference: Option<&[&str]>) -> Question {
        Question { question_id: json!(7), category: category.into(), turns: turns.iter().map(|s| s.to_string()).collect(), reference: reference.map(|r| r.iter().map(|s| s.to_string()).collect()), language: None }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn single_prompts_as_fastchat_fills_them() {
        let question = q("writing", &["Q1", "Q2"], None);
        let a = single_ask(&question, &strings(&["A1", "A2"]), None, 1).unwrap();
        assert_eq!(a.prompt.name, "single-v1");
        assert!(a.user.ends_with("[Question]\nQ1\n\n[The Start of Assistant's Answer]\nA1\n[The End of Assistant's Answer]"), "{}", a.user);
        let a = single_ask(&question, &strings(&["A1", "A2"]), None, 2).unwrap();
        assert_eq!(a.prompt.name, "single-v1-multi-turn");
        assert!(a.user.contains("### User:\nQ1\n\n### Assistant A:\nA1\n\n### User:\nQ2\n\n### Assistant A:\nA2\n\n"));
        let r = strings(&["R1", "R2"]);
        let a = single_ask(&question, &strings(&["A1", "A2"]), Some(&r), 2).unwrap();
        assert_eq!(a.prompt.name, "single-math-v1-multi-turn");
        assert!(a.user.contains("### Reference answer:\nR1") && a.user.contains("### Reference answer:\nR2"));
    }

    #[test]
    fn references_only_for_the_categories_mt_bench_gives_them() {
        let none = HashMap::new();
        assert!(reference_for(&q("writing", &["x"], Some(&["r"])), &none).unwrap().is_none());
        assert_eq!(reference_for(&q("math", &["x"], Some(&["r"])), &none).unwrap().unwrap(), ["r"]);
        let file: HashMap<String, Vec<String>> = [("7".to_string(), strings(&["from file", "2"]))].into();
        assert_eq!(reference_for(&q("coding", &["x", "y"], Some(&["r", "s"])), &file).unwrap().unwrap()[0], "from file");
        let e = reference_for(&q("reasoning", &["x"], None), &none).unwrap_err().to_string();
        assert!(e.contains("question 7 (reasoning)") && e.contains("--reference"), "{e}");
        assert!(reference_for(&q("math", &["x", "y"], Some(&["r"])), &none).is_err());
    }

    #[test]
    fn pairwise_orders_map_back_to_the_model() {
        assert_eq!(winner(Verdict::A, true), "model");
        assert_eq!(winner(Verdict::A, false), "baseline");
        assert_eq!(winner(Verdict::B, false), "model");
        assert_eq!(winner(Verdict::Tie, false), "tie");
    }

    #[test]
    fn cache_keys_separate_every_part() {
        assert_ne!(Cache::key("m", "p", "ab", "c"), Cache::key("m", "p", "a", "bc"));
        assert_eq!(Cache::key("m", "p", "s", "u").len(), 64);
    }

    #[test]
    fn parallel_results_keep_item_order_and_stop_at_an_error() {
        let items: Vec<usize> = (0..20).collect();
        assert_eq!(run_parallel(&items, 4, |&i| Ok(i * 2)).unwrap(), items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let e = run_parallel(&items, 3, |&i| if i >= 5 { bail!("item {i}") } else { Ok(i) }).unwrap_err();
        assert_eq!(e.to_string(), "item 5");
    }
}
