//! Streaming readers: a JSON array (element by element), JSONL (optionally gzip'd), parquet (row by row) and CSV
//! with a header row ([`super::csv_rows`]).
//! Memory stays bounded by one record, whatever the file size. Every error names the file and line (or row).

use super::record::Location;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

pub struct RawRecord {
    pub value: Value,
    pub location: Location,
}

pub type Records = Box<dyn Iterator<Item = Result<RawRecord>>>;

/// Opens `path` by its name: `.json` (array), `.jsonl` / `.jsonl.gz` / `.json.gz` (one object per line),
/// `.parquet`, `.csv` (a header row, then one record per row; every value a string). An empty file or array is an
/// error.
pub fn open(path: &Path) -> Result<Records> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let file = || File::open(path).with_context(|| format!("cannot open data file {}", path.display()));
    let records: Records = if name.ends_with(".jsonl.gz") || name.ends_with(".json.gz") {
        Box::new(JsonLines::new(path, Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file()?)))))
    } else if name.ends_with(".jsonl") {
        Box::new(JsonLines::new(path, Box::new(BufReader::new(file()?))))
    } else if name.ends_with(".json") {
        Box::new(JsonArray::new(path, BufReader::new(file()?)))
    } else if name.ends_with(".parquet") {
        parquet_rows(path, file()?)?
    } else if name.ends_with(".csv") {
        super::csv_rows::csv_rows(path, file()?)?
    } else {
        bail!("{}: unknown data file type (supported: .json, .jsonl, .jsonl.gz, .json.gz, .parquet, .csv)", path.display());
    };
    Ok(Box::new(NonEmpty { inner: records, seen: false, path: path.to_path_buf() }))
}

/// Turns "no records at all" into an error instead of an empty stream.
struct NonEmpty {
    inner: Records,
    seen: bool,
    path: PathBuf,
}

impl Iterator for NonEmpty {
    type Item = Result<RawRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next() {
            Some(x) => {
                self.seen = true;
                Some(x)
            }
            None if !self.seen => {
                self.seen = true;
                Some(Err(anyhow!("{} has no records", self.path.display())))
            }
            None => None,
        }
    }
}

fn location(path: &Path, line: Option<u64>, row: Option<u64>) -> Location {
    Location { file: path.to_path_buf(), line, row }
}

fn object(value: Value, loc: &Location) -> Result<Value> {
    match value {
        Value::Object(_) => Ok(value),
        other => bail!("{loc}: expected a JSON object, found {}", kind(&other)),
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct JsonLines {
    path: PathBuf,
    input: Box<dyn BufRead>,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl JsonLines {
    fn new(path: &Path, input: Box<dyn BufRead>) -> Self {
        Self { path: path.to_path_buf(), input, line: 0, buf: Vec::new(), done: false }
    }
}

impl Iterator for JsonLines {
    type Item = Result<RawRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            self.buf.clear();
            self.line += 1;
            let loc = location(&self.path, Some(self.line), None);
            match self.input.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                // A read error (a corrupt or cut-off gzip stream) repeats on every later read: stop after it, or
                // a reader that skips bad records would never end.
                Err(e) => {
                    self.done = true;
                    return Some(Err(anyhow!("{loc}: {e}")));
                }
            }
            // A byte-order mark can only open the first line (of the decompressed text, for .gz).
            let bytes = if self.line == 1 { crate::jsonutil::strip_bom_bytes(&self.buf) } else { &self.buf };
            let text = match std::str::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => return Some(Err(anyhow!("{loc}: invalid UTF-8"))),
            };
            if text.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Value>(text).map_err(|e| anyhow!("{loc}: invalid JSON: {e}")).and_then(|v| object(v, &loc));
            return Some(parsed.map(|value| RawRecord { value, location: loc }));
        }
    }
}

/// Scans a top-level JSON array and hands out one element at a time: it tracks strings, escapes and nesting
/// depth only, and leaves parsing each element to serde_json.
struct JsonArray<R: Read> {
    path: PathBuf,
    bytes: std::iter::Peekable<std::io::Bytes<R>>,
    line: u64,
    started: bool,
    done: bool,
}

impl<R: Read> JsonArray<R> {
    // `input` is always a BufReader, so byte-wise reads are cheap.
    #[allow(clippy::unbuffered_bytes)]
    fn new(path: &Path, input: R) -> Self {
        Self { path: path.to_path_buf(), bytes: input.bytes().peekable(), line: 1, started: false, done: false }
    }

    fn byte(&mut self) -> Result<Option<u8>> {
        match self.bytes.next() {
            None => Ok(None),
            Some(Ok(b)) => {
                if b == b'\n' {
                    self.line += 1;
                }
                Ok(Some(b))
            }
            Some(Err(e)) => bail!("{}:{}: {e}", self.path.display(), self.line),
        }
    }

    fn skip_ws(&mut self) -> Result<Option<u8>> {
        while let Some(b) = self.byte()? {
            if !b.is_ascii_whitespace() {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    fn element(&mut self) -> Result<Option<RawRecord>> {
        if !self.started {
            self.started = true;
            if matches!(self.bytes.peek(), Some(Ok(0xEF))) {
                let bom = [self.byte()?, self.byte()?, self.byte()?];
                if bom.map(Option::unwrap_or_default) != crate::jsonutil::BOM {
                    bail!("{}:{}: expected a JSON array of records", self.path.display(), self.line);
                }
            }
            match self.skip_ws()? {
                Some(b'[') => {}
                Some(_) => bail!("{}:{}: expected a JSON array of records", self.path.display(), self.line),
                None => return Ok(None),
            }
        }
        let mut first = self.skip_ws()?;
        if first == Some(b',') {
            first = self.skip_ws()?;
        }
        let start_line = self.line;
        let loc = location(&self.path, Some(start_line), None);
        let Some(first) = first else { bail!("{loc}: the array is not closed") };
        if first == b']' {
            return Ok(None);
        }
        let mut text = vec![first];
        let (mut depth, mut in_string, mut escaped) = (0i64, false, false);
        let mut b = first;
        loop {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
            } else {
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => depth -= 1,
                    _ => {}
                }
            }
            // A scalar element ends before the next ',' or ']' at depth 0; a container when its depth returns to 0.
            let next_is_end = !in_string && depth == 0 && matches!(self.bytes.peek(), Some(Ok(b',' | b']')) | None);
            if (depth == 0 && !in_string && matches!(b, b'}' | b']')) || next_is_end {
                break;
            }
            match self.byte()? {
                Some(n) => {
                    b = n;
                    text.push(n);
                }
                None => bail!("{loc}: the array is not closed"),
            }
        }
        let text = std::str::from_utf8(&text).map_err(|_| anyhow!("{loc}: invalid UTF-8"))?;
        let value: Value = serde_json::from_str(text.trim()).map_err(|e| anyhow!("{loc}: invalid JSON: {e}"))?;
        Ok(Some(RawRecord { value: object(value, &loc)?, location: loc }))
    }
}

impl<R: Read> Iterator for JsonArray<R> {
    type Item = Result<RawRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.element() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            // After a syntax error the rest of the array cannot be trusted: stop.
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn parquet_rows(path: &Path, file: File) -> Result<Records> {
    use parquet::file::reader::SerializedFileReader;
    let reader = guard(|| SerializedFileReader::new(file))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("{}: not a readable parquet file", path.display()))?;
    Ok(Box::new(ParquetRows { rows: reader.into_iter(), path: path.to_path_buf(), row: 0, done: false }))
}

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside [`guard`]: the binary's panic hook then stays quiet, since the panic becomes
/// the error the user sees (one message, not an "internal error" line before it).
pub fn panic_is_guarded() -> bool {
    GUARDED.with(|g| g.get())
}

/// Runs the parquet crate on a file's bytes, turning its panics (some corrupt files reach an `expect` or an
/// out-of-bounds index instead of an error) into errors.
fn guard<T>(f: impl FnOnce() -> T) -> Result<T> {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            GUARDED.with(|g| g.set(self.0));
        }
    }
    let _reset = Reset(GUARDED.with(|g| g.replace(true)));
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("no message");
        anyhow!("the parquet reader failed on corrupt data ({msg})")
    })
}

/// Rows of a parquet file. The first error ends them: the parquet crate repeats a failing row group's error
/// forever, and a corrupt row count would give an error per promised row.
struct ParquetRows {
    rows: parquet::record::reader::RowIter<'static>,
    path: PathBuf,
    row: u64,
    done: bool,
}

impl Iterator for ParquetRows {
    type Item = Result<RawRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let loc = location(&self.path, None, Some(self.row));
        self.row += 1;
        let row = match guard(|| self.rows.next()) {
            Ok(None) => None,
            Ok(Some(Ok(row))) => guard(|| row.to_json_value()).map_err(|e| anyhow!("{loc}: {e}")).and_then(|v| object(v, &loc)).map(Some).transpose(),
            Ok(Some(Err(e))) => Some(Err(anyhow!("{loc}: {e}"))),
            Err(e) => Some(Err(anyhow!("{loc}: {e}"))),
        };
        self.done = !matches!(row, Some(Ok(_)));
        row.map(|r| r.map(|value| RawRecord { value, location: loc }))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_guarded_panic_becomes_an_error_and_the_mark_is_reset() {
        assert!(guard(panic_is_guarded).unwrap(), "marked inside");
        let e = guard(|| -> u8 { panic!("bad page header") }).unwrap_err();
        assert!(e.to_string().contains("bad page header"), "{e}");
        assert!(!panic_is_guarded(), "reset after a panic too");
    }

    use super::*;
    use std::io::Write;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn all(path: &Path) -> Vec<Result<RawRecord>> {
        open(path).unwrap().collect()
    }

    #[test]
    fn json_array_is_streamed_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[\n  {\"a\": \"x ] [ { \\\" }\"},\n  {\n    \"b\": [1, {\"c\": \"}\"}]\n  }\n,{\"d\": \"é\"}]\n";
        let recs: Vec<RawRecord> = all(&write(&dir, "d.json", text.as_bytes())).into_iter().map(Result::unwrap).collect();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].value["a"], "x ] [ { \" }");
        assert_eq!(recs[1].value["b"][1]["c"], "}");
        assert_eq!(recs.iter().map(|r| r.location.line.unwrap()).collect::<Vec<_>>(), [2, 3, 6]);
    }

    #[test]
    fn json_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let e = |name: &str, bytes: &[u8]| -> String {
            let r = all(&write(&dir, name, bytes));
            format!("{:#}", r.into_iter().find_map(Result::err).expect("an error"))
        };
        assert!(e("a.json", b"[{\"a\": 1},\n{\"a\": }]").contains("a.json:2: invalid JSON"));
        assert!(e("b.json", b"{\"a\": 1}").contains("expected a JSON array"));
        assert!(e("c.json", b"[1]").contains("expected a JSON object, found a number"));
        assert!(e("d.json", b"[]").contains("has no records"));
        assert!(e("e.json", b"").contains("has no records"));
        assert!(e("f.json", b"[{\"a\": \"\xff\"}]").contains("invalid UTF-8"));
        assert!(e("g.json", b"[{\"a\": 1}").contains("not closed"));
        assert!(format!("{:#}", open(&dir.path().join("x.tsv")).err().unwrap()).contains("unknown data file type"));
        assert!(format!("{:#}", open(&dir.path().join("missing.json")).err().unwrap()).contains("missing.json"));
    }

    #[test]
    fn jsonl_goes_on_after_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let recs = all(&write(&dir, "d.jsonl", b"{\"a\": 1}\n\n{oops\n{\"a\": 3}\n"));
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].as_ref().unwrap().location.line, Some(1));
        assert!(format!("{}", recs[1].as_ref().err().unwrap()).contains("d.jsonl:3: invalid JSON"));
        assert_eq!(recs[2].as_ref().unwrap().value["a"], 3);
        assert_eq!(recs[2].as_ref().unwrap().location.line, Some(4));
    }

    #[test]
    fn gzipped_jsonl_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"a\": \"x\"}\n{\"a\": \"y\"}\n").unwrap();
        let recs = all(&write(&dir, "d.jsonl.gz", &gz.finish().unwrap()));
        assert_eq!(recs.iter().map(|r| r.as_ref().unwrap().value["a"].clone()).collect::<Vec<_>>(), ["x", "y"]);
    }

    #[test]
    fn a_leading_bom_is_accepted_and_lines_still_count() {
        let dir = tempfile::tempdir().unwrap();
        let first_and_error = |name: &str, bytes: &[u8]| -> (RawRecord, String) {
            let mut recs = all(&write(&dir, name, bytes)).into_iter();
            let first = recs.next().unwrap().unwrap();
            (first, format!("{:#}", recs.find_map(Result::err).expect("an error")))
        };
        let (first, e) = first_and_error("a.json", b"\xEF\xBB\xBF[{\"a\": \"\xEF\xBB\xBFx\"},\n{\"a\": }]");
        assert_eq!(first.value["a"], "\u{feff}x", "a BOM inside a string is data");
        assert_eq!(first.location.line, Some(1));
        assert!(e.contains("a.json:2: invalid JSON"), "{e}");
        let jsonl = b"\xEF\xBB\xBF{\"a\": 1}\n{\"a\": 2}\n\xEF\xBB\xBF{\"a\": 3}\n";
        let (first, e) = first_and_error("b.jsonl", jsonl);
        assert_eq!((first.value["a"].as_i64(), first.location.line), (Some(1), Some(1)));
        assert!(e.contains("b.jsonl:3: invalid JSON"), "only the first line may open with a BOM: {e}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(jsonl).unwrap();
        let (first, e) = first_and_error("c.jsonl.gz", &gz.finish().unwrap());
        assert_eq!((first.value["a"].as_i64(), first.location.line), (Some(1), Some(1)));
        assert!(e.contains("c.jsonl.gz:3: invalid JSON"), "{e}");
        // A BOM alone is an empty file; a broken one is not taken for a BOM.
        assert!(format!("{:#}", all(&write(&dir, "d.json", b"\xEF\xBB\xBF"))[0].as_ref().err().unwrap()).contains("d.json has no records"));
        assert!(format!("{:#}", all(&write(&dir, "e.json", b"\xEF\xBB[{}]"))[0].as_ref().err().unwrap()).contains("e.json:1: expected a JSON array"));
    }

    #[test]
    fn a_corrupt_gzip_stream_gives_one_error_and_ends() {
        // A read error repeats forever; the reader used to hand it out again for every line, so reading on (as
        // on_bad_record = "skip" does) never ended.
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&b"{\"a\": \"some text to compress\"}\n".repeat(50)).unwrap();
        let mut bytes = gz.finish().unwrap();
        bytes[40] ^= 0xff;
        let recs: Vec<_> = open(&write(&dir, "bad.jsonl.gz", &bytes)).unwrap().take(1000).collect();
        let errors: Vec<String> = recs.iter().filter_map(|r| r.as_ref().err()).map(|e| format!("{e:#}")).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("bad.jsonl.gz:"), "{}", errors[0]);
        assert!(recs.len() < 50, "the stream ends at the error");
        // A gzip member cut short: the records before the cut, then one error.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"a\": 1}\n{\"a\": 2}\n").unwrap();
        let bytes = gz.finish().unwrap();
        let recs: Vec<_> = open(&write(&dir, "cut.jsonl.gz", &bytes[..bytes.len() - 4])).unwrap().take(1000).collect();
        assert!(recs.len() <= 3 && recs.last().unwrap().is_err(), "{} records", recs.len());
    }

    #[test]
    fn parquet_reader_panics_are_errors_that_end_the_rows() {
        // Mutations of a valid file (see tests/corrupt/README.md) on which the parquet crate panics while
        // decoding a row group: an `expect`, an `assert!` in bit unpacking, and a negative column length.
        for name in ["dictionary-page-missing", "bit-unpack-past-end", "negative-column-length"] {
            let path = crate::testing::repo_dir().join(format!("tests/corrupt/{name}.parquet"));
            let recs: Vec<_> = open(&path).unwrap().take(1000).collect();
            let errors: Vec<String> = recs.iter().filter_map(|r| r.as_ref().err()).map(|e| format!("{e:#}")).collect();
            assert_eq!(errors.len(), 1, "{name}: {errors:?}");
            assert!(recs.last().unwrap().is_err(), "{name}: the rows end at the error");
            assert!(errors[0].contains(&format!("{name}.parquet row ")) && errors[0].contains("failed on corrupt data"), "{}", errors[0]);
        }
    }

    #[test]
    fn parquet_rows_become_objects() {
        use parquet::data_type::{ByteArray, ByteArrayType};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aya.parquet");
        let schema = parse_message_type("message aya { REQUIRED BYTE_ARRAY inputs (UTF8); REQUIRED BYTE_ARRAY targets (UTF8); }").unwrap();
        let mut w = SerializedFileWriter::new(File::create(&path).unwrap(), schema.into(), WriterProperties::builder().build().into()).unwrap();
        let mut rg = w.next_row_group().unwrap();
        for col in [["¿Qué?", "Hola"], ["Algo", "Adiós"]] {
            let mut c = rg.next_column().unwrap().unwrap();
            let values: Vec<ByteArray> = col.iter().map(|s| ByteArray::from(*s)).collect();
            c.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
            c.close().unwrap();
        }
        rg.close().unwrap();
        w.close().unwrap();
        let recs: Vec<RawRecord> = all(&path).into_iter().map(Result::unwrap).collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].value["inputs"], "Hola");
        assert_eq!(recs[1].value["targets"], "Adiós");
        assert_eq!(recs[1].location.row, Some(1));
    }

    #[test]
    fn released_russian_native_file_streams_whole() {
        let Some(dir) = crate::testing::shared("data/good-data-or-bad-eval/aya_native/aya_native_data_processed.ru.json") else { return };
        let n = open(&dir).unwrap().inspect(|r| assert!(r.is_ok())).count();
        assert_eq!(n, 423);
    }
}
