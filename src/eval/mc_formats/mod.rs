//! Multiple-choice benchmarks in their released layouts (the columns of their Hugging Face datasets, read from
//! parquet, JSON or JSONL), turned into [`McDoc`]s with the prompt, choices, target and description of the
//! lm-evaluation-harness task that scores each: `cmmlu`, `ceval` (ceval-valid), `mmlu`, `okapi` (m_mmlu), `mmmlu`,
//! `arc` (arc_easy / arc_challenge) and `hellaswag`, besides our own `generic` `{question, choices, answer}`.
//!
//! Every column a format reads has a field name (its column in the release, e.g. cmmlu's `question` is `Question`);
//! `fields` maps field names to other column names for files whose columns were renamed.

mod arc;
mod descriptions;
mod hellaswag;
mod mmlu_family;

use super::mc::{McDoc, McStyle, ShotSource};
use crate::data::record::Location;
use anyhow::{bail, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

pub use crate::recipe::benchmark::MC_FORMATS;

/// (field, column) of `format`, or one error listing the known formats.
fn default_columns(format: &str) -> Result<&'static [(&'static str, &'static str)]> {
    match crate::recipe::benchmark::mc_format_columns(format) {
        Some(c) => Ok(c),
        None => bail!("unknown multiple-choice format `{format}` (known: {})", MC_FORMATS.join(", ")),
    }
}

/// One record of a benchmark file, read through the format's field names.
pub(crate) struct Row<'a> {
    value: &'a Value,
    loc: &'a Location,
    format: &'a str,
    columns: &'a BTreeMap<&'static str, String>,
}

impl<'a> Row<'a> {
    pub(crate) fn column_name(&self, field: &str) -> String {
        self.column(field).to_string()
    }

    fn column(&self, field: &str) -> &str {
        self.columns.get(field).map(String::as_str).expect("every field a format reads is in its column table")
    }

    /// The field's value; a dotted column name (`choices.text`) looks inside nested records.
    pub(crate) fn get(&self, field: &str) -> Option<&'a Value> {
        let column = self.column(field);
        self.value.get(column).or_else(|| column.split('.').try_fold(self.value, |v, part| v.get(part))).filter(|v| !v.is_null())
    }

    pub(crate) fn missing(&self, field: &str) -> anyhow::Error {
        let column = self.column(field);
        let renamed = if column == field { String::new() } else { format!(" (field `{field}`)") };
        anyhow::anyhow!("{}: missing column `{column}`{renamed} of the {} format (a renamed column: set fields = {{ {field} = \"…\" }} or --field {field}=…)", self.loc, self.format)
    }

    pub(crate) fn bad(&self, field: &str, what: &str) -> anyhow::Error {
        anyhow::anyhow!("{}: column `{}`: {what}", self.loc, self.column(field))
    }

    pub(crate) fn value(&self, field: &str) -> Result<&'a Value> {
        self.get(field).ok_or_else(|| self.missing(field))
    }

    /// A text field as lm-eval's templates render it: strings as they are, numbers as Python prints them.
    pub(crate) fn text(&self, field: &str) -> Result<String> {
        text_of(self.value(field)?).ok_or_else(|| self.bad(field, "must be a string"))
    }

    pub(crate) fn texts(&self, field: &str) -> Result<Vec<String>> {
        match self.value(field)? {
            Value::Array(a) if !a.is_empty() => a.iter().map(|x| text_of(x).ok_or_else(|| self.bad(field, "every entry must be a string"))).collect(),
            _ => Err(self.bad(field, "must be a non-empty list of strings")),
        }
    }

    /// The optional `subject` column (empty counts as absent).
    pub(crate) fn subject(&self) -> Option<String> {
        self.get("subject").and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
    }

    pub(crate) fn loc(&self) -> &Location {
        self.loc
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Python's `str.strip()` for the templates' `{{question.strip()}}`.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim()
}

/// How lm-eval's task of `format` picks few-shot examples from a separate dev/train split: the first k
/// (`sampler: first_n`, which the cmmlu, ceval, mmlu, m_mmlu and mmmlu YAMLs set), or at random with its default
/// sampler (arc, hellaswag; hellaswag's YAML names no test split, which lm-eval then takes for the few-shot one and
/// leaves the item out of the draw).
pub fn shot_source(format: &str) -> ShotSource {
    match format {
        "arc" => ShotSource::DevSampled { leave_out_item: false },
        "hellaswag" => ShotSource::DevSampled { leave_out_item: true },
        _ => ShotSource::Dev,
    }
}

/// What reading a file needs besides its rows.
pub struct Source<'a> {
    pub path: &'a Path,
    pub fields: &'a BTreeMap<String, String>,
    /// The generic format's prompt style.
    pub style: McStyle,
    /// The `[[evals]]` entry's (or --language) language: the records' language where they carry none, and MMMLU's
    /// locale (e.g. ZH_CN) where the file name does not say it.
    pub language: Option<&'a str>,
}

/// Every item of a file in `format`, in lm-eval's terms.
pub fn read_docs(format: &str, src: &Source) -> Result<Vec<McDoc>> {
    if format == "generic" {
        return Ok(super::items::read_mc_fields(src.path, src.fields)?.iter().map(|it| it.to_doc(src.style)).collect());
    }
    let columns: BTreeMap<&'static str, String> = default_columns(format)?.iter().map(|(k, c)| (*k, src.fields.get(*k).cloned().unwrap_or_else(|| c.to_string()))).collect();
    let path_subject = mmlu_family::subject_from_path(format, src.path);
    let locale = if format == "mmmlu" { Some(mmlu_family::mmmlu_locale(src.path, src.language)?) } else { None };
    let mut out = Vec::new();
    for raw in crate::data::reader::open(src.path)? {
        let raw = raw?;
        let row = Row { value: &raw.value, loc: &raw.location, format, columns: &columns };
        let mut doc = match format {
            "arc" => arc::doc(&row)?,
            "hellaswag" => hellaswag::doc(&row)?,
            _ => mmlu_family::doc(format, &row, path_subject.as_deref(), locale)?,
        };
        let language = raw.value.get("language").or_else(|| raw.value.get("lang")).and_then(Value::as_str).filter(|s| !s.trim().is_empty());
        doc.language = language.or(src.language).map(str::to_string);
        doc.id = match raw.value.get("id") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        doc.record = raw.value.to_string();
        out.push(doc);
    }
    Ok(out)
}
