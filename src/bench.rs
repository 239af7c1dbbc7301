//! Benchmarks in the conventions of lm-evaluation-harness: multiple-choice log-likelihood scoring (accuracy and
//! length-normalised accuracy, k-shot prompts from a dev split) and generative QA (exact match, F1, reference
//! contained in the output, and the final number for MGSM-style maths).
//!
//! Items come from JSON, JSONL or parquet. Multiple choice: `question`, `choices` (list of strings), `answer`
//! (index or letter). QA: `question`, `answer` (string, number or list of acceptable strings).

use crate::data::batch::{Batch, Example};
use crate::data::reader;
use crate::lora::Adapter;
use crate::model::Model;
use crate::tokenizer::TextTokenizer;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct McItem {
    pub question: String,
    pub choices: Vec<String>,
    pub answer: usize,
    /// The record's `id`, if any (pairs items across runs in the report's paired tests; else the index does).
    pub id: Option<String>,
    /// The record's `language` (or `lang`), if any; else the `[[evals]]` entry's `language`.
    pub language: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct QaItem {
    pub question: String,
    pub answers: Vec<String>,
    pub id: Option<String>,
    pub language: Option<String>,
}

/// A record's optional `id` (string or number) and `language` / `lang` (string).
fn id_and_language(v: &Value) -> (Option<String>, Option<String>) {
    let id = match v.get("id") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let language = v.get("language").or_else(|| v.get("lang")).and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_string);
    (id, language)
}

fn string_field(v: &Value, key: &str, loc: &impl std::fmt::Display) -> Result<String> {
    match v.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => bail!("{loc}: field `{key}` is empty"),
        Some(other) => bail!("{loc}: field `{key}` must be a string, found {other}"),
        None => bail!("{loc}: missing field `{key}`"),
    }
}

/// Every record of a benchmark file, parsed by `parse` (which names the record's location in its errors).
fn read_items<T>(path: &Path, parse: impl Fn(&Value, &crate::data::record::Location) -> Result<T>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for raw in reader::open(path)? {
        let raw = raw?;
        out.push(parse(&raw.value, &raw.location)?);
    }
    Ok(out)
}

pub fn read_mc(path: &Path) -> Result<Vec<McItem>> {
    read_items(path, |v, loc| {
        let question = string_field(v, "question", loc)?;
        let choices: Vec<String> = match v.get("choices") {
            Some(Value::Array(a)) if a.len() >= 2 => a.iter().map(|c| c.as_str().map(str::to_string).with_context(|| format!("{loc}: every choice must be a string"))).collect::<Result<_>>()?,
            _ => bail!("{loc}: field `choices` must be a list of at least two strings"),
        };
        let answer = match v.get("answer") {
            Some(Value::Number(n)) => n.as_u64().map(|x| x as usize),
            Some(Value::String(s)) if s.len() == 1 && s.as_bytes()[0].is_ascii_uppercase() => Some((s.as_bytes()[0] - b'A') as usize),
            Some(Value::String(s)) => s.parse::<usize>().ok(),
            _ => None,
        };
        match answer {
            Some(a) if a < choices.len() => {
                let (id, language) = id_and_language(v);
                Ok(McItem { question, choices, answer: a, id, language })
            }
            _ => bail!("{loc}: field `answer` must be a choice index (0-based) or letter within the {} choices", choices.len()),
        }
    })
}

pub fn read_qa(path: &Path) -> Result<Vec<QaItem>> {
    read_items(path, |v, loc| {
        let question = string_field(v, "question", loc)?;
        let answers: Vec<String> = match v.get("answer").or_else(|| v.get("answers")) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Number(n)) => vec![n.to_string()],
            Some(Value::Array(a)) if !a.is_empty() => a.iter().map(|x| x.as_str().map(str::to_string).or_else(|| x.as_number().map(|n| n.to_string())).with_context(|| format!("{loc}: answers must be strings or numbers"))).collect::<Result<_>>()?,
            _ => bail!("{loc}: field `answer` must be a string, a number or a non-empty list"),
        };
        let (id, language) = id_and_language(v);
        Ok(QaItem { question, answers, id, language })
    })
}

/// How a multiple-choice item becomes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McStyle {
    /// "Question: …\nAnswer:" and each choice's text as the continuation (ARC, XCOPA, HellaSwag style).
    Continuation,
    /// The choices listed as "A. …" in the prompt and " A", " B", … as continuations (MMLU, CMMLU, C-Eval style).
    Letters,
}

fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

fn mc_question(item: &McItem, style: McStyle) -> String {
    match style {
        McStyle::Continuation => format!("Question: {}\nAnswer:", item.question),
        McStyle::Letters => {
            let mut s = format!("{}\n", item.question.trim());
            for (i, c) in item.choices.iter().enumerate() {
                s.push_str(&format!("{}. {}\n", letter(i), c.trim()));
            }
            s.push_str("Answer:");
            s
        }
    }
}

fn mc_continuation(item: &McItem, i: usize, style: McStyle) -> String {
    format!(" {}", mc_choice(item, i, style))
}

/// The choice string itself, without the target delimiter: what lm-eval's acc_norm divides by the length of.
fn mc_choice(item: &McItem, i: usize, style: McStyle) -> String {
    match style {
        McStyle::Continuation => item.choices[i].trim().to_string(),
        McStyle::Letters => letter(i).to_string(),
    }
}

/// The choice with the highest log-likelihood per character of its own string (lm-eval's acc_norm:
/// `completion_len = len(choice)`, the delimiter not counted); the first on ties, as numpy's argmax.
fn norm_argmax(ll: &[f64], choices: &[String]) -> usize {
    let norm: Vec<f64> = ll.iter().zip(choices).map(|(x, c)| x / c.chars().count() as f64).collect();
    norm.iter().enumerate().fold(0, |best, (i, &x)| if x > norm[best] { i } else { best })
}

/// The k-shot context of an item: the first `shots` dev items with their answers, then the question.
pub fn mc_context(item: &McItem, dev: &[McItem], shots: usize, style: McStyle) -> String {
    let mut s = String::new();
    for d in dev.iter().take(shots) {
        s.push_str(&mc_question(d, style));
        s.push_str(&mc_continuation(d, d.answer, style));
        s.push_str("\n\n");
    }
    s.push_str(&mc_question(item, style));
    s
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct McResult {
    pub acc: f64,
    /// Accuracy with each choice's log-likelihood divided by its length in characters (lm-eval's acc_norm).
    pub acc_norm: f64,
    pub items: usize,
    /// Log-likelihood of every choice of every item.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub loglikelihoods: Vec<Vec<f64>>,
    /// Per item: (acc, acc_norm), each 0 or 1 (not in the summary JSON).
    #[serde(skip)]
    pub item_scores: Vec<(f64, f64)>,
}

/// Scores every choice by the log-likelihood of its continuation given the context.
pub fn score_mc(model: &Model, adapter: Option<&Adapter>, tok: &TextTokenizer, items: &[McItem], dev: &[McItem], shots: usize, style: McStyle, batch_size: usize) -> Result<McResult> {
    if shots > dev.len() {
        bail!("{shots}-shot prompts need {shots} dev items, the dev split has {}", dev.len());
    }
    // One example per (item, choice): context tokens (with the tokenizer's BOS) then continuation tokens, the
    // continuation's tokens being the targets.
    let mut examples = Vec::new();
    for item in items {
        let ctx = tok.encode(&mc_context(item, dev, shots, style), true)?;
        for i in 0..item.choices.len() {
            let cont = tok.encode(&mc_continuation(item, i, style), false)?;
            let mut ids = ctx.clone();
            ids.extend(&cont);
            let is_target = (0..ids.len()).map(|k| k >= ctx.len()).collect();
            examples.push(Example::new(ids, is_target, false));
        }
    }
    let mut nll = Vec::with_capacity(examples.len());
    let bar = progress(examples.len(), "mc");
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        nll.extend(model.example_nll(&Batch::pad(&refs, 0), adapter)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let (mut correct, mut correct_norm, mut k) = (0usize, 0usize, 0usize);
    let mut lls = Vec::with_capacity(items.len());
    let mut item_scores = Vec::with_capacity(items.len());
    for item in items {
        let ll: Vec<f64> = nll[k..k + item.choices.len()].iter().map(|x| -x).collect();
        k += item.choices.len();
        let argmax = |xs: &[f64]| xs.iter().enumerate().fold(0, |best, (i, &x)| if x > xs[best] { i } else { best });
        let choices: Vec<String> = (0..item.choices.len()).map(|i| mc_choice(item, i, style)).collect();
        let (right, right_norm) = (argmax(&ll) == item.answer, norm_argmax(&ll, &choices) == item.answer);
        correct += right as usize;
        correct_norm += right_norm as usize;
        item_scores.push((right as u8 as f64, right_norm as u8 as f64));
        lls.push(ll);
    }
    let n = items.len().max(1) as f64;
    Ok(McResult { acc: correct as f64 / n, acc_norm: correct_norm as f64 / n, items: items.len(), loglikelihoods: lls, item_scores })
}

/// A progress bar on stderr (drawn only on a terminal).
fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} eta {eta}").expect("valid template"));
    bar.set_prefix(what.to_string());
    bar
}

/// SQuAD's answer normalisation: lower case, no punctuation, no English articles, single spaces.
pub fn normalize(s: &str) -> String {
    let lower: String = s.to_lowercase().chars().map(|c| if c.is_alphanumeric() || c.is_whitespace() { c } else { ' ' }).collect();
    lower.split_whitespace().filter(|w| !["a", "an", "the"].contains(w)).collect::<Vec<_>>().join(" ")
}

/// Tokens for F1: words, or characters for scripts written without spaces (Chinese, Japanese, Thai).
fn f1_tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in normalize(s).split_whitespace() {
        if w.chars().any(|c| c as u32 >= 0x2E80) {
            out.extend(w.chars().map(String::from));
        } else {
            out.push(w.to_string());
        }
    }
    out
}

pub fn exact_match(pred: &str, gold: &str) -> bool {
    normalize(pred) == normalize(gold)
}

pub fn f1(pred: &str, gold: &str) -> f64 {
    let (p, g) = (f1_tokens(pred), f1_tokens(gold));
    if p.is_empty() || g.is_empty() {
        return (p == g) as u8 as f64;
    }
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for t in &p {
        if let Some(c) = counts.get_mut(t.as_str()) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let (precision, recall) = (same as f64 / p.len() as f64, same as f64 / g.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

pub fn contains(pred: &str, gold: &str) -> bool {
    let g = normalize(gold);
    !g.is_empty() && normalize(pred).contains(&g)
}

/// The last number in `text` (MGSM's answer extraction): digits with optional sign, thousands separators and
/// decimals.
pub fn final_number(text: &str) -> Option<f64> {
    let mut last = None;
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = if i > 0 && chars[i - 1] == '-' { i - 1 } else { i };
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_digit() || ((chars[j] == ',' || chars[j] == '.') && j + 1 < chars.len() && chars[j + 1].is_ascii_digit())) {
                j += 1;
            }
            let s: String = chars[start..j].iter().filter(|&&c| c != ',').collect();
            last = s.parse::<f64>().ok().or(last);
            i = j;
        } else {
            i += 1;
        }
    }
    last
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QaResult {
    pub exact_match: f64,
    pub f1: f64,
    pub contains: f64,
    /// Share of answers whose last number equals the reference's number (references that are numbers only).
    pub number: Option<f64>,
    pub items: usize,
}

/// One answer's scores: each metric the best over the item's acceptable answers; `number` only for items whose
/// references hold a number.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QaItemScores {
    pub exact_match: f64,
    pub f1: f64,
    pub contains: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<f64>,
}

/// Every answer's scores against its references.
pub fn score_qa_items(preds: &[String], items: &[QaItem]) -> Vec<QaItemScores> {
    preds
        .iter()
        .zip(items)
        .map(|(p, it)| {
            let best = |f: &dyn Fn(&str, &str) -> f64| it.answers.iter().map(|g| f(p, g)).fold(0.0, f64::max);
            QaItemScores {
                exact_match: best(&|p, g| exact_match(p, g) as u8 as f64),
                f1: best(&f1),
                contains: best(&|p, g| contains(p, g) as u8 as f64),
                number: it.answers.iter().find_map(|g| final_number(g)).map(|g| final_number(p).is_some_and(|p| (p - g).abs() < 1e-6) as u8 as f64),
            }
        })
        .collect()
}

/// Scores answers against references: each metric takes the best over an item's acceptable answers (the mean of
/// [`score_qa_items`]; `number` over the items with a numeric reference).
pub fn score_qa(preds: &[String], items: &[QaItem]) -> QaResult {
    let scores = score_qa_items(preds, items);
    let n = items.len().max(1) as f64;
    let mean = |f: &dyn Fn(&QaItemScores) -> f64| scores.iter().map(f).sum::<f64>() / n;
    let numeric: Vec<f64> = scores.iter().filter_map(|s| s.number).collect();
    QaResult {
        exact_match: mean(&|s| s.exact_match),
        f1: mean(&|s| s.f1),
        contains: mean(&|s| s.contains),
        number: (!numeric.is_empty()).then(|| numeric.iter().sum::<f64>() / numeric.len() as f64),
        items: items.len(),
    }
}

/// The k-shot prompt of a QA item.
pub fn qa_prompt(item: &QaItem, dev: &[QaItem], shots: usize) -> String {
    let mut s = String::new();
    for d in dev.iter().take(shots) {
        s.push_str(&format!("Question: {}\nAnswer: {}\n\n", d.question, d.answers[0]));
    }
    s.push_str(&format!("Question: {}\nAnswer:", item.question));
    s
}

/// Generates greedy answers (up to a blank line or a new "Question:") and scores them.
pub fn run_qa(model: &Model, adapter: Option<&Adapter>, tok: &TextTokenizer, eos: u32, pad: u32, items: &[QaItem], dev: &[QaItem], shots: usize, max_new_tokens: usize, batch_size: usize) -> Result<(QaResult, Vec<String>)> {
    if shots > dev.len() {
        bail!("{shots}-shot prompts need {shots} dev items, the dev split has {}", dev.len());
    }
    let opts = crate::generate::GenOptions { max_new_tokens, temperature: 0.0, top_p: 1.0, stop: vec!["\n\n".into(), "\nQuestion:".into()], seed: 0 };
    let mut preds = Vec::with_capacity(items.len());
    let bar = progress(items.len(), "qa");
    for chunk in items.chunks(batch_size.max(1)) {
        bar.inc(chunk.len() as u64);
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|it| tok.encode(&qa_prompt(it, dev, shots), true)).collect::<Result<_>>()?;
        for g in crate::generate::generate(model, adapter, tok, &prompts, &[eos], pad, &opts)? {
            preds.push(g.text.trim().to_string());
        }
    }
    bar.finish_and_clear();
    Ok((score_qa(&preds, items), preds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_norm_divides_by_the_choice_without_its_delimiter() {
        // Per character of " a" and " bbbb" (the old rule) choice 0 wins (-1.0 vs -1.2); per character of the
        // choices themselves, as lm-eval counts, choice 1 does (-2.0 vs -1.5).
        let choices = ["a".to_string(), "bbbb".to_string()];
        assert_eq!(norm_argmax(&[-2.0, -6.0], &choices), 1);
        assert_eq!(norm_argmax(&[-1.0, -1.0], &["x".to_string(), "y".to_string()]), 0, "ties go to the first");
        let item = McItem { question: "q".into(), choices: vec!["  a ".into(), "bbbb".into()], answer: 1, id: None, language: None };
        assert_eq!(mc_choice(&item, 0, McStyle::Continuation), "a");
        assert_eq!(mc_choice(&item, 1, McStyle::Letters), "B");
        assert_eq!(mc_continuation(&item, 0, McStyle::Continuation), " a", "the scored continuation keeps the delimiter");
    }

    #[test]
    fn qa_metrics_follow_squad_and_mgsm() {
        assert!(exact_match("The Eiffel Tower!", "eiffel tower"));
        assert!(!exact_match("Eiffel", "eiffel tower"));
        assert!((f1("the big red car", "red car") - 0.8).abs() < 1e-12, "{}", f1("the big red car", "red car"));
        assert_eq!(f1("北京市", "北京"), 0.8, "characters for unspaced scripts");
        assert!(contains("I think it is Paris, France.", "paris"));
        assert!(!contains("anything", ""));
        assert_eq!(final_number("She has 3 apples, then buys 1,250.5 more: -12"), Some(-12.0));
        assert_eq!(final_number("The answer is 1,250."), Some(1250.0));
        assert_eq!(final_number("no digits"), None);
        let items = vec![QaItem { question: "q".into(), answers: vec!["42".into()], ..Default::default() }, QaItem { question: "q".into(), answers: vec!["Madrid".into(), "Madrid, Spain".into()], ..Default::default() }];
        let r = score_qa(&["so the result is 42".into(), "Madrid, Spain".into()], &items);
        assert_eq!((r.exact_match, r.contains, r.number), (0.5, 1.0, Some(1.0)));
        let per_item = score_qa_items(&["so the result is 42".into(), "Madrid, Spain".into()], &items);
        assert_eq!(per_item.iter().map(|s| (s.exact_match, s.number)).collect::<Vec<_>>(), vec![(0.0, Some(1.0)), (1.0, None)]);
    }

    #[test]
    fn k_shot_contexts_put_dev_answers_before_the_question() {
        let item = |q: &str, a: usize| McItem { question: q.into(), choices: vec!["yes".into(), "no".into()], answer: a, ..Default::default() };
        let dev = vec![item("d1", 1), item("d2", 0)];
        assert_eq!(mc_context(&item("q", 0), &dev, 1, McStyle::Continuation), "Question: d1\nAnswer: no\n\nQuestion: q\nAnswer:");
        assert_eq!(mc_context(&item("q", 0), &dev, 0, McStyle::Letters), "q\nA. yes\nB. no\nAnswer:");
        assert_eq!(mc_continuation(&item("q", 0), 1, McStyle::Letters), " B");
    }
}
