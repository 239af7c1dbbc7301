//! Multiple choice as lm-evaluation-harness scores it: each choice by the log-likelihood of its continuation after
//! the (k-shot) context; accuracy and length-normalised accuracy, overall and per subject.
//!
//! Items arrive as [`McDoc`]s, already in lm-eval's terms (`doc_to_text`, `doc_to_choice`, `doc_to_target`, the
//! task's `description`): the benchmark formats in [`super::mc_formats`] build them, and so does our generic
//! `{question, choices, answer}` format through [`McStyle`].

use super::items::McItem;
use super::mc_score::{loglikelihoods_shared, ChoiceTokens, Sharing};
use super::progress;
use super::prompt::{example_turn, render, Message, PromptTemplate};
use super::pyrandom::PyRandom;
use crate::data::record::Role;
use crate::lora::Adapter;
use crate::model::Model;
use crate::tokenizer::TextTokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// lm-eval's defaults, which none of the multiple-choice tasks we follow overrides.
const TARGET_DELIMITER: &str = " ";
const FEWSHOT_DELIMITER: &str = "\n\n";
/// lm-eval's few-shot seed (`simple_evaluate(fewshot_random_seed=1234)`), for the tasks that sample their examples.
const FEWSHOT_SEED: u64 = 1234;

/// What goes between an item's context and each scored choice. Under a chat template lm-eval's
/// `construct_requests` drops the target delimiter (none of these tasks has a `gen_prefix`): the choice follows
/// the template's generation prompt directly.
pub fn target_delimiter(template: &PromptTemplate) -> &'static str {
    match template {
        PromptTemplate::Chat(_) => "",
        PromptTemplate::None | PromptTemplate::Alpaca => TARGET_DELIMITER,
    }
}

/// One multiple-choice item in lm-eval's terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McDoc {
    /// The prompt of the item (lm-eval's `doc_to_text`).
    pub text: String,
    /// The scored continuations, without the target delimiter (`doc_to_choice`).
    pub choices: Vec<String>,
    /// Index of the right choice (`doc_to_target`).
    pub answer: usize,
    /// Prepended once to the whole k-shot prompt (the task's `description`; empty where the task has none).
    pub description: String,
    pub subject: Option<String>,
    pub id: Option<String>,
    pub language: Option<String>,
    /// The record as read: lm-eval leaves an item out of its own few-shot examples by comparing whole records.
    pub record: String,
}

/// How an item of our generic format becomes text.
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

impl McItem {
    /// The item in lm-eval's terms, prompted in `style`.
    pub fn to_doc(&self, style: McStyle) -> McDoc {
        let (text, choices) = match style {
            McStyle::Continuation => (format!("Question: {}\nAnswer:", self.question), self.choices.iter().map(|c| c.trim().to_string()).collect()),
            McStyle::Letters => {
                let mut s = format!("{}\n", self.question.trim());
                for (i, c) in self.choices.iter().enumerate() {
                    s.push_str(&format!("{}. {}\n", letter(i), c.trim()));
                }
                s.push_str("Answer:");
                (s, (0..self.choices.len()).map(|i| letter(i).to_string()).collect())
            }
        };
        McDoc { text, choices, answer: self.answer, subject: self.subject.clone(), id: self.id.clone(), language: self.language.clone(), record: self.record.clone(), ..Default::default() }
    }
}

/// Where k-shot examples come from, and how they are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShotSource {
    /// A dev (or train) split: its first k items (lm-eval's `first_n` sampler), of the item's subject where the
    /// split carries subjects.
    Dev,
    /// A dev (or train) split sampled as lm-eval's default sampler does (arc, hellaswag): each item in turn draws
    /// `random.Random(1234).sample(pool, k)` from one generator per task (per subject where the split carries
    /// subjects, as lm-eval has one task per subject). With `leave_out_item` it draws k + 1 and keeps the first k
    /// that are not the item itself (lm-eval does so when the few-shot split equals the test split as configured:
    /// hellaswag names neither, so both are None), so the draws differ, and the split needs k + 1 items.
    DevSampled { leave_out_item: bool },
    /// The scored split itself (MMMLU has no other): its first k items of the subject other than the item.
    Test,
}

/// The generators of [`ShotSource::DevSampled`], one per pool, advanced by the items in file order.
type Draws = std::collections::HashMap<Option<String>, PyRandom>;

/// The few-shot examples of `doc` from its pool — the items of `doc`'s subject when the examples carry subjects,
/// without `doc` itself when they come from its split: the first `shots`, or for [`ShotSource::DevSampled`] the
/// ones the pool's generator in `draws` picks.
fn shots_for<'a>(doc: &McDoc, examples: &'a [McDoc], shots: usize, source: ShotSource, draws: &mut Draws) -> Result<Vec<&'a McDoc>> {
    if shots == 0 {
        return Ok(Vec::new());
    }
    let by_subject = examples.iter().any(|e| e.subject.is_some());
    let pool: Vec<&McDoc> = examples
        .iter()
        .filter(|e| !by_subject || e.subject == doc.subject)
        .filter(|e| source != ShotSource::Test || e.record != doc.record)
        .collect();
    if pool.len() < shots {
        let whose = match (&doc.subject, by_subject) {
            (Some(s), true) => format!(" of subject `{s}`"),
            _ => String::new(),
        };
        let split = if source == ShotSource::Test { "the scored file (other than the item itself)" } else { "the dev split" };
        bail!("{shots}-shot prompts need {shots} examples{whose}; {split} has {}", pool.len());
    }
    if let ShotSource::DevSampled { leave_out_item } = source {
        let rng = draws.entry(if by_subject { doc.subject.clone() } else { None }).or_insert_with(|| PyRandom::new(FEWSHOT_SEED));
        if !leave_out_item {
            return Ok(rng.sample(pool.len(), shots).into_iter().map(|i| pool[i]).collect());
        }
        if pool.len() < shots + 1 {
            bail!("{shots}-shot prompts of this task draw {} examples and drop the item itself, as lm-eval's sampler does; the dev split has {}", shots + 1, pool.len());
        }
        let kept: Vec<&McDoc> = rng.sample(pool.len(), shots + 1).into_iter().map(|i| pool[i]).filter(|e| e.record != doc.record).take(shots).collect();
        if kept.len() == shots {
            return Ok(kept);
        }
        // Copies of the item were drawn: lm-eval draws again from the pool without them.
        let others: Vec<&McDoc> = pool.into_iter().filter(|e| e.record != doc.record).collect();
        if others.len() < shots {
            bail!("{shots}-shot prompts need {shots} examples other than the item; the dev split has {}", others.len());
        }
        return Ok(rng.sample(others.len(), shots).into_iter().map(|i| others[i]).collect());
    }
    Ok(pool.into_iter().take(shots).collect())
}

/// The k-shot context of `doc` as lm-eval builds it: description, then each example's text, the target delimiter,
/// its right choice and the few-shot delimiter, then the item's text.
pub fn mc_context(doc: &McDoc, shots: &[&McDoc]) -> String {
    let mut s = doc.description.clone();
    for d in shots {
        s.push_str(&d.text);
        s.push_str(TARGET_DELIMITER);
        s.push_str(&d.choices[d.answer]);
        s.push_str(FEWSHOT_DELIMITER);
    }
    s.push_str(&doc.text);
    s
}

/// The k-shot context of `doc` under a template: as lm-eval's `fewshot_as_multiturn`, the task's description as a
/// system message, each example a user turn (its text) and an assistant turn (its right choice), then the item's
/// text as the last user turn. Without a template this is [`mc_context`].
pub fn mc_context_in(doc: &McDoc, shots: &[&McDoc], template: &PromptTemplate) -> Result<String> {
    if matches!(template, PromptTemplate::None) {
        return Ok(mc_context(doc, shots));
    }
    let mut messages = Vec::new();
    if !doc.description.is_empty() {
        messages.push(Message { role: Role::System, content: doc.description.clone(), delimiter: String::new() });
    }
    messages.extend(shots.iter().flat_map(|d| example_turn(&d.text, &d.choices[d.answer], TARGET_DELIMITER, FEWSHOT_DELIMITER)));
    messages.push(Message::user(doc.text.clone(), ""));
    render(&messages, template)
}

/// Every doc's k-shot context (as [`score_mc`] scores them).
pub fn contexts(docs: &[McDoc], examples: &[McDoc], shots: usize, source: ShotSource, template: &PromptTemplate) -> Result<Vec<String>> {
    let mut draws = Draws::new();
    docs.iter().map(|d| mc_context_in(d, &shots_for(d, examples, shots, source, &mut draws)?, template)).collect()
}

/// Context and continuation tokens as lm-eval's causal HF model makes them (`_encode_pair`): trailing whitespace of
/// the context moves into the continuation; the context is encoded alone and the continuation is what encoding the
/// whole text adds after as many tokens as the context alone has (both with the tokenizer's special tokens).
pub fn encode_pair(tok: &TextTokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end();
    let (context, continuation) = (trimmed, format!("{}{continuation}", &context[trimmed.len()..]));
    // A chat template may have written the BOS token itself (as in lm-eval's HF model, it is not added twice).
    let special = !tok.bos_token.as_deref().is_some_and(|b| !b.is_empty() && context.starts_with(b));
    let whole = tok.encode(&format!("{context}{continuation}"), special)?;
    let ctx = tok.encode(context, special)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    if cont.is_empty() {
        bail!("the continuation {continuation:?} adds no token after its context");
    }
    Ok((ctx, cont))
}

/// The choice with the highest log-likelihood per character of its own string (lm-eval's acc_norm:
/// `completion_len = len(choice)`, the delimiter not counted); the first on ties, as numpy's argmax.
fn norm_argmax(ll: &[f64], choices: &[String]) -> usize {
    let norm: Vec<f64> = ll.iter().zip(choices).map(|(x, c)| x / c.chars().count() as f64).collect();
    argmax(&norm)
}

fn argmax(xs: &[f64]) -> usize {
    xs.iter().enumerate().fold(0, |best, (i, &x)| if x > xs[best] { i } else { best })
}

/// One subject's share of an [`McResult`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubjectResult {
    pub acc: f64,
    pub acc_norm: f64,
    pub items: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct McResult {
    /// Over all items: lm-eval's group score for every benchmark here, whose groups average their subjects
    /// weighted by size (`weight_by_size: true`).
    pub acc: f64,
    /// Accuracy with each choice's log-likelihood divided by its length in characters (lm-eval's acc_norm).
    pub acc_norm: f64,
    pub items: usize,
    /// Per subject, when the items carry subjects.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub subjects: BTreeMap<String, SubjectResult>,
    /// Log-likelihood of every choice of every item.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub loglikelihoods: Vec<Vec<f64>>,
    /// Per item: (acc, acc_norm), each 0 or 1 (not in the summary JSON).
    #[serde(skip)]
    pub item_scores: Vec<(f64, f64)>,
    /// How many contexts were run for how many choices (not in the summary JSON).
    #[serde(skip)]
    pub sharing: Sharing,
}

/// Scores every choice of every doc by the log-likelihood of its continuation given the doc's k-shot context,
/// each context computed once for all its choices ([`super::mc_score`]), contexts cut from the left to the
/// model's length as lm-eval cuts them (its HF model's `max_length`: `max_position_embeddings`, else 2048).
#[allow(clippy::too_many_arguments)]
pub fn score_mc(model: &Model, adapter: Option<&Adapter>, tok: &TextTokenizer, docs: &[McDoc], examples: &[McDoc], shots: usize, source: ShotSource, template: &PromptTemplate, batch_size: usize) -> Result<McResult> {
    let max_length = model.cfg.max_position_embeddings.unwrap_or(2048);
    let tokens = choice_tokens(tok, docs, &contexts(docs, examples, shots, source, template)?, template)?;
    let bar = progress(docs.len(), "mc");
    let (lls, sharing) = loglikelihoods_shared(model, adapter, &tokens, max_length, batch_size, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    if sharing.unshared > 0 {
        eprintln!("mc: {} of {} choices kept less of their context than their item's other choices (left truncation) and were scored on their own", sharing.unshared, sharing.choices);
    }
    Ok(McResult { sharing, ..summarize(docs, lls) })
}

/// Every choice's context and continuation tokens (the continuation with lm-eval's target delimiter, none under a
/// chat template).
pub fn choice_tokens(tok: &TextTokenizer, docs: &[McDoc], contexts: &[String], template: &PromptTemplate) -> Result<Vec<Vec<ChoiceTokens>>> {
    docs.iter()
        .zip(contexts)
        .map(|(doc, context)| {
            doc.choices
                .iter()
                .map(|choice| {
                    let (context, continuation) = encode_pair(tok, context, &format!("{}{choice}", target_delimiter(template)))?;
                    Ok(ChoiceTokens { context, continuation })
                })
                .collect()
        })
        .collect()
}

/// Accuracies of docs whose choices have log-likelihoods `lls` (`[doc][choice]`).
fn summarize(docs: &[McDoc], lls: Vec<Vec<f64>>) -> McResult {
    let mut item_scores = Vec::with_capacity(docs.len());
    let mut per_subject: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    for (doc, ll) in docs.iter().zip(&lls) {
        let right = (argmax(&ll) == doc.answer) as u8 as f64;
        let right_norm = (norm_argmax(&ll, &doc.choices) == doc.answer) as u8 as f64;
        if let Some(s) = &doc.subject {
            let e = per_subject.entry(s.clone()).or_default();
            *e = (e.0 + right, e.1 + right_norm, e.2 + 1);
        }
        item_scores.push((right, right_norm));
    }
    let n = docs.len().max(1) as f64;
    let subjects = per_subject.into_iter().map(|(s, (a, an, n))| (s, SubjectResult { acc: a / n as f64, acc_norm: an / n as f64, items: n })).collect();
    McResult {
        acc: item_scores.iter().map(|s| s.0).sum::<f64>() / n,
        acc_norm: item_scores.iter().map(|s| s.1).sum::<f64>() / n,
        items: docs.len(),
        subjects,
        loglikelihoods: lls,
        item_scores,
        sharing: Sharing::default(),
    }
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
        let item = McItem { question: "q".into(), choices: vec!["  a ".into(), "bbbb".into()], answer: 1, ..Default::default() };
        assert_eq!(item.to_doc(McStyle::Continuation).choices, ["a", "bbbb"]);
        assert_eq!(item.to_doc(McStyle::Letters).choices, ["A", "B"]);
    }

    fn item(q: &str, a: usize) -> McDoc {
        McItem { question: q.into(), choices: vec!["yes".into(), "no".into()], answer: a, record: q.into(), ..Default::default() }.to_doc(McStyle::Continuation)
    }

    #[test]
    fn k_shot_contexts_put_description_and_dev_answers_before_the_question() {
        let dev = vec![item("d1", 1), item("d2", 0)];
        let shots = shots_for(&item("q", 0), &dev, 1, ShotSource::Dev, &mut Draws::new()).unwrap();
        assert_eq!(mc_context(&item("q", 0), &shots), "Question: d1\nAnswer: no\n\nQuestion: q\nAnswer:");
        let letters = McItem { question: "q".into(), choices: vec!["yes".into(), "no".into()], ..Default::default() }.to_doc(McStyle::Letters);
        assert_eq!(mc_context(&McDoc { description: "About x.\n\n".into(), ..letters }, &[]), "About x.\n\nq\nA. yes\nB. no\nAnswer:");
    }

    #[test]
    fn shots_come_from_the_items_subject_and_never_the_item_itself() {
        let with = |q: &str, s: &str| McDoc { subject: Some(s.into()), ..item(q, 0) };
        let pool = vec![with("a1", "a"), with("b1", "b"), with("a2", "a"), with("b2", "b")];
        let texts = |v: Vec<&McDoc>| v.iter().map(|d| d.text.clone()).collect::<Vec<_>>();
        let draws = &mut Draws::new();
        assert_eq!(texts(shots_for(&with("q", "b"), &pool, 2, ShotSource::Dev, draws).unwrap()), [with("b1", "b").text, with("b2", "b").text]);
        assert_eq!(texts(shots_for(&pool[1], &pool, 1, ShotSource::Test, draws).unwrap()), [with("b2", "b").text]);
        let err = shots_for(&with("q", "a"), &pool, 3, ShotSource::Dev, draws).unwrap_err().to_string();
        assert!(err.contains("3-shot") && err.contains("subject `a`") && err.contains("has 2"), "{err}");
        assert!(shots_for(&pool[0], &pool, 2, ShotSource::Test, draws).is_err(), "the item itself is not an example");
    }

    #[test]
    fn sampled_shots_follow_one_python_generator_per_pool() {
        // CPython 3.11: r = random.Random(1234); r.sample(range(10), 3) == [7, 1, 0], then r.sample(range(10), 3)
        // == [1, 0, 9] from the same generator (the next item's draw).
        let dev: Vec<McDoc> = (0..10).map(|i| item(&format!("d{i}"), 0)).collect();
        let draws = &mut Draws::new();
        let picked = |draws: &mut Draws, leave_out_item| shots_for(&item("q", 0), &dev, 3, ShotSource::DevSampled { leave_out_item }, draws).unwrap().iter().map(|d| d.text.clone()).collect::<Vec<_>>();
        let want = |idx: &[usize]| idx.iter().map(|&i| dev[i].text.clone()).collect::<Vec<_>>();
        assert_eq!(picked(draws, false), want(&[7, 1, 0]));
        assert_eq!(picked(draws, false), want(&[1, 0, 9]));
        // Leaving the item out: random.Random(1234).sample(range(10), 4) == [7, 1, 0, 9], the first 3 kept.
        assert_eq!(picked(&mut Draws::new(), true), want(&[7, 1, 0]));
        // ... and the item itself (d1 here) is skipped: [7, 0, 9].
        let d1 = dev[1].clone();
        let kept = shots_for(&d1, &dev, 3, ShotSource::DevSampled { leave_out_item: true }, &mut Draws::new()).unwrap();
        assert_eq!(kept.iter().map(|d| d.text.clone()).collect::<Vec<_>>(), want(&[7, 0, 9]));
        let err = shots_for(&d1, &dev[..3], 3, ShotSource::DevSampled { leave_out_item: true }, &mut Draws::new()).unwrap_err().to_string();
        assert!(err.contains("draw 4 examples") && err.contains("has 3"), "{err}");
    }
}
