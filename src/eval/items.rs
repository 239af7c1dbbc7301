//! Benchmark items as JSON, JSONL or parquet records. Multiple choice: `question`, `choices` (list of strings),
//! `answer` (index or letter). QA: `question`, `answer` (string, number or list of acceptable strings).

use crate::data::reader;
use anyhow::{bail, Context, Result};
use serde_json::Value;
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
    /// The record's `subject`, if any (results are then also reported per subject).
    pub subject: Option<String>,
    /// The record as read (compared whole when an item must not be its own few-shot example).
    pub record: String,
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
    read_mc_fields(path, &Default::default())
}

/// [`read_mc`] with some fields in other columns (`fields`: field → column).
pub fn read_mc_fields(path: &Path, fields: &std::collections::BTreeMap<String, String>) -> Result<Vec<McItem>> {
    read_items(path, |v, loc| {
        let renamed;
        let v = if fields.is_empty() {
            v
        } else {
            let mut obj = v.as_object().cloned().unwrap_or_default();
            for (field, column) in fields {
                match v.get(column) {
                    Some(x) => obj.insert(field.clone(), x.clone()),
                    None => bail!("{loc}: missing column `{column}` (field `{field}`)"),
                };
            }
            renamed = Value::Object(obj);
            &renamed
        };
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
                let subject = v.get("subject").and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_string);
                Ok(McItem { question, choices, answer: a, id, language, subject, record: v.to_string() })
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
