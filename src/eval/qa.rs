//! Generative QA: greedy answers to k-shot prompts, scored by [`super::metrics`].

use super::items::QaItem;
use super::metrics::{contains, exact_match, f1, final_number};
use super::progress;
use super::prompt::{example_turn, render, Message, PromptTemplate};
use crate::lora::Adapter;
use crate::model::Model;
use crate::tokenizer::TextTokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

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

/// The k-shot prompt of a QA item as messages.
pub fn qa_messages(item: &QaItem, dev: &[QaItem], shots: usize) -> Vec<Message> {
    let mut m: Vec<Message> = dev.iter().take(shots).flat_map(|d| example_turn(&format!("Question: {}\nAnswer:", d.question), &d.answers[0], " ", "\n\n")).collect();
    m.push(Message::user(format!("Question: {}\nAnswer:", item.question), ""));
    m
}

/// The k-shot prompt of a QA item as plain text.
pub fn qa_prompt(item: &QaItem, dev: &[QaItem], shots: usize) -> String {
    render(&qa_messages(item, dev, shots), &PromptTemplate::None).expect("plain text renders")
}

/// Generates greedy answers (up to a blank line or a new "Question:") and scores them.
#[allow(clippy::too_many_arguments)]
pub fn run_qa(model: &Model, adapter: Option<&Adapter>, tok: &TextTokenizer, eos: u32, pad: u32, items: &[QaItem], dev: &[QaItem], shots: usize, template: &PromptTemplate, max_new_tokens: usize, batch_size: usize) -> Result<(QaResult, Vec<String>)> {
    if shots > dev.len() {
        bail!("{shots}-shot prompts need {shots} dev items, the dev split has {}", dev.len());
    }
    let opts = crate::generate::GenOptions { max_new_tokens, temperature: 0.0, top_p: 1.0, stop: vec!["\n\n".into(), "\nQuestion:".into()], seed: 0 };
    let mut preds = Vec::with_capacity(items.len());
    let bar = progress(items.len(), "qa");
    for chunk in items.chunks(batch_size.max(1)) {
        bar.inc(chunk.len() as u64);
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|it| super::prompt::encode(&render(&qa_messages(it, dev, shots), template)?, tok)).collect::<Result<_>>()?;
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
}
