//! MMLU and its relatives: four lettered choices listed in the prompt, the letters scored as continuations.
//! cmmlu and ceval (`{{Question.strip()}}\nA. {{A}}…\n答案：`, Chinese per-subject descriptions), mmlu (cais/mmlu:
//! a `choices` list and an index), okapi (lm-eval's m_mmlu on alexandrainst/m_mmlu: `instruction`,
//! `option_a`…`option_d`, no description) and mmmlu (openai/MMMLU: `Question`, `A`…`D`, `Answer`, `Subject`; the
//! description names the subject and the language).

use super::descriptions::{CEVAL, CMMLU, MMLU, MMMLU_LOCALES, MMMLU_SUBJECTS};
use super::{py_strip, Row};
use crate::eval::mc::McDoc;
use anyhow::{bail, Result};
use serde_json::Value;
use std::path::Path;

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

fn subjects(format: &str) -> &'static [(&'static str, &'static str)] {
    match format {
        "cmmlu" => CMMLU,
        "ceval" => CEVAL,
        "mmlu" => MMLU,
        _ => &[],
    }
}

/// The subject a per-subject file is named after: the file's stem or a folder above it (cais/mmlu and
/// ceval/ceval-exam keep each subject's splits in a folder named after it), with a split suffix such as
/// `_test` or `_val` (the original CSV releases) dropped.
pub(super) fn subject_from_path(format: &str, path: &Path) -> Option<String> {
    let known = subjects(format);
    let stem = path.file_name().map(|n| n.to_string_lossy().split('.').next().unwrap_or_default().to_string());
    let parents = path.parent().into_iter().flat_map(|p| p.components().rev()).map(|c| c.as_os_str().to_string_lossy().to_string());
    for name in stem.into_iter().chain(parents) {
        let base = ["_test", "_dev", "_val", "_validation", "_train"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        if let Some((s, _)) = known.iter().find(|(s, _)| *s == base || *s == name) {
            return Some(s.to_string());
        }
    }
    None
}

/// MMMLU's locale (the dataset config, e.g. `ZH_CN`): from `language` when it names one, else from the file
/// name (the release's files are `mmlu_ZH_CN.csv`).
pub(super) fn mmmlu_locale(path: &Path, language: Option<&str>) -> Result<&'static str> {
    let norm = |s: &str| s.to_uppercase().replace('-', "_");
    let find = |s: &str| MMMLU_LOCALES.iter().map(|(l, _)| *l).find(|l| norm(s).contains(l));
    if let Some(l) = language.and_then(find) {
        return Ok(l);
    }
    if let Some(l) = path.components().rev().find_map(|c| find(&c.as_os_str().to_string_lossy())) {
        return Ok(l);
    }
    let known: Vec<&str> = MMMLU_LOCALES.iter().map(|(l, _)| *l).collect();
    bail!("{}: the mmmlu format needs the file's locale, one of {}, in its name or as `language`", path.display(), known.join(", "))
}

/// MMMLU's `Subject` as lm-eval filters on it: some configs carry CSV file names (`college_mathematics_test.csv_sw-KE.csv`).
fn mmmlu_subject(s: &str) -> &str {
    ["_test.csv", "_test-"].iter().filter_map(|m| s.find(m)).min().map_or(s, |i| &s[..i])
}

fn letter_answer(row: &Row, choices: usize) -> Result<usize> {
    let bad = || row.bad("answer", &format!("must be one of the letters {}", LETTERS[..choices].join(", ")));
    match row.value("answer")? {
        Value::String(s) => LETTERS[..choices].iter().position(|l| l == s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// cais/mmlu's answer: the index of the right choice (a class label); a letter is taken too.
fn index_answer(row: &Row, choices: usize) -> Result<usize> {
    let bad = || row.bad("answer", &format!("must be a choice index 0–{} (or its letter)", choices - 1));
    match row.value("answer")? {
        Value::Number(n) => n.as_u64().map(|a| a as usize).filter(|&a| a < choices).ok_or_else(bad),
        Value::String(s) => LETTERS[..choices].iter().position(|l| l == s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

pub(super) fn doc(format: &str, row: &Row, path_subject: Option<&str>, locale: Option<&str>) -> Result<McDoc> {
    let (question, options, answer) = if format == "mmlu" {
        let options = row.texts("choices")?;
        if options.len() != 4 {
            return Err(row.bad("choices", &format!("must hold 4 choices (lm-eval's mmlu prompt lists A–D), found {}", options.len())));
        }
        let answer = index_answer(row, 4)?;
        (row.text("question")?, options, answer)
    } else {
        let options = LETTERS.iter().map(|l| row.text(l)).collect::<Result<Vec<_>>>()?;
        (row.text("question")?, options, letter_answer(row, 4)?)
    };
    let cue = if matches!(format, "cmmlu" | "ceval") { "答案：" } else { "Answer:" };
    let mut text = format!("{}\n", py_strip(&question));
    for (l, o) in LETTERS.iter().zip(&options) {
        text.push_str(&format!("{l}. {o}\n"));
    }
    text.push_str(cue);
    let subject = row.subject().or_else(|| path_subject.map(str::to_string));
    let description = match format {
        "cmmlu" | "ceval" | "mmlu" => {
            let Some(s) = &subject else {
                bail!("{}: the {format} format needs the subject (its description names it): a `{}` column or a file or folder named after it", row.loc(), row_subject_column(row));
            };
            match subjects(format).iter().find(|(k, _)| k == s) {
                Some((_, d)) => d.to_string(),
                None => bail!("{}: `{s}` is not one of lm-eval's {} {format} subjects", row.loc(), subjects(format).len()),
            }
        }
        "mmmlu" => {
            let raw = subject.clone().ok_or_else(|| row.missing("subject"))?;
            let s = mmmlu_subject(&raw);
            if !MMMLU_SUBJECTS.contains(&s) {
                bail!("{}: `{raw}` is not one of lm-eval's {} mmmlu subjects", row.loc(), MMMLU_SUBJECTS.len());
            }
            let locale = locale.expect("mmmlu files have a locale");
            let name = MMMLU_LOCALES.iter().find(|(l, _)| *l == locale).map(|(_, n)| *n).expect("known locale");
            format!("The following are multiple choice questions (with answers) about {} ({name}).\n\n", s.split('_').collect::<Vec<_>>().join(" "))
        }
        _ => String::new(),
    };
    let subject = if format == "mmmlu" { subject.map(|s| mmmlu_subject(&s).to_string()) } else { subject };
    Ok(McDoc { text, choices: LETTERS.iter().map(|l| l.to_string()).collect(), answer, description, subject, ..Default::default() })
}

fn row_subject_column(row: &Row) -> String {
    row.column_name("subject")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_come_from_file_or_folder_names() {
        assert_eq!(subject_from_path("cmmlu", Path::new("cmmlu/test/agronomy.csv.jsonl")).as_deref(), Some("agronomy"));
        assert_eq!(subject_from_path("ceval", Path::new("ceval-exam/accountant/val-00000-of-00001.parquet")).as_deref(), Some("accountant"));
        assert_eq!(subject_from_path("mmlu", Path::new("data/anatomy_test.jsonl")).as_deref(), Some("anatomy"));
        assert_eq!(subject_from_path("mmlu", Path::new("data/all/test.parquet")), None);
        assert_eq!(mmmlu_subject("college_mathematics_test.csv_sw-KE.csv"), "college_mathematics");
        assert_eq!(mmmlu_locale(Path::new("MMMLU/test/mmlu_ZH_CN.jsonl"), None).unwrap(), "ZH_CN");
        assert_eq!(mmmlu_locale(Path::new("x.jsonl"), Some("es-la")).unwrap(), "ES_LA");
        assert!(mmmlu_locale(Path::new("x.jsonl"), Some("es")).unwrap_err().to_string().contains("ZH_CN"));
    }
}
