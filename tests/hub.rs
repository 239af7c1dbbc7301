//! Hub downloads against a local server in the Hub's URL layout (`HF_ENDPOINT` points at it, `HF_HOME` at a temp
//! folder): the API listing, resolve URLs answered by a 302 to a CDN path on another host name, a missing repo
//! (404), a gated one (401 without a token, 403 with a wrong one), a connection dropped mid-file, repos holding
//! .bin/.pth/GGUF/ONNX copies that must not be fetched; then `trainer plan` and `trainer run` of a recipe naming
//! the hub id.

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

mod common;
use common::{json, repo, stderr};

const TOKEN: &str = "hf_secret";

#[derive(Clone)]
struct File {
    name: String,
    bytes: Arc<Vec<u8>>,
    etag: String,
    lfs: bool,
}

#[derive(Clone)]
struct HubRepo {
    sha: String,
    /// Revisions besides the commit that name it.
    refs: Vec<String>,
    files: Vec<File>,
    gated: bool,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    host: String,
    range: Option<String>,
    auth: Option<String>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, HubRepo>,
    /// Blobs whose next full (non-range) download is cut after half its bytes.
    drop_once: BTreeSet<String>,
    /// Blobs whose next full download trickles (4 KiB every 20 ms), and the bytes sent of it so far.
    slow_once: BTreeSet<String>,
    slow_sent: usize,
    /// Blobs whose next range request is answered with the whole file (200), as servers without range support do.
    ignore_range_once: BTreeSet<String>,
    seen: Vec<Seen>,
}

struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A repo of `dir`'s files plus `decoys` (name, bytes) the trainer must never fetch. Safetensors files are LFS
/// files (etag = sha256, as the Hub lists them), the rest plain git blobs (a 40-digit id).
fn hub_repo(dir: &Path, decoys: &[(&str, &[u8])], sha: &str, gated: bool) -> HubRepo {
    let mut files = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| {
        let digest = hex(&Sha256::digest(&bytes));
        let lfs = name.ends_with(".safetensors") || name.ends_with(".bin") || name.ends_with(".pth") || name.ends_with(".gguf") || name.ends_with(".onnx");
        let etag = if lfs { digest } else { digest[..40].to_string() };
        files.push(File { name: name.to_string(), bytes: Arc::new(bytes), etag, lfs });
    };
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        add(&e.file_name().to_string_lossy(), std::fs::read(e.path()).unwrap());
    }
    for (name, bytes) in decoys {
        add(name, bytes.to_vec());
    }
    files.push(File { name: "README.md".into(), bytes: Arc::new(b"# a model card\n".to_vec()), etag: "ab".repeat(20), lfs: false });
    HubRepo { sha: sha.to_string(), refs: vec!["main".into(), "v1.0".into()], files, gated }
}

impl Server {
    fn start(repos: BTreeMap<String, HubRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State { repos, ..Default::default() }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = handle(stream, port, &state);
                });
            }
        });
        Self { port, state }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn slow_once(&self, etag: &str) {
        self.state.lock().unwrap().slow_once.insert(etag.to_string());
    }

    fn slow_sent(&self) -> usize {
        self.state.lock().unwrap().slow_sent
    }

    fn drop_once(&self, etag: &str) {
        self.state.lock().unwrap().drop_once.insert(etag.to_string());
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

fn handle(mut stream: TcpStream, port: u16, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let seen = Seen { path: target.clone(), host: headers.get("host").cloned().unwrap_or_default(), range: headers.get("range").cloned(), auth: headers.get("authorization").cloned() };
    let mut st = state.lock().unwrap();
    st.seen.push(seen.clone());
    let not_found = |stream: &mut TcpStream| respond(stream, "404 Not Found", &[], br#"{"error":"Repository not found"}"#);
    let authorized = |repo: &HubRepo| -> Option<&'static str> {
        match (&seen.auth, repo.gated) {
            (_, false) => None,
            (None, true) => Some("401 Unauthorized"),
            (Some(a), true) if *a == format!("Bearer {TOKEN}") => None,
            (Some(_), true) => Some("403 Forbidden"),
        }
    };
    let path = target.split('?').next().unwrap_or("");
    if let Some(rest) = path.strip_prefix("/api/models/") {
        // /api/models/{org}/{name}/revision/{rev}
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        let (Some(repo), [_, _, "revision", rev]) = (st.repos.get(&format!("{}/{}", parts[0], parts.get(1).unwrap_or(&""))), parts.as_slice()) else { return not_found(&mut stream) };
        let rev = rev.replace("%2F", "/");
        if !repo.refs.contains(&rev) && rev != repo.sha {
            return respond(&mut stream, "404 Not Found", &[], br#"{"error":"Invalid rev id"}"#);
        }
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| {
                if f.lfs {
                    serde_json::json!({"rfilename": f.name, "size": f.bytes.len(), "blobId": "0".repeat(40), "lfs": {"sha256": f.etag, "size": f.bytes.len(), "pointerSize": 134}})
                } else {
                    serde_json::json!({"rfilename": f.name, "size": f.bytes.len(), "blobId": f.etag})
                }
            })
            .collect();
        let body = serde_json::json!({"id": format!("{}/{}", parts[0], parts[1]), "sha": repo.sha, "gated": repo.gated, "siblings": siblings});
        return respond(&mut stream, "200 OK", &[("Content-Type", "application/json".into())], body.to_string().as_bytes());
    }
    if let Some(etag) = path.strip_prefix("/cdn/") {
        let Some(file) = st.repos.values().flat_map(|r| &r.files).find(|f| f.etag == etag).cloned() else { return not_found(&mut stream) };
        let n = file.bytes.len();
        let ignore_range = st.ignore_range_once.remove(etag);
        if let Some(start) = seen.range.as_deref().filter(|_| !ignore_range).and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-')).and_then(|s| s.parse::<usize>().ok()) {
            if start >= n {
                return respond(&mut stream, "416 Range Not Satisfiable", &[("Content-Range", format!("bytes */{n}"))], b"");
            }
            return respond(&mut stream, "206 Partial Content", &[("Content-Range", format!("bytes {start}-{}/{n}", n - 1))], &file.bytes[start..]);
        }
        if st.slow_once.remove(etag) {
            drop(st);
            stream.write_all(format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {n}\r\n\r\n").as_bytes())?;
            for chunk in file.bytes.chunks(4096) {
                stream.write_all(chunk)?;
                state.lock().unwrap().slow_sent += chunk.len();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            return Ok(());
        }
        if st.drop_once.remove(etag) {
            drop(st);
            // The full length announced, half of it sent, then the connection closed.
            let head = format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {n}\r\n\r\n");
            stream.write_all(head.as_bytes())?;
            stream.write_all(&file.bytes[..n / 2])?;
            stream.flush()?;
            return stream.shutdown(std::net::Shutdown::Both);
        }
        return respond(&mut stream, "200 OK", &[], &file.bytes);
    }
    // /{org}/{name}/resolve/{rev}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if let [org, name, "resolve", rev, file] = parts.as_slice() {
        let Some(repo) = st.repos.get(&format!("{org}/{name}")) else { return not_found(&mut stream) };
        if let Some(status) = authorized(repo) {
            return respond(&mut stream, status, &[], b"Access to this model is restricted");
        }
        if *rev != repo.sha && !repo.refs.iter().any(|r| r == rev) {
            return not_found(&mut stream);
        }
        let Some(f) = repo.files.iter().find(|f| f.name == *file) else { return not_found(&mut stream) };
        // Another host name for the same server: the token must not follow the redirect there.
        return respond(&mut stream, "302 Found", &[("Location", format!("http://localhost:{port}/cdn/{}", f.etag))], b"");
    }
    not_found(&mut stream)
}

const SHA_TINY: &str = "1111111111111111111111111111111111111111";
const SHA_SHARDED: &str = "2222222222222222222222222222222222222222";
const SHA_GATED: &str = "3333333333333333333333333333333333333333";

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/models").join(name)
}

const DECOYS: &[(&str, &[u8])] = &[
    ("pytorch_model.bin", b"not safetensors"),
    ("consolidated.safetensors", b"mistral-inference copy"),
    ("original/consolidated.00.pth", b"meta copy"),
    ("model-q4.gguf", b"gguf"),
    ("onnx/model.onnx", b"onnx"),
];

fn server() -> Server {
    let mut repos = BTreeMap::new();
    repos.insert("org/tiny".to_string(), hub_repo(&fixture("llama-gqa"), DECOYS, SHA_TINY, false));
    repos.insert("org/sharded".to_string(), hub_repo(&fixture("qwen2-gqa-sharded"), DECOYS, SHA_SHARDED, false));
    repos.insert("org/gated".to_string(), hub_repo(&fixture("llama-gqa"), &[], SHA_GATED, true));
    Server::start(repos)
}

/// The trainer binary with only this test's Hugging Face environment.
fn trainer(server: &Server, hf_home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    for v in ["HF_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN", "XDG_CACHE_HOME"] {
        cmd.env_remove(v);
    }
    cmd.env("HF_ENDPOINT", server.endpoint()).env("HF_HOME", hf_home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("trainer runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "trainer failed: {}", stderr(o));
    stdout(o)
}

#[track_caller]
fn fails(o: &Output, needles: &[&str]) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(!e.contains("panicked") && !e.contains("internal error"), "{e}");
    for n in needles {
        assert!(e.contains(n), "`{n}` not in: {e}");
    }
    assert_eq!(e.trim().lines().filter(|l| l.starts_with("error:")).count(), 1, "one error: {e}");
    e
}

fn same_files(snapshot: &Path, source: &Path) {
    for e in std::fs::read_dir(source).unwrap().flatten() {
        let got = std::fs::read(snapshot.join(e.file_name())).unwrap_or_else(|err| panic!("{}: {err}", e.file_name().to_string_lossy()));
        assert!(got == std::fs::read(e.path()).unwrap(), "{} differs from the served file", e.file_name().to_string_lossy());
    }
}

fn downloads(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter().filter(|s| s.path.contains("/resolve/") || s.path.starts_with("/cdn/")).collect()
}

#[test]
fn fetch_fills_the_standard_cache_resuming_a_dropped_connection_and_fetches_nothing_twice() {
    let server = server();
    let home = tempfile::tempdir().unwrap();
    let weights = hex(&Sha256::digest(std::fs::read(fixture("llama-gqa/model.safetensors")).unwrap()));
    server.drop_once(&weights);
    let out = ok(&trainer(&server, home.path(), &[], &["fetch", "org/tiny", "--quiet"]));
    let root = home.path().join("hub/models--org--tiny");
    let snapshot = root.join("snapshots").join(SHA_TINY);
    assert_eq!(PathBuf::from(&out), snapshot, "fetch prints the snapshot folder");
    same_files(&snapshot, &fixture("llama-gqa"));
    assert_eq!(std::fs::read_to_string(root.join("refs/main")).unwrap(), SHA_TINY);
    // huggingface_hub's layout: snapshot entries link to blobs named by etag; nothing partial is left.
    let link = std::fs::read_link(snapshot.join("model.safetensors")).unwrap();
    assert_eq!(link, Path::new("../../blobs").join(&weights));
    let blobs: Vec<String> = std::fs::read_dir(root.join("blobs")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(blobs.len(), 5, "{blobs:?}");
    assert!(blobs.iter().all(|b| !b.contains('.')), "{blobs:?}");

    let seen = server.seen();
    let cdn: Vec<&Seen> = seen.iter().filter(|s| s.path == format!("/cdn/{weights}")).collect();
    assert_eq!(cdn.len(), 2, "the dropped download and its resumption: {cdn:?}");
    let half = std::fs::metadata(fixture("llama-gqa/model.safetensors")).unwrap().len() / 2;
    assert_eq!(cdn[1].range.as_deref(), Some(format!("bytes={half}-").as_str()), "resumed where the connection dropped");
    assert!(cdn.iter().all(|s| s.host.starts_with("localhost:")), "the redirect was followed to the CDN host");
    for s in &seen {
        assert!(!["pytorch_model.bin", "consolidated", ".pth", ".gguf", "onnx", "README"].iter().any(|d| s.path.contains(d)), "fetched a file a checkpoint does not need: {}", s.path);
    }

    // Everything cached: neither a second fetch nor an offline one asks the server anything.
    let before = server.seen().len();
    assert_eq!(ok(&trainer(&server, home.path(), &[], &["fetch", "org/tiny", "--quiet"])), out);
    assert_eq!(ok(&trainer(&server, home.path(), &[("HF_HUB_OFFLINE", "1")], &["fetch", "org/tiny"])), out);
    assert_eq!(server.seen().len(), before, "{:?}", &server.seen()[before..]);
    // Offline and not cached: one error, no request.
    fails(&trainer(&server, home.path(), &[("HF_HUB_OFFLINE", "1")], &["fetch", "org/sharded"]), &["org/sharded", "HF_HUB_OFFLINE", "not in the Hugging Face cache"]);
    assert_eq!(server.seen().len(), before);
}

#[test]
fn an_interrupted_download_resumes_from_its_incomplete_file() {
    let server = server();
    let home = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("llama-gqa/model.safetensors")).unwrap();
    let weights = hex(&Sha256::digest(&bytes));
    // What a killed download leaves: the first 1000 bytes under huggingface_hub's partial name.
    let blobs = home.path().join("hub/models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{weights}.incomplete")), &bytes[..1000]).unwrap();
    let snapshot = PathBuf::from(ok(&trainer(&server, home.path(), &[], &["fetch", "org/tiny"])));
    assert!(std::fs::read(snapshot.join("model.safetensors")).unwrap() == bytes, "byte-identical after resuming");
    let ranges: Vec<Option<String>> = server.seen().iter().filter(|s| s.path.ends_with(&weights)).map(|s| s.range.clone()).collect();
    assert_eq!(ranges, vec![Some("bytes=1000-".to_string())]);
    // A partial file that does not match the Hub's sha256 is detected and the file fetched again whole.
    let home = tempfile::tempdir().unwrap();
    let blobs = home.path().join("hub/models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{weights}.incomplete")), vec![7u8; 1000]).unwrap();
    let snapshot = PathBuf::from(ok(&trainer(&server, home.path(), &[], &["fetch", "org/tiny", "--quiet"])));
    assert!(std::fs::read(snapshot.join("model.safetensors")).unwrap() == bytes, "a corrupt partial file is not kept");
    // A server that ignores the range and sends the whole file: the partial file is started over, not appended to.
    let home = tempfile::tempdir().unwrap();
    let blobs = home.path().join("hub/models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{weights}.incomplete")), &bytes[..1000]).unwrap();
    server.state.lock().unwrap().ignore_range_once.insert(weights.clone());
    let before = server.seen().len();
    let snapshot = PathBuf::from(ok(&trainer(&server, home.path(), &[], &["fetch", "org/tiny", "--quiet"])));
    assert!(std::fs::read(snapshot.join("model.safetensors")).unwrap() == bytes, "a whole-file answer to a range request replaces the partial file");
    assert_eq!(server.seen()[before..].iter().filter(|s| s.path.ends_with(&weights)).count(), 1, "one request sufficed");
}

#[test]
fn sharded_checkpoints_fetch_the_index_and_its_shards_only_and_text_only_skips_weights() {
    let server = server();
    let home = tempfile::tempdir().unwrap();
    let snapshot = PathBuf::from(ok(&trainer(&server, home.path(), &[], &["fetch", "org/sharded", "--text-only", "--quiet"])));
    assert!(snapshot.join("config.json").is_file() && snapshot.join("tokenizer.json").is_file());
    assert!(!snapshot.join("model.safetensors.index.json").exists());
    assert!(downloads(&server.seen()).iter().all(|s| !s.path.contains("safetensors")), "text only");
    let again = PathBuf::from(ok(&trainer(&server, home.path(), &[], &["fetch", "org/sharded", "--quiet"])));
    assert_eq!(again, snapshot);
    same_files(&snapshot, &fixture("qwen2-gqa-sharded"));
    let resolved: Vec<String> = server.seen().iter().filter_map(|s| s.path.split("/resolve/").nth(1).map(|p| p.split_once('/').unwrap().1.to_string())).collect();
    let unique: BTreeSet<&String> = resolved.iter().collect();
    assert_eq!(unique.len(), resolved.len(), "each file once: {resolved:?}");
    let mut expected: Vec<String> = std::fs::read_dir(fixture("qwen2-gqa-sharded")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let mut got = resolved.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn missing_and_gated_repos_give_one_clear_error_and_tokens_stay_on_the_hub_host() {
    let server = server();
    let home = tempfile::tempdir().unwrap();
    fails(&trainer(&server, home.path(), &[], &["fetch", "org/missing"]), &["org/missing", "HTTP 404"]);
    fails(&trainer(&server, home.path(), &[], &["fetch", "org/tiny", "--revision", "no-such-branch"]), &["no-such-branch", "HTTP 404"]);
    let e = fails(&trainer(&server, home.path(), &[], &["fetch", "org/gated"]), &["org/gated", "HTTP 401", "HF_TOKEN", "licence"]);
    assert!(e.contains("no token was sent"), "{e}");
    fails(&trainer(&server, home.path(), &[("HF_TOKEN", "hf_wrong")], &["fetch", "org/gated"]), &["HTTP 403", "licence"]);
    assert!(!home.path().join("hub/models--org--gated/snapshots").exists(), "nothing half-made");

    let before = server.seen().len();
    ok(&trainer(&server, home.path(), &[("HF_TOKEN", TOKEN)], &["fetch", "org/gated", "--quiet"]));
    let seen = server.seen()[before..].to_vec();
    assert!(seen.iter().filter(|s| s.path.contains("/resolve/")).all(|s| s.auth.as_deref() == Some(&format!("Bearer {TOKEN}"))));
    assert!(seen.iter().filter(|s| s.path.starts_with("/cdn/")).all(|s| s.auth.is_none()), "the token followed the redirect to another host: {seen:?}");

    // The token file `huggingface-cli login` writes under HF_HOME, in a fresh cache.
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), format!("{TOKEN}\n")).unwrap();
    ok(&trainer(&server, home.path(), &[], &["fetch", "org/gated", "--quiet"]));
    // HF_HUB_CACHE puts the cache elsewhere; HF_HOME still holds the token.
    let cache = tempfile::tempdir().unwrap();
    let out = ok(&trainer(&server, home.path(), &[("HF_HUB_CACHE", cache.path().to_str().unwrap())], &["fetch", "org/gated", "--quiet"]));
    assert!(Path::new(&out).starts_with(cache.path().join("models--org--gated")), "{out}");
}

#[test]
fn revisions_tags_and_commits() {
    let server = server();
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("hub/models--org--tiny");
    let by_tag = ok(&trainer(&server, home.path(), &[], &["fetch", "org/tiny", "--revision", "v1.0", "--quiet"]));
    assert_eq!(std::fs::read_to_string(root.join("refs/v1.0")).unwrap(), SHA_TINY);
    assert!(!root.join("refs/main").exists());
    let before = server.seen().len();
    // The same commit by hash: found in the cache (no ref is written for a hash), no request.
    let by_hash = ok(&trainer(&server, home.path(), &[], &["fetch", &format!("org/tiny@{SHA_TINY}"), "--quiet"]));
    assert_eq!(by_hash, by_tag);
    assert_eq!(server.seen().len(), before);
    assert!(!root.join("refs").join(SHA_TINY).exists());
    fails(&trainer(&server, home.path(), &[], &["fetch", "org/tiny@v1.0", "--revision", "main"]), &["v1.0", "main"]);
    fails(&trainer(&server, home.path(), &[], &["fetch", "org/tiny", "--revision", "../x"]), &["../x"]);
}

fn recipe(dir: &Path, revision: Option<&str>) -> PathBuf {
    let revision = revision.map(|r| format!("revision = \"{r}\"\n")).unwrap_or_default();
    let text = format!(
        "name = \"hub\"\noutput_dir = \"{out}\"\n[model]\npath = \"org/tiny\"\n{revision}[lora]\ndropout = 0.0\n[train]\nlr = [1e-3]\nmax_steps = 1\nbatch_size = 2\nshuffle = false\n[[sources]]\nname = \"fixture\"\npath = \"{data}\"\n",
        out = dir.join("out").display(),
        data = repo().join("tests/fixtures/data/alpaca.json").display(),
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn plan_reads_only_the_text_side_and_run_downloads_and_trains() {
    let server = server();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let r = recipe(work.path(), Some("v1.0"));
    let plan: serde_json::Value = serde_json::from_str(&ok(&trainer(&server, home.path(), &[], &["plan", r.to_str().unwrap(), "--json"]))).unwrap();
    assert_eq!(plan["runs"].as_array().unwrap().len(), 1, "{plan}");
    assert!(downloads(&server.seen()).iter().all(|s| !s.path.contains("safetensors")), "plan fetched weights");

    let o = trainer(&server, home.path(), &[], &["run", r.to_str().unwrap(), "--quiet"]);
    ok(&o);
    let adapter = json(&work.path().join("out/hub-lr1e-3/adapter/adapter_config.json"));
    assert_eq!(adapter["base_model_name_or_path"], "org/tiny", "PEFT finds the base by its hub id");
    assert_eq!(adapter["revision"], "v1.0", "and loads it at the recipe's revision");
    assert!(home.path().join("hub/models--org--tiny/snapshots").join(SHA_TINY).join("model.safetensors").is_file());
    // The recipe's revision is refused for a local folder, and clashing with one in the path.
    let text = std::fs::read_to_string(&r).unwrap().replace("path = \"org/tiny\"", "path = \"org/tiny@main\"");
    std::fs::write(&r, text).unwrap();
    fails(&trainer(&server, home.path(), &[], &["plan", r.to_str().unwrap()]), &["revision", "main", "v1.0"]);
    let text = std::fs::read_to_string(&r).unwrap().replace("path = \"org/tiny@main\"", &format!("path = \"{}\"", fixture("llama-gqa").display()));
    std::fs::write(&r, text).unwrap();
    fails(&trainer(&server, home.path(), &[], &["plan", r.to_str().unwrap()]), &["local folder", "hub ids only"]);
}

/// Ctrl-C while `trainer run` downloads: the download stops, the partial file stays, the sweep exits 130 with no
/// run marked failed; the next run resumes the file with a Range request.
#[test]
fn ctrl_c_stops_a_download_and_the_next_run_resumes_it() {
    let server = server();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("llama-gqa/model.safetensors")).unwrap();
    let weights = hex(&Sha256::digest(&bytes));
    server.slow_once(&weights);
    let r = recipe(work.path(), None);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    for v in ["HF_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN_PATH", "XDG_CACHE_HOME"] {
        cmd.env_remove(v);
    }
    let child = cmd.env("HF_ENDPOINT", server.endpoint()).env("HF_HOME", home.path()).args(["run", r.to_str().unwrap(), "--quiet"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let start = std::time::Instant::now();
    while server.slow_sent() < 40_000 {
        assert!(start.elapsed().as_secs() < 60, "the download never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{e}");
    assert!(e.contains("interrupted"), "{e}");
    let part = home.path().join(format!("hub/models--org--tiny/blobs/{weights}.incomplete"));
    let kept = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(kept > 0 && (kept as usize) < bytes.len(), "partial file: {kept} bytes");
    assert!(!work.path().join("out/hub-lr1e-3/run.json").exists(), "no run recorded as failed");

    ok(&trainer(&server, home.path(), &[], &["run", r.to_str().unwrap(), "--quiet"]));
    let ranges: Vec<Option<String>> = server.seen().iter().filter(|s| s.path.ends_with(&weights)).map(|s| s.range.clone()).collect();
    assert_eq!(ranges, vec![None, Some(format!("bytes={kept}-"))]);
    let snapshot = home.path().join("hub/models--org--tiny/snapshots").join(SHA_TINY);
    assert!(std::fs::read(snapshot.join("model.safetensors")).unwrap() == bytes);
}
