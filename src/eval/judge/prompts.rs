//! MT-Bench's judge prompts and verdict parsing, as FastChat's llm_judge has them.
//!
//! `fastchat_judge_prompts.jsonl` is FastChat's `fastchat/llm_judge/data/judge_prompts.jsonl` byte for byte
//! (lm-sys/FastChat commit 0e6d3e4, Apache-2.0): scores are only comparable with published MT-Bench numbers when
//! the judge reads the same words. Parsing follows `fastchat/llm_judge/common.py` (`run_judge_single`,
//! `run_judge_pair`).

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde::Deserialize;
use std::sync::LazyLock;

const FASTCHAT_PROMPTS: &str = include_str!("fastchat_judge_prompts.jsonl");

/// Categories whose questions are judged against a reference answer (FastChat's `NEED_REF_CATS`).
pub const NEED_REF_CATS: [&str; 4] = ["math", "reasoning", "coding", "arena-hard-200"];

#[derive(Debug, Clone, Deserialize)]
pub struct JudgePrompt {
    pub name: String,
    pub system_prompt: String,
    pub prompt_template: String,
}

static PROMPTS: LazyLock<Vec<JudgePrompt>> = LazyLock::new(|| {
    FASTCHAT_PROMPTS.lines().map(|l| serde_json::from_str::<JudgePrompt>(l).expect("the shipped FastChat prompts parse")).collect()
});

/// One of FastChat's prompts by name ("single-v1", "single-math-v1-multi-turn", "pair-v2", …).
pub fn by_name(name: &str) -> &'static JudgePrompt {
    PROMPTS.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no FastChat judge prompt `{name}`"))
}

/// The prompt MT-Bench uses for a turn (1 or 2) of a question: the reference-based ("math") one for the categories
/// that need a reference, single or pairwise.
pub fn for_turn(pairwise: bool, with_reference: bool, turn: usize) -> &'static JudgePrompt {
    let name = match (pairwise, with_reference, turn > 1) {
        (false, false, false) => "single-v1",
        (false, false, true) => "single-v1-multi-turn",
        (false, true, false) => "single-math-v1",
        (false, true, true) => "single-math-v1-multi-turn",
        (true, false, false) => "pair-v2",
        (true, false, true) => "pair-v2-multi-turn",
        (true, true, false) => "pair-math-v1",
        (true, true, true) => "pair-math-v1-multi-turn",
    };
    by_name(name)
}

/// Python's `str.format` with named fields, for templates that only hold `{name}` fields: every field must be
/// given, and the values are inserted as they are (a `{answer_2}` inside an answer is not expanded again).
pub fn fill(template: &str, values: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(template.len() + values.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').with_context(|| format!("unclosed field in judge prompt at `{}`", &rest[open..]))? + open;
        let name = &rest[open + 1..close];
        match values.iter().find(|v| v.0 == name) {
            Some((_, value)) => out.push_str(value),
            None => bail!("judge prompt field `{name}` has no value"),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

static ONE_SCORE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\[\[(\d+\.?\d*)\]\]").expect("valid"));
static ONE_SCORE_BACKUP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\[(\d+\.?\d*)\]").expect("valid"));

/// The rating of a single-answer judgment: the first `[[x]]`, else the first `[x]` (FastChat's
/// `one_score_pattern` and its backup); None when there is neither. (FastChat's `\d` is Unicode-aware in Python,
/// so is the regex crate's; a non-ASCII digit that Rust cannot parse counts as no rating.)
pub fn parse_rating(judgment: &str) -> Option<f64> {
    let m = ONE_SCORE.captures(judgment).or_else(|| ONE_SCORE_BACKUP.captures(judgment))?;
    m[1].parse::<f64>().ok()
}

/// A pairwise verdict as the judge wrote it: which position won.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    A,
    B,
    Tie,
}

/// `[[A]]`, `[[B]]` or `[[C]]` (tie), checked in that order as FastChat does; None when none is there.
pub fn parse_verdict(judgment: &str) -> Option<Verdict> {
    if judgment.contains("[[A]]") {
        Some(Verdict::A)
    } else if judgment.contains("[[B]]") {
        Some(Verdict::B)
    } else if judgment.contains("[[C]]") {
        Some(Verdict::Tie)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_eight_mt_bench_prompts_are_there_with_their_fields() {
        for pairwise in [false, true] {
            for reference in [false, true] {
                for turn in [1, 2] {
                    let p = for_turn(pairwise, reference, turn);
                    let t = &p.prompt_template;
                    let field = |f: &str| t.contains(&format!("{{{f}}}"));
                    assert_eq!(field("ref_answer_1"), reference, "{}", p.name);
                    assert_eq!(field("ref_answer_2"), reference && turn == 2, "{}", p.name);
                    assert_eq!(field("question_2"), turn == 2, "{}", p.name);
                    assert_eq!(field("answer_a") || field("answer_a_1"), pairwise, "{}", p.name);
                }
            }
        }
        assert_eq!(by_name("single-v1").system_prompt, "You are a helpful assistant.");
        assert!(by_name("single-v1").prompt_template.contains("\"[[rating]]\", for example: \"Rating: [[5]]\""));
    }

    #[test]
    fn fill_is_python_format_without_re_expansion() {
        assert_eq!(fill("[Q]\n{question}\n{answer}", &[("question", "2+2?"), ("answer", "it is {question}")]).unwrap(), "[Q]\n2+2?\nit is {question}");
        assert!(fill("{question} {answer}", &[("question", "x")]).unwrap_err().to_string().contains("`answer`"));
    }

    #[test]
    fn ratings_as_fastchat_reads_them() {
        assert_eq!(parse_rating("Good answer. Rating: [[7]]"), Some(7.0));
        assert_eq!(parse_rating("Rating: [[8.5]] and later [[2]]"), Some(8.5));
        // The backup pattern, only when no [[x]] is present.
        assert_eq!(parse_rating("Rating: [6]"), Some(6.0));
        assert_eq!(parse_rating("see [3] ... Rating: [[9]]"), Some(9.0));
        assert_eq!(parse_rating("Rating: 7/10"), None);
        assert_eq!(parse_rating("Rating: [[seven]]"), None);
    }

    #[test]
    fn verdicts_in_fastchat_order() {
        assert_eq!(parse_verdict("... [[B]]"), Some(Verdict::B));
        assert_eq!(parse_verdict("[[C]] or maybe [[A]]"), Some(Verdict::A), "FastChat checks [[A]] first");
        assert_eq!(parse_verdict("a tie: [[C]]"), Some(Verdict::Tie));
        assert_eq!(parse_verdict("A is better"), None);
    }
}
