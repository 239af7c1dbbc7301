//! An interruption (Ctrl-C, SIGTERM) that arrives while a run finishes — its last evaluation, its benchmarks —
//! stops the sweep before the next run starts. Its own test binary: the flag is process-wide.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use trainer::sweep::{Interrupted, Options, INTERRUPTED};

#[test]
fn no_run_starts_after_an_interruption() {
    let dir = tempfile::tempdir().unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "name = \"t\"\noutput_dir = \"{out}\"\n[model]\npath = \"{tiny}\"\n[train]\nlr = [1e-3, 1e-4]\nmax_steps = 1\nbatch_size = 4\nmax_seq_len = 64\n[[sources]]\nname = \"es\"\npath = \"{samples}/es-native.json\"\n",
            out = dir.path().join("out").display(),
            tiny = repo.join("data/tiny-llama").display(),
            samples = repo.join("data/samples").display()
        ),
    )
    .unwrap();
    INTERRUPTED.store(true, Ordering::SeqCst);
    let e = trainer::sweep::run_recipe(&recipe, &Options::default(), trainer::sweep::progress::Mode::Quiet).err().expect("interrupted");
    match e.downcast_ref::<Interrupted>() {
        Some(Interrupted::BetweenRuns { next }) => assert_eq!(next, "t-lr1e-3"),
        other => panic!("expected a stop before the first run, got {other:?}: {e:#}"),
    }
    assert!(!dir.path().join("out/t-lr1e-3/metrics.jsonl").exists(), "no step was trained");
}
