//! Answer metrics of generative benchmarks: SQuAD's exact match and F1, the reference contained in the answer, and
//! MGSM's final number.

use std::collections::BTreeMap;

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
