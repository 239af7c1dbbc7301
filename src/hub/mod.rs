//! Hub ids that are not in the local cache: downloaded from the Hugging Face Hub (or `HF_ENDPOINT`) into the
//! standard cache layout, so transformers, PEFT and hf-hub find the same files afterwards. Only what a checkpoint
//! needs is fetched: config, generation config, tokenizer files and the safetensors weights (never the .bin, .pth,
//! GGUF or ONNX copies many repos also hold).

pub mod cache;
mod download;

pub use cache::{check_revision, is_commit_hash, RepoCache};
pub use download::download;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What the caller is about to read: the text side (config and tokenizer: `trainer plan`) or the whole checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Text,
    Weights,
}

/// `--quiet` (and `--log-format json`): downloads draw no progress bars and print no lines.
static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Where and how to download, from the environment variables huggingface_hub reads.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// `HF_ENDPOINT`, default https://huggingface.co, without a trailing slash.
    pub endpoint: String,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub` or `~/.cache/huggingface/hub`.
    pub cache: PathBuf,
    /// `HF_TOKEN`, else the token file (`HF_TOKEN_PATH`, default `$HF_HOME/token`, where `huggingface-cli login`
    /// writes it).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: the cache only, never the network.
    pub offline: bool,
    /// Progress output (bars on a terminal, a line per file otherwise); off with `--quiet`.
    pub progress: bool,
    /// Attempts per file after the first, each resuming where the last one stopped.
    pub retries: usize,
    /// The wait before the first retry; it doubles with each one (capped at 30 s).
    pub backoff: Duration,
}

/// huggingface_hub's reading of a boolean variable.
fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

impl HubSettings {
    pub fn from_env() -> Result<Self> {
        let hf_home = match env_nonempty("HF_HOME") {
            Some(h) => PathBuf::from(h),
            None => {
                let xdg = env_nonempty("XDG_CACHE_HOME").map(PathBuf::from);
                let base = match xdg {
                    Some(x) => x,
                    None => std::env::home_dir().context("no home directory for the Hugging Face cache: set HF_HOME or HF_HUB_CACHE")?.join(".cache"),
                };
                base.join("huggingface")
            }
        };
        let cache = env_nonempty("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let token_file = env_nonempty("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
        let token = env_nonempty("HF_TOKEN").or_else(|| std::fs::read_to_string(&token_file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()));
        let endpoint = env_nonempty("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()).trim_end_matches('/').to_string();
        Ok(Self { endpoint, cache, token, offline: env_true("HF_HUB_OFFLINE"), progress: !QUIET.load(Ordering::Relaxed), retries: 5, backoff: Duration::from_millis(500) })
    }
}

/// A hub id as the trainer accepts it: `org/name`, each part letters, digits, `-`, `_` and `.`.
pub fn looks_like_hub_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && *p != "." && *p != "..")
}

/// The snapshot folder of `repo_id` at `revision` when the cache has one (it may lack files: the caller checks).
pub fn cached_snapshot(settings: &HubSettings, repo_id: &str, revision: &str) -> Option<PathBuf> {
    let repo = RepoCache::new(&settings.cache, repo_id);
    repo.commit_for(revision).map(|c| repo.snapshot(&c)).filter(|d| d.is_dir())
}

/// The error for a model that is not (completely) in the cache while `HF_HUB_OFFLINE` forbids the network.
pub fn offline_error(settings: &HubSettings, repo_id: &str, revision: &str, why: Option<&str>) -> anyhow::Error {
    let folder = RepoCache::new(&settings.cache, repo_id).root();
    let state = match why {
        Some(why) => format!("is incomplete in the Hugging Face cache ({why})"),
        None => format!("is not in the Hugging Face cache ({} has no snapshot of it)", folder.display()),
    };
    anyhow::anyhow!("model `{repo_id}` (revision {revision}) {state}, and HF_HUB_OFFLINE=1 forbids downloading it: run `trainer fetch {repo_id}` where the Hub is reachable, or unset HF_HUB_OFFLINE")
}

/// The revision a model spec asks for: `org/name@rev` or the recipe's `revision`, not both; default `main`.
pub fn split_spec<'a>(spec: &'a str, revision: Option<&'a str>) -> Result<(&'a str, &'a str)> {
    let (id, from_spec) = match spec.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (spec, None),
    };
    let revision = match (from_spec, revision) {
        (Some(a), Some(b)) if a != b => bail!("model `{spec}` names revision `{a}` and `revision` says `{b}`: give one"),
        (Some(r), _) | (None, Some(r)) => r,
        (None, None) => "main",
    };
    check_revision(revision).with_context(|| format!("model `{spec}`"))?;
    Ok((id, revision))
}
