//! The answer metrics and filters of lm-evaluation-harness 0.4.13's generative tasks, each as that task defines it:
//! XQuAD's SQuAD v1 exact match / F1 (transformers' `squad_metrics`, against the first reference only), TyDi QA
//! GoldP's MLQA-style normalisation (Unicode punctuation, per-language articles, best over references), and MGSM's
//! regex answer filters with `exact_match` ignoring case and ASCII punctuation.

use regex::Regex;
use std::collections::HashMap;
use std::sync::LazyLock;

/// Python's `string.punctuation`.
const ASCII_PUNCT: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Python's `str.split()` separators: Unicode White_Space plus the ASCII information separators.
fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_split(s: &str) -> Vec<&str> {
    s.split(py_is_space).filter(|w| !w.is_empty()).collect()
}

pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

static ENGLISH_ARTICLES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("valid"));
static ARABIC_ARTICLE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?:^|\s)ال").expect("valid"));
static UNICODE_PUNCT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\p{P}").expect("valid"));

/// transformers' `squad_metrics.normalize_answer`: lower case, ASCII punctuation removed, English articles
/// replaced by a space, whitespace collapsed.
pub fn squad_normalize(s: &str) -> String {
    let no_punct: String = s.to_lowercase().chars().filter(|c| !ASCII_PUNCT.contains(*c)).collect();
    py_split(&ENGLISH_ARTICLES.replace_all(&no_punct, " ")).join(" ")
}

fn token_f1(pred: &[String], gold: &[String]) -> f64 {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in gold {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in pred {
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
    let (precision, recall) = (same as f64 / pred.len() as f64, same as f64 / gold.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// `squad_metrics.compute_exact(gold, pred)`.
pub fn squad_exact(gold: &str, pred: &str) -> f64 {
    (squad_normalize(gold) == squad_normalize(pred)) as u8 as f64
}

/// `squad_metrics.compute_f1(gold, pred)`: whitespace tokens of the normalised strings; an empty side scores 1 only
/// when both are empty.
pub fn squad_f1(gold: &str, pred: &str) -> f64 {
    let toks = |s: &str| -> Vec<String> { if s.is_empty() { Vec::new() } else { py_split(&squad_normalize(s)).into_iter().map(str::to_string).collect() } };
    let (g, p) = (toks(gold), toks(pred));
    if g.is_empty() || p.is_empty() {
        return (g == p) as u8 as f64;
    }
    token_f1(&p, &g)
}

/// lm-eval's tydiqa `normalize_answer(s, lang)`: lower case, Unicode punctuation (categories P*) and ASCII
/// punctuation removed, articles removed for English (a/an/the) and Arabic (the prefix ال), whitespace collapsed.
pub fn tydiqa_normalize(s: &str, lang: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !ASCII_PUNCT.contains(*c) && !UNICODE_PUNCT.is_match(c.encode_utf8(&mut [0; 4]))).collect();
    let no_articles = match lang {
        "en" => ENGLISH_ARTICLES.replace_all(&no_punct, " ").into_owned(),
        "ar" => ARABIC_ARTICLE.replace_all(&no_punct, " ").into_owned(),
        _ => no_punct,
    };
    py_split(&no_articles).join(" ")
}

/// TyDi QA's exact match and F1 of a stripped prediction: the best over the references.
pub fn tydiqa_scores(pred: &str, golds: &[String], lang: &str) -> (f64, f64) {
    let p = tydiqa_normalize(py_strip(pred), lang);
    let ptoks: Vec<String> = py_split(&p).into_iter().map(str::to_string).collect();
    let (mut em, mut f1) = (0f64, 0f64);
    for g in golds {
        let g = tydiqa_normalize(g, lang);
        em = em.max((g == p) as u8 as f64);
        f1 = f1.max(token_f1(&ptoks, &py_split(&g).into_iter().map(str::to_string).collect::<Vec<_>>()));
    }
    (em, f1)
}

/// lm-eval's `regex` filter then `take_first`: all matches (as `re.findall`), the `group_select`-th (negative from
/// the end), its first non-empty group when the pattern has groups, stripped; `[invalid]` when nothing matches.
pub fn regex_filter(text: &str, pattern: &Regex, group_select: isize) -> String {
    const FALLBACK: &str = "[invalid]";
    let matches: Vec<regex::Captures> = pattern.captures_iter(text).collect();
    if matches.is_empty() {
        return FALLBACK.into();
    }
    let at = if group_select < 0 { matches.len() as isize + group_select } else { group_select };
    let Some(m) = usize::try_from(at).ok().and_then(|i| matches.get(i)) else {
        // Python would raise IndexError here; the tasks only use 0 and -1, which always exist.
        return FALLBACK.into();
    };
    let picked = if m.len() > 1 { (1..m.len()).filter_map(|g| m.get(g)).map(|g| g.as_str()).find(|s| !s.is_empty()) } else { m.get(0).map(|g| g.as_str()) };
    match picked {
        Some(s) => py_strip(s).to_string(),
        None => FALLBACK.into(),
    }
}

/// MGSM's flexible-extract pattern: the last number-like run.
pub static FLEXIBLE_EXTRACT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("valid"));

/// lm-eval's `exact_match` with `ignore_case` and `ignore_punctuation` (ASCII punctuation deleted).
pub fn exact_match_ignoring_case_and_punct(pred: &str, gold: &str) -> f64 {
    let clean = |s: &str| -> String { s.to_lowercase().chars().filter(|c| !ASCII_PUNCT.contains(*c)).collect() };
    (clean(pred) == clean(gold)) as u8 as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_metrics_follow_transformers() {
        assert_eq!(squad_exact("The Eiffel Tower", " eiffel  tower! "), 1.0);
        // "the" goes: 3 gold tokens, 2 predicted, both right.
        assert_eq!(squad_f1("the big red car", "red car"), 2.0 * 1.0 * (2.0 / 3.0) / (1.0 + 2.0 / 3.0));
        // No character splitting for unspaced scripts: one token each side.
        assert_eq!(squad_f1("北京市", "北京"), 0.0);
        assert_eq!(squad_f1("", ""), 1.0);
        assert_eq!(squad_f1("Madrid", "   "), 0.0);
        // Non-ASCII punctuation survives SQuAD's normaliser.
        assert_eq!(squad_exact("¿Madrid?", "Madrid"), 0.0);
    }

    #[test]
    fn tydiqa_metrics_follow_lm_eval() {
        let golds = vec!["الكتاب".to_string(), "a book".to_string()];
        assert_eq!(tydiqa_scores("  كتاب. ", &golds, "ar"), (1.0, 1.0));
        assert_eq!(tydiqa_scores("the book", &["a book".into()], "en"), (1.0, 1.0));
        assert_eq!(tydiqa_scores("the book", &["a book".into()], "fi"), (0.0, 0.5));
        assert_eq!(tydiqa_scores("«Москва»", &["Москва".into()], "ru"), (1.0, 1.0), "Unicode punctuation goes");
        assert_eq!(tydiqa_scores("", &["x".into()], "en"), (0.0, 0.0));
    }

    #[test]
    fn mgsm_filters_extract_the_final_answer_from_chain_of_thought() {
        let cot = "Roger starts with 5 balls.\n\nHe buys 2 cans of 3 balls each, that is 6 balls.\n\nThen 5 + 6 = 11, and 1,239 more arrive.\nThe answer is 1,250.";
        let strict = Regex::new(r"The answer is (\-?[0-9\.\,]+)").unwrap();
        assert_eq!(regex_filter(cot, &strict, 0), "1,250.");
        assert_eq!(exact_match_ignoring_case_and_punct(&regex_filter(cot, &strict, 0), "1250"), 1.0);
        assert_eq!(regex_filter(cot, &FLEXIBLE_EXTRACT, -1), "1,250.");
        assert_eq!(regex_filter("no number here", &strict, 0), "[invalid]");
        assert_eq!(regex_filter("costs $18 or 7", &FLEXIBLE_EXTRACT, -1), "7", "the second group when the first is empty");
        assert_eq!(regex_filter("costs $18", &FLEXIBLE_EXTRACT, -1), "$18");
        assert_eq!(exact_match_ignoring_case_and_punct("$18", "18"), 1.0);
        assert_eq!(exact_match_ignoring_case_and_punct("18.5", "185"), 1.0, "punctuation is deleted, as lm-eval does");
        let zh = Regex::new(r"答案是 (\-?[0-9\.\,]+)。").unwrap();
        assert_eq!(regex_filter("所以答案是 42。", &zh, 0), "42");
    }
}
