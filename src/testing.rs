//! Paths shared by unit and integration tests.

use std::path::PathBuf;

/// The repository root.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the repository (real tokenizers and configs; CI has it). Set `TRAINER_SHARED` to override.
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("TRAINER_SHARED").map(PathBuf::from).unwrap_or_else(|| repo_dir().join("../shared"));
    assert!(dir.join("tokenizers").is_dir(), "shared material not found at {} (set TRAINER_SHARED)", dir.display());
    dir
}

/// `tests/fixtures` (tiny checkpoints, adapters and golden values made by tests/fixtures/gen_fixtures.py).
pub fn fixtures_dir() -> PathBuf {
    repo_dir().join("tests/fixtures")
}
