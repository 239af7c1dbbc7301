//! The alpaca record format (`instruction`, `input`, `output`, optional `id`) of the studies' released files.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct AlpacaRecord {
    pub instruction: String,
    pub input: String,
    pub output: String,
    pub id: Option<String>,
}

/// Reads a JSON array of alpaca records. Every problem names the file, the record index and the field.
pub fn read(path: &Path) -> Result<Vec<AlpacaRecord>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read data file {}", path.display()))?;
    let text = String::from_utf8(text).map_err(|e| anyhow::anyhow!("{}: invalid UTF-8 at byte {}", path.display(), e.utf8_error().valid_up_to()))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let Value::Array(items) = json else { bail!("{}: expected a JSON array of records", path.display()) };
    if items.is_empty() {
        bail!("{}: the file has no records", path.display());
    }
    items.iter().enumerate().map(|(i, item)| parse_record(item).with_context(|| format!("{}: record {i}", path.display()))).collect()
}

fn parse_record(item: &Value) -> Result<AlpacaRecord> {
    let obj = item.as_object().context("record is not a JSON object")?;
    let text = |key: &str, required: bool| -> Result<String> {
        match obj.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) if !required => Ok(String::new()),
            None | Some(Value::Null) => bail!("field `{key}` is missing"),
            Some(other) => bail!("field `{key}` must be a string, found {}", kind(other)),
        }
    };
    let instruction = text("instruction", true)?;
    let output = text("output", true)?;
    if instruction.trim().is_empty() {
        bail!("field `instruction` is empty");
    }
    if output.trim().is_empty() {
        bail!("field `output` is empty");
    }
    let id = match obj.get("id") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Ok(AlpacaRecord { instruction, input: text("input", false)?, output, id })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
        let p = dir.path().join("d.json");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_name_file_record_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, r#"[{"instruction":"a","output":"b"},{"instruction":"a","output":7}]"#);
        let e = format!("{:#}", read(&p).unwrap_err());
        assert!(e.contains("d.json") && e.contains("record 1") && e.contains("`output` must be a string"), "{e}");
        let p = write(&dir, r#"[{"instruction":"a","output":"  "}]"#);
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("`output` is empty"));
        let p = write(&dir, "[]");
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("no records"));
        let p = write(&dir, r#"[{"output":"x"}]"#);
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("`instruction` is missing"));
    }

    #[test]
    fn input_is_optional() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, r#"[{"instruction":"a","input":null,"output":"b","id":3}]"#);
        let r = read(&p).unwrap();
        assert_eq!(r[0].input, "");
        assert_eq!(r[0].id.as_deref(), Some("3"));
    }
}
