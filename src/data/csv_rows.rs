//! CSV files with a header row, record by record: CMMLU (`test/agronomy.csv`) and OpenAI's MMMLU
//! (`test/mmlu_ZH-CN.csv`) are released this way. Each row becomes a JSON object of strings keyed by the header, so
//! the formats read CSV, JSON, JSONL and parquet alike. A column with an empty header name is pandas' saved index
//! (CMMLU's first column: `,Question,A,B,C,D,Answer`), not data, and is left out.

use super::reader::{RawRecord, Records};
use super::record::Location;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

pub(super) fn csv_rows(path: &Path, file: File) -> Result<Records> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(BufReader::new(file));
    let at = |line: u64| Location { file: path.to_path_buf(), line: Some(line), row: None };
    let header = reader.headers().map_err(|e| anyhow!("{}: the header row: {}", at(1), reason(&e)))?.clone();
    let mut columns: Vec<Option<String>> = Vec::new();
    for (i, name) in header.iter().enumerate() {
        let name = name.trim();
        if name.is_empty() {
            columns.push(None);
            continue;
        }
        if columns.iter().flatten().any(|c| c == name) {
            bail!("{}: column {} of the header repeats the name `{name}`", at(1), i + 1);
        }
        columns.push(Some(name.to_string()));
    }
    if columns.iter().all(Option::is_none) {
        bail!("{}: the header row names no column", at(1));
    }
    Ok(Box::new(CsvRows { records: reader.into_records(), columns, path: path.to_path_buf(), row: 0, done: false }))
}

struct CsvRows {
    records: csv::StringRecordsIntoIter<BufReader<File>>,
    columns: Vec<Option<String>>,
    path: PathBuf,
    row: u64,
    done: bool,
}

/// The csv crate's error without its own position (ours names the file and line).
fn reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!("not valid UTF-8 (field {})", err.field() + 1),
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!("{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Io(io) => io.to_string(),
        _ => e.to_string(),
    }
}

impl Iterator for CsvRows {
    type Item = Result<RawRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.records.next()?;
        let row = self.row;
        self.row += 1;
        let line = |e: Option<&csv::Position>| e.map(|p| p.line());
        let out = match next {
            Ok(rec) => {
                let location = Location { file: self.path.clone(), line: line(rec.position()), row: Some(row) };
                let mut obj = Map::new();
                for (name, value) in self.columns.iter().zip(rec.iter()) {
                    if let Some(name) = name {
                        obj.insert(name.clone(), Value::String(value.to_string()));
                    }
                }
                Ok(RawRecord { value: Value::Object(obj), location })
            }
            Err(e) => {
                let location = Location { file: self.path.clone(), line: line(e.position()), row: Some(row) };
                Err(anyhow!("{location}: {}", reason(&e))).context("reading CSV")
            }
        };
        // A malformed row may leave the parser anywhere in the file: the first error ends the records.
        self.done = out.is_err();
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::reader::open;
    use std::path::PathBuf;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn rows_become_objects_without_the_unnamed_index_column() {
        let dir = tempfile::tempdir().unwrap();
        // CMMLU's layout: pandas' index first, a quoted field holding a comma, a newline and a doubled quote.
        let p = write(&dir, "agronomy.csv", "\u{feff},Question,A,B,C,D,Answer\n0,\"一，二\n三\",a,\"say \"\"b\"\"\",c,d,B\n1,q,a,b,c,d,A\n");
        let recs: Vec<_> = open(&p).unwrap().map(Result::unwrap).collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].value, serde_json::json!({"Question": "一，二\n三", "A": "a", "B": "say \"b\"", "C": "c", "D": "d", "Answer": "B"}));
        assert_eq!((recs[1].location.line, recs[1].location.row), (Some(4), Some(1)), "line counts the quoted newline");
        assert!(recs[1].location.to_string().ends_with("agronomy.csv:4 row 1"));
    }

    #[test]
    fn malformed_files_are_named_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let err = |name: &str, text: &str| -> String {
            let p = write(&dir, name, text);
            match open(&p) {
                Err(e) => format!("{e:#}"),
                Ok(rows) => rows.filter_map(Result::err).map(|e| format!("{e:#}")).next().expect("an error"),
            }
        };
        let e = err("short.csv", ",Question,Answer\n0,q,A\n1,q\n");
        assert!(e.contains("short.csv:3 row 1") && e.contains("2 fields where the header has 3"), "{e}");
        let e = err("dup.csv", "Question,Question\nq,r\n");
        assert!(e.contains("dup.csv:1") && e.contains("repeats the name `Question`"), "{e}");
        let e = err("empty.csv", ",Question\n");
        assert!(e.contains("has no records"), "{e}");
        let e = err("nameless.csv", ",\n1,2\n");
        assert!(e.contains("names no column"), "{e}");
        let p = dir.path().join("latin1.csv");
        std::fs::write(&p, b"Question\n\xe9t\xe9\n").unwrap();
        let e = format!("{:#}", open(&p).unwrap().find_map(Result::err).unwrap());
        assert!(e.contains("latin1.csv:2 row 0") && e.contains("UTF-8"), "{e}");
    }
}
