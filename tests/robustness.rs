//! Robustness of everything that reads a user's files: arbitrary bytes and mutated valid files (truncations,
//! flipped bits, spliced JSON/TOML tokens, deleted and repeated spans, deep nesting, huge numbers) never panic, and
//! every error they give names the file.
//!
//! The valid inputs are the repository's own: data/samples/*.json (as JSON arrays, as JSONL and gzip'd JSONL), a
//! parquet file and small multiple-choice and QA benchmark files written here, recipes/*.toml and
//! tests/recipes/*.toml, and the fixture checkpoints' and adapters' JSON (config.json, adapter_config.json,
//! model.safetensors.index.json, tokenizer.json, tokenizer_config.json) and adapter weights. Mutations come from
//! fixed ChaCha8 seeds, one stream per input and file kind, so a failure reproduces; the number of cases is
//! bounded to keep the file quick in debug test builds. `ROBUSTNESS_SCALE=20 cargo test
//! --test robustness` runs twenty times as many (the first cases stay the same); `ROBUSTNESS_VERBOSE=1` prints
//! every error and `ROBUSTNESS_KEEP=1` keeps the generated files.

use anyhow::Result;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use trainer::data::format::Format;
use trainer::data::{pipeline, reader};
use trainer::testing::{fixtures_dir, repo_dir};

/// Multiplies every case count (`ROBUSTNESS_SCALE`, default 1).
fn cases(n: usize) -> usize {
    n * std::env::var("ROBUSTNESS_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

/// Where a test writes its cases: removed afterwards unless `ROBUSTNESS_KEEP` is set.
fn workdir() -> tempfile::TempDir {
    let keep = std::env::var_os("ROBUSTNESS_KEEP").is_some();
    let dir = tempfile::Builder::new().prefix("robustness-").disable_cleanup(keep).tempdir().unwrap();
    if keep {
        eprintln!("cases kept in {}", dir.path().display());
    }
    dir
}

/// Spliced into inputs: structure, numbers past every integer and float range, broken strings and encodings.
const TOKENS: &[&[u8]] = &[
    b"{", b"}", b"[", b"]", b",", b":", b"\"", b"\\", b"\n", b"\r\n", b" ", b"null", b"true", b"-", b"0", b"=", b"#",
    b"[[", b"]]", b"'''", b"\"\"\"", b"nan", b"inf", b"-inf", b"NaN", b"1e999999", b"-1e999999",
    b"18446744073709551615", b"18446744073709551616", b"-9223372036854775809", b"4294967296",
    b"340282366920938463463374607431768211456", b"1.7976931348623157e309", b"0.0000000000000000000000001e-400",
    b"\"\\ud800\"", b"\"\\u0000\"", b"\"\\uZZZZ\"", b"\xEF\xBB\xBF", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x00",
    b"PAR1", b"{\"a\":", b"\"choices\": [",
];

/// Numbers that replace a number of the input: at and past the edges of u32, u64, i64, f64.
const HUGE: &[&[u8]] = &[
    b"18446744073709551615", b"18446744073709551616", b"99999999999999999999999999999999999999999", b"-1", b"-0",
    b"4294967296", b"4294967295", b"9223372036854775807", b"-9223372036854775808", b"1e308", b"1e309", b"-1e309",
    b"1e-400", b"0", b"0.5", b"nan", b"inf", b"-inf",
];

/// One mutation of `input`, and what it was (for the failure message). Positions lean towards the last
/// `tail` bytes half the time (a parquet file's footer, where its metadata lives).
fn mutate(rng: &mut ChaCha8Rng, input: &[u8], tail: usize) -> (Vec<u8>, String) {
    let mut v = input.to_vec();
    let pos = |rng: &mut ChaCha8Rng, len: usize| -> usize {
        if len == 0 {
            0
        } else if tail > 0 && rng.random_bool(0.5) {
            len - 1 - rng.random_range(0..tail.min(len))
        } else {
            rng.random_range(0..len)
        }
    };
    let kind = rng.random_range(0..10);
    let what = match kind {
        0 => {
            let at = pos(rng, v.len() + 1).min(v.len());
            v.truncate(at);
            format!("truncated at {at}")
        }
        1 if !v.is_empty() => {
            let n = rng.random_range(1..=8);
            for _ in 0..n {
                let i = pos(rng, v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            format!("{n} bits flipped")
        }
        2 if !v.is_empty() => {
            let i = pos(rng, v.len());
            v[i] = rng.random();
            format!("byte {i} replaced")
        }
        3 => {
            let i = pos(rng, v.len() + 1).min(v.len());
            let t = TOKENS.choose(rng).unwrap();
            v.splice(i..i, t.iter().copied());
            format!("{:?} inserted at {i}", String::from_utf8_lossy(t))
        }
        4 if !v.is_empty() => {
            let i = pos(rng, v.len());
            let j = (i + rng.random_range(1..=64)).min(v.len());
            v.drain(i..j);
            format!("bytes {i}..{j} deleted")
        }
        5 if !v.is_empty() => {
            let i = pos(rng, v.len());
            let j = (i + rng.random_range(1..=256)).min(v.len());
            let span = v[i..j].to_vec();
            let at = pos(rng, v.len() + 1).min(v.len());
            v.splice(at..at, span);
            format!("bytes {i}..{j} repeated at {at}")
        }
        6 => {
            // A number of the input (a run of digits) becomes a huge or otherwise edgy one.
            let digits: Vec<usize> = (0..v.len()).filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit())).collect();
            let Some(&i) = digits.choose(rng) else { return mutate(rng, input, tail) };
            let j = (i..v.len()).find(|&j| !v[j].is_ascii_digit() && v[j] != b'.').unwrap_or(v.len());
            let n = HUGE.choose(rng).unwrap();
            v.splice(i..j, n.iter().copied());
            format!("number at {i} replaced by {}", String::from_utf8_lossy(n))
        }
        7 => {
            // Deep nesting around or in place of part of the input, closed or not. Depths past serde_json's
            // recursion limit (128) and toml's stay bounded here; `deep_nesting_is_an_error_not_a_stack_overflow`
            // goes far deeper in a child process.
            let depth = *[64usize, 127, 128, 129, 200, 1000, 5000].choose(rng).unwrap();
            let (open, close) = *[(b"[", b"]"), (b"{", b"}")].choose(rng).unwrap();
            let i = pos(rng, v.len() + 1).min(v.len());
            let mut nest = Vec::new();
            for _ in 0..depth {
                nest.extend_from_slice(if open == b"{" { b"{\"a\":" } else { open });
            }
            nest.extend_from_slice(b"1");
            if rng.random_bool(0.5) {
                nest.extend(std::iter::repeat_n(close[0], depth));
            }
            v.splice(i..i, nest);
            format!("nesting {depth} deep of {} at {i}", open[0] as char)
        }
        8 => {
            let n = rng.random_range(0..512);
            v = if rng.random_bool(0.5) {
                (0..n).map(|_| rng.random()).collect()
            } else {
                (0..n).map(|_| *b"{}[],:\"\\ \n0123456789.e-aeflnrstu=#".choose(rng).unwrap()).collect()
            };
            format!("{n} arbitrary bytes")
        }
        _ => {
            let (w, a) = mutate(rng, input, tail);
            let (w, b) = mutate(rng, &w, tail);
            let (w, c) = mutate(rng, &w, tail);
            v = w;
            format!("{a}; {b}; {c}")
        }
    };
    (v, what)
}

/// The failures of one property: each names the input, the case and the mutation.
#[derive(Default)]
struct Failures(Vec<String>, Outcomes);

/// How many calls succeeded and how many gave an error (the mutations must reach past the first parse).
#[derive(Default)]
struct Outcomes {
    ok: usize,
    errors: usize,
}

impl Failures {
    /// Runs `f`; a panic, or an error whose text (`{:#}`) lacks `must_name`, is a failure.
    fn check<T>(&mut self, case: &str, must_name: &Path, f: impl FnOnce() -> Result<T>) {
        match catch_unwind(AssertUnwindSafe(f)) {
            Err(p) => {
                let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                self.0.push(format!("{case}: PANIC {msg}"));
            }
            Ok(Err(e)) => {
                self.1.errors += 1;
                let text = format!("{e:#}");
                if std::env::var_os("ROBUSTNESS_VERBOSE").is_some() {
                    eprintln!("{case}: {text:.300}");
                }
                if !text.contains(&must_name.display().to_string()) {
                    self.0.push(format!("{case}: error does not name {}: {text}", must_name.display()));
                }
            }
            Ok(Ok(_)) => self.1.ok += 1,
        }
    }

    fn assert_none(self, what: &str, total: usize) {
        assert!(self.0.is_empty(), "{what}: {} of {total} cases failed:\n{}", self.0.len(), self.0.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
        eprintln!("{what}: {total} cases ({} calls read, {} errors), none panicked, every error named its file", self.1.ok, self.1.errors);
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.to_string_lossy().ends_with(suffix)).collect();
    v.sort();
    v
}

/// The sample data files (JSON arrays of alpaca or ShareGPT records) with the format each is in.
fn sample_data() -> Vec<(PathBuf, Format)> {
    let mut v: Vec<PathBuf> = files(&repo_dir().join("data/samples"), ".json");
    v.push(fixtures_dir().join("data/alpaca.json"));
    v.into_iter().map(|p| {
        let format = if p.file_name().unwrap().to_string_lossy().starts_with("multiturn") { Format::ShareGpt } else { Format::Alpaca };
        (p, format)
    }).collect()
}

fn to_jsonl(json_array: &[u8]) -> Vec<u8> {
    let records: Vec<serde_json::Value> = serde_json::from_slice(json_array).unwrap();
    records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect::<String>().into_bytes()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Every record of a data file through the streaming reader, and the whole file through `read_file` (which parses
/// each record in `format`); errors must name the file.
fn check_data_file(failures: &mut Failures, case: &str, path: &Path, format: Format) {
    failures.check(&format!("{case} (reader::open)"), path, || -> Result<()> {
        for (i, r) in reader::open(path)?.enumerate() {
            // Every file here has far fewer records than this: more means the stream does not end.
            anyhow::ensure!(i < 100_000, "the records never end (this message leaves out the file to fail the check)");
            // Every record error must name the file too, not just the first.
            if let Err(e) = r {
                let text = format!("{e:#}");
                anyhow::ensure!(text.contains(&path.display().to_string()), "a record error: {text}");
            }
        }
        Ok(())
    });
    failures.check(&format!("{case} (pipeline::read_file)"), path, || pipeline::read_file(path, format, None));
}

/// A small parquet file of alpaca records: two row groups, snappy-compressed, one optional column.
fn alpaca_parquet(records: &[serde_json::Value]) -> Vec<u8> {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let schema = parse_message_type(
        "message alpaca { REQUIRED BYTE_ARRAY instruction (UTF8); OPTIONAL BYTE_ARRAY input (UTF8); REQUIRED BYTE_ARRAY output (UTF8); }",
    )
    .unwrap();
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut out = Vec::new();
    let mut w = SerializedFileWriter::new(&mut out, schema.into(), props.into()).unwrap();
    for group in records.chunks(records.len().div_ceil(2)) {
        let mut rg = w.next_row_group().unwrap();
        for field in ["instruction", "input", "output"] {
            let mut c = rg.next_column().unwrap().unwrap();
            let texts: Vec<&str> = group.iter().map(|r| r[field].as_str().unwrap_or("")).collect();
            if field == "input" {
                let def: Vec<i16> = texts.iter().map(|t| i16::from(!t.is_empty())).collect();
                let values: Vec<ByteArray> = texts.iter().filter(|t| !t.is_empty()).map(|t| ByteArray::from(*t)).collect();
                c.typed::<ByteArrayType>().write_batch(&values, Some(&def), None).unwrap();
            } else {
                let values: Vec<ByteArray> = texts.iter().map(|t| ByteArray::from(*t)).collect();
                c.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
            }
            c.close().unwrap();
        }
        rg.close().unwrap();
    }
    w.close().unwrap();
    out
}

#[test]
fn data_files_never_panic_and_errors_name_the_file() {
    let dir = workdir();
    let mut failures = Failures::default();
    let mut total = 0;
    for (n, (seed_path, format)) in sample_data().into_iter().enumerate() {
        let json = read(&seed_path);
        let jsonl = to_jsonl(&json);
        let stem = seed_path.file_stem().unwrap().to_string_lossy().to_string();
        // (suffix, valid bytes, how a mutated text becomes the file: gzip or not, cases)
        let kinds: [(&str, &[u8], bool, usize); 4] =
            [(".json", &json, false, cases(60)), (".jsonl", &jsonl, false, cases(40)), (".jsonl.gz", &jsonl, true, cases(10)), (".json.gz", &jsonl, false, cases(10))];
        for (k, (suffix, valid, gzip_after, count)) in kinds.into_iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(1000 + 10 * n as u64 + k as u64);
            // .json.gz cases mutate the compressed bytes themselves (corrupt streams, bad CRCs, cut-off members).
            let valid = if suffix == ".json.gz" { gzip(valid) } else { valid.to_vec() };
            for i in 0..count {
                let (mut bytes, what) = mutate(&mut rng, &valid, if suffix == ".json.gz" { 32 } else { 0 });
                if gzip_after {
                    bytes = gzip(&bytes);
                }
                let path = dir.path().join(format!("{stem}-{i}{suffix}"));
                std::fs::write(&path, &bytes).unwrap();
                check_data_file(&mut failures, &format!("{}{suffix} case {i}: {what}", seed_path.display()), &path, format);
                total += 1;
            }
        }
    }
    failures.assert_none("JSON, JSONL and gzip'd JSONL data files", total);
}

#[test]
fn benchmark_items_never_panic_and_errors_name_the_file() {
    let dir = workdir();
    let mc = br#"[
  {"question": "Capital of Spain?", "choices": ["Madrid", "Lima", "Quito", "Roma"], "answer": 0},
  {"question": "2 + 2 = ?", "choices": ["3", "4"], "answer": "B"},
  {"question": "Largest planet?", "choices": ["Mars", "Jupiter", "Venus"], "answer": "1"}
]"#;
    let qa = br#"[
  {"question": "Janet has 3 apples and buys 2 more. How many?", "answer": 5},
  {"question": "Capital of Peru?", "answers": ["Lima", "lima"]},
  {"question": "Half of 9?", "answer": "4.5"}
]"#;
    let mut failures = Failures::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2500);
    let count = cases(100);
    for i in 0..count {
        for (kind, valid) in [("mc", &mc[..]), ("qa", &qa[..])] {
            let jsonl = rng.random_bool(0.5);
            let (bytes, what) = mutate(&mut rng, &if jsonl { to_jsonl(valid) } else { valid.to_vec() }, 0);
            let path = dir.path().join(format!("{kind}-{i}.{}", if jsonl { "jsonl" } else { "json" }));
            std::fs::write(&path, &bytes).unwrap();
            let case = format!("{kind} case {i}: {what}");
            if kind == "mc" {
                failures.check(&case, &path, || trainer::eval::items::read_mc(&path));
            } else {
                failures.check(&case, &path, || trainer::eval::items::read_qa(&path));
            }
        }
    }
    failures.assert_none("benchmark items", 2 * count);
}

#[test]
fn parquet_files_never_panic_and_errors_name_the_file() {
    let dir = workdir();
    let records: Vec<serde_json::Value> = serde_json::from_slice(&read(&repo_dir().join("data/samples/es-test.json"))).unwrap();
    let valid = alpaca_parquet(&records);
    let path = dir.path().join("valid.parquet");
    std::fs::write(&path, &valid).unwrap();
    assert_eq!(pipeline::read_file(&path, Format::Alpaca, None).unwrap().len(), records.len(), "the seed file itself reads");
    let mut failures = Failures::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2000);
    let count = cases(1000);
    for i in 0..count {
        let (bytes, what) = mutate(&mut rng, &valid, 400);
        let path = dir.path().join(format!("case-{i}.parquet"));
        std::fs::write(&path, &bytes).unwrap();
        check_data_file(&mut failures, &format!("parquet case {i}: {what}"), &path, Format::Alpaca);
    }
    failures.assert_none("parquet data files", count);
}

#[test]
fn recipes_never_panic_and_errors_name_the_file() {
    let dir = workdir();
    let mut seeds = files(&repo_dir().join("recipes"), ".toml");
    seeds.extend(files(&repo_dir().join("tests/recipes"), ".toml"));
    let mut failures = Failures::default();
    let mut total = 0;
    for (n, seed) in seeds.iter().enumerate() {
        let valid = read(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(3000 + n as u64);
        for i in 0..cases(100) {
            let (bytes, what) = mutate(&mut rng, &valid, 0);
            let path = dir.path().join(format!("{}-{i}.toml", seed.file_stem().unwrap().to_string_lossy()));
            std::fs::write(&path, &bytes).unwrap();
            failures.check(&format!("{} case {i}: {what}", seed.display()), &path, || trainer::recipe::Recipe::load(&path));
            total += 1;
        }
    }
    failures.assert_none("recipes", total);
}

/// A fixture model directory whose `file` is replaced by mutations; its other files are linked, not copied.
fn model_copy(dir: &Path, model: &Path, except: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in std::fs::read_dir(model).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap();
        if name != except {
            std::os::unix::fs::symlink(&f, dir.join(name)).unwrap();
        }
    }
    dir.to_path_buf()
}

#[test]
fn model_json_files_never_panic_and_errors_name_the_file() {
    let root = workdir();
    let mut failures = Failures::default();
    let mut total = 0;
    for (n, model) in files(&fixtures_dir().join("models"), "").into_iter().enumerate() {
        let name = model.file_name().unwrap().to_string_lossy().to_string();
        let rng = |k: u64| ChaCha8Rng::seed_from_u64(4000 + 10 * n as u64 + k);
        // config.json, through the parser every command uses.
        let mut rng0 = rng(0);
        let valid = read(&model.join("config.json"));
        for i in 0..cases(120) {
            let (bytes, what) = mutate(&mut rng0, &valid, 0);
            let path = root.path().join(format!("config-{name}-{i}.json"));
            std::fs::write(&path, &bytes).unwrap();
            failures.check(&format!("{name}/config.json case {i}: {what}"), &path, || trainer::config::ModelConfig::from_file(&path));
            total += 1;
        }
        // tokenizer_config.json and tokenizer.json, through the tokenizer loader.
        for (k, (file, count)) in [("tokenizer_config.json", cases(40)), ("tokenizer.json", cases(15))].into_iter().enumerate() {
            let mut rng = rng(1 + k as u64);
            let valid = read(&model.join(file));
            for i in 0..count {
                let (bytes, what) = mutate(&mut rng, &valid, 0);
                let dir = root.path().join(format!("{name}-{file}-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join(file);
                std::fs::write(&path, &bytes).unwrap();
                let (tok, cfg) = if file == "tokenizer.json" { (path.clone(), model.join("tokenizer_config.json")) } else { (model.join("tokenizer.json"), path.clone()) };
                failures.check(&format!("{name}/{file} case {i}: {what}"), &path, || trainer::tokenizer::TextTokenizer::from_files(&tok, Some(&cfg)));
                total += 1;
            }
        }
        // The shard index, through `checkpoint::locate`.
        let index = model.join("model.safetensors.index.json");
        if index.is_file() {
            let mut rng = rng(3);
            let valid = read(&index);
            for i in 0..cases(80) {
                let (bytes, what) = mutate(&mut rng, &valid, 0);
                let dir = model_copy(&root.path().join(format!("{name}-index-{i}")), &model, "model.safetensors.index.json");
                let path = dir.join("model.safetensors.index.json");
                std::fs::write(&path, &bytes).unwrap();
                // A mutated shard name is reported against the model directory.
                failures.check(&format!("{name}/model.safetensors.index.json case {i}: {what}"), &dir, || trainer::checkpoint::locate(&dir.display().to_string(), None));
                total += 1;
            }
        }
    }
    failures.assert_none("config.json, tokenizer files and shard indexes", total);
}

#[test]
fn adapters_never_panic_and_errors_name_the_file() {
    use candle_core::Device;
    let root = workdir();
    let mut failures = Failures::default();
    let mut total = 0;
    for (n, adapter) in files(&fixtures_dir().join("adapters"), "").into_iter().enumerate() {
        let name = adapter.file_name().unwrap().to_string_lossy().to_string();
        // The adapter's own base model (mixtral-experts adapts mixtral-moe).
        let acfg: serde_json::Value = serde_json::from_slice(&read(&adapter.join("adapter_config.json"))).unwrap();
        let base = acfg["base_model_name_or_path"].as_str().unwrap().strip_prefix("tests/fixtures/").unwrap().to_string();
        let cfg = trainer::config::ModelConfig::from_file(&fixtures_dir().join(base).join("config.json")).unwrap();
        trainer::lora::Adapter::load_peft(&adapter, &cfg, &Device::Cpu).expect("the fixture adapter itself loads");
        // adapter_config.json, and the safetensors header (the first bytes) and body.
        for (k, (file, count, head)) in [("adapter_config.json", cases(100), 0), ("adapter_model.safetensors", cases(30), 512)].into_iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(5000 + 10 * n as u64 + k as u64);
            let valid = read(&adapter.join(file));
            let valid_head = &valid[..head.min(valid.len())];
            for i in 0..count {
                let (bytes, what) = if head > 0 && rng.random_bool(0.7) {
                    // Mutate the header only (length prefix and JSON), keeping the tensor bytes after it.
                    let (mut b, w) = mutate(&mut rng, valid_head, 0);
                    b.extend_from_slice(&valid[valid_head.len()..]);
                    (b, format!("header: {w}"))
                } else {
                    mutate(&mut rng, &valid, 0)
                };
                let dir = model_copy(&root.path().join(format!("{name}-{file}-{i}")), &adapter, file);
                std::fs::write(dir.join(file), &bytes).unwrap();
                // Errors name adapter_config.json or adapter_model.safetensors (a config whose `r` or targets no
                // longer match the weights is reported against the weights): the adapter directory, either way.
                failures.check(&format!("{name}/{file} case {i}: {what}"), &dir, || trainer::lora::Adapter::load_peft(&dir, &cfg, &Device::Cpu));
                total += 1;
            }
        }
    }
    failures.assert_none("adapters", total);
}

/// A leading UTF-8 byte-order mark is accepted in every JSON file a user hands the trainer.
#[test]
fn a_bom_is_accepted_in_user_json_and_toml() {
    use candle_core::Device;
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let root = workdir();
    let with_bom = |src: &Path, dst: &Path| std::fs::write(dst, [BOM, &read(src)].concat()).unwrap();
    let model = fixtures_dir().join("models/qwen2-gqa-sharded");
    let dir = root.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(&model).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap();
        if f.extension().is_some_and(|e| e == "json") {
            with_bom(&f, &dir.join(name));
        } else {
            std::os::unix::fs::symlink(&f, dir.join(name)).unwrap();
        }
    }
    let text = trainer::session::ModelText::open(&dir.display().to_string(), None).expect("config, tokenizer files, index and generation_config with a BOM");
    assert_eq!(text.config.architecture, "Qwen2ForCausalLM");
    let adapter = root.path().join("adapter");
    model_copy(&adapter, &fixtures_dir().join("adapters/qwen2-gqa-sharded"), "adapter_config.json");
    with_bom(&fixtures_dir().join("adapters/qwen2-gqa-sharded/adapter_config.json"), &adapter.join("adapter_config.json"));
    trainer::lora::Adapter::load_peft(&adapter, &text.config, &Device::Cpu).expect("adapter_config.json with a BOM");
    let recipe = root.path().join("chat.toml");
    with_bom(&repo_dir().join("tests/recipes/chat.toml"), &recipe);
    // Loading a recipe reads none of its data files, so the copy loads where it is.
    let recipe = trainer::recipe::Recipe::load(&recipe).expect("a recipe with a BOM");
    assert_eq!(recipe.name, "chat");
}

/// Deep nesting, far past serde_json's and toml's recursion limits, is an error and not a stack overflow. A stack
/// overflow aborts the process, so the inputs are read by a child process (this test binary, running
/// `deep_nesting_child`), and the parent checks that the child exited normally.
#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "deep_nesting_child", "--nocapture", "--test-threads=1"])
        .env("ROBUSTNESS_DEEP_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child died ({}):\n{}\n{stderr}", out.status, String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("deep nesting: all errors"), "the child did not run the cases:\n{stderr}");
}

#[test]
fn deep_nesting_child() {
    if std::env::var_os("ROBUSTNESS_DEEP_CHILD").is_none() {
        return;
    }
    use candle_core::Device;
    let dir = workdir();
    const DEPTH: usize = 1_000_000;
    let arrays = |open: &str, close: &str| format!("{}1{}", open.repeat(DEPTH), close.repeat(DEPTH));
    let objects = format!("{}1{}", "{\"a\":".repeat(DEPTH), "}".repeat(DEPTH));
    let mut failures = Failures::default();
    let mut total = 0;
    for (i, deep) in [arrays("[", "]"), objects.clone(), arrays("[", "")].iter().enumerate() {
        for (suffix, text) in [(".json", format!("[{deep}]")), (".json", format!("[{{\"instruction\": {deep}}}]")), (".jsonl", format!("{{\"a\": {deep}}}\n")), (".jsonl", deep.clone())] {
            let path = dir.path().join(format!("deep-{i}-{total}{suffix}"));
            std::fs::write(&path, text).unwrap();
            check_data_file(&mut failures, &format!("{} nesting {i}", path.display()), &path, Format::Alpaca);
            total += 1;
        }
        let path = dir.path().join(format!("config-{i}.json"));
        std::fs::write(&path, format!("{{\"architectures\": {deep}}}")).unwrap();
        failures.check("config.json", &path, || trainer::config::ModelConfig::from_file(&path));
        let adapter = dir.path().join(format!("adapter-{i}"));
        model_copy(&adapter, &fixtures_dir().join("adapters/llama-gqa"), "adapter_config.json");
        std::fs::write(adapter.join("adapter_config.json"), format!("{{\"r\": {deep}}}")).unwrap();
        let cfg = trainer::config::ModelConfig::from_file(&fixtures_dir().join("models/llama-gqa/config.json")).unwrap();
        failures.check("adapter_config.json", &adapter, || trainer::lora::Adapter::load_peft(&adapter, &cfg, &Device::Cpu));
        total += 2;
    }
    let recipe = read(&repo_dir().join("tests/recipes/chat.toml"));
    for (i, deep) in [format!("x = {}1{}", "[".repeat(DEPTH), "]".repeat(DEPTH)), format!("x = {}1{}", "{a = ".repeat(DEPTH), "}".repeat(DEPTH)), format!("[{}b]", "a.".repeat(DEPTH))].iter().enumerate() {
        let path = dir.path().join(format!("deep-{i}.toml"));
        std::fs::write(&path, [deep.as_bytes(), b"\n", &recipe].concat()).unwrap();
        failures.check("recipe", &path, || trainer::recipe::Recipe::load(&path));
        total += 1;
    }
    failures.assert_none("deep nesting", total);
    eprintln!("deep nesting: all errors, no overflow");
}
