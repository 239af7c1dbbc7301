//! Multiple choice as lm-evaluation-harness scores it: each choice by the log-likelihood of its continuation after
//! the (k-shot) context; accuracy and length-normalised accuracy.

use super::items::McItem;
use super::progress;
use crate::data::batch::{Batch, Example};
use crate::lora::Adapter;
use crate::model::Model;
use crate::tokenizer::TextTokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

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
    fn k_shot_contexts_put_dev_answers_before_the_question() {
        let item = |q: &str, a: usize| McItem { question: q.into(), choices: vec!["yes".into(), "no".into()], answer: a, ..Default::default() };
        let dev = vec![item("d1", 1), item("d2", 0)];
        assert_eq!(mc_context(&item("q", 0), &dev, 1, McStyle::Continuation), "Question: d1\nAnswer: no\n\nQuestion: q\nAnswer:");
        assert_eq!(mc_context(&item("q", 0), &dev, 0, McStyle::Letters), "q\nA. yes\nB. no\nAnswer:");
        assert_eq!(mc_continuation(&item("q", 0), 1, McStyle::Letters), " B");
    }
}
