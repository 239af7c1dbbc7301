//! What an outside sweep of bad inputs, faults and interruptions found: each case here failed before its fix.
//! Recipes that name paths, values that cannot be right, adapters PEFT must be able to follow, interrupted and
//! concurrent sweeps, and files left behind by full disks.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{repo, trainer, stderr, json};

/// A two-step recipe on the tiny Llama and our Spanish native samples; `extra` is appended verbatim (top-level
/// keys must come before any table, so it goes into [train] unless it opens its own table).
fn recipe(dir: &Path, extra: &str) -> PathBuf {
    let r = repo();
    let text = format!(
        r#"name = "t"
output_dir = "{out}"
[model]
path = "{tiny}"
[train]
lr = [1e-3]
max_steps = 2
batch_size = 4
max_seq_len = 128
{extra}
[[sources]]
name = "es-native"
path = "{samples}/es-native.json"
language = "es"
"#,
        out = dir.join("out").display(),
        tiny = r.join("data/tiny-llama").display(),
        samples = r.join("data/samples").display(),
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The recipe with `[[models]]` tables instead of its `[model]`.
fn with_models(dir: &Path, models: &str) -> PathBuf {
    let r = recipe(dir, "");
    let text = std::fs::read_to_string(&r).unwrap().replacen(&format!("[model]\npath = \"{}\"\n", repo().join("data/tiny-llama").display()), models, 1);
    std::fs::write(&r, text).unwrap();
    r
}

/// `trainer plan` and `trainer run` on `r` with `--set`s: both must fail with a message containing `want`, and run
/// must write nothing.
fn refused_recipe(dir: &Path, r: &Path, sets: &[&str], want: &str) {
    for cmd in ["plan", "run"] {
        let mut args = vec![cmd, r.to_str().unwrap()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let o = trainer(&args);
        assert_eq!(o.status.code(), Some(1), "{cmd} {sets:?} must fail: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(want), "{cmd} {sets:?}: expected `{want}` in: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
    assert!(!dir.join("out").exists(), "a refused recipe wrote {}", dir.join("out").display());
}

/// `trainer plan` and `trainer run` on the recipe with `--set`s: both must fail with a message containing `want`,
/// and run must write nothing.
fn refused(dir: &Path, extra: &str, sets: &[&str], want: &str) {
    refused_recipe(dir, &recipe(dir, extra), sets, want);
}

#[test]
fn names_that_would_leave_the_output_folder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cond = |name: &str| format!("conditions=[{{name = \"{name}\", sources = [\"es-native\"]}}]");
    refused(dir.path(), "", &[&cond("../../escaped")], "[[conditions]] name `../../escaped`");
    refused(dir.path(), "", &[&cond(".hidden")], "starts with a dot");
    refused(dir.path(), "", &["name=a/b"], "name `a/b` contains a path separator");
    refused(dir.path(), "", &["sources=[{name = \"x\\ny\", path = \"x.json\"}]"], "[[sources]] name `x\\ny` contains the control character");
    refused(dir.path(), "", &["evals=[{name = \"..\", task = \"loss\", path = \"x.json\"}]"], "[[evals]] name `..`");
    // {lang} expansion: a language that is a path.
    refused(dir.path(), "", &["conditions=[{name = \"{lang}-native\", languages = [\"../x\"], sources = [\"es-native\"]}]"], "`../x-native`");
    // Two conditions that differ only by case share a folder on macOS and Windows.
    refused(dir.path(), "", &["conditions=[{name = \"es\", sources = [\"es-native\"]}, {name = \"ES\", sources = [\"es-native\"]}]"], "`es` and `ES` differ only by case");
    // A model name is a run-name prefix.
    let tiny = repo().join("data/tiny-llama");
    let r = with_models(dir.path(), &format!("[[models]]\npath = \"{0}\"\nname = \"../m\"\n[[models]]\npath = \"{0}\"\nname = \"n\"\ndtype = \"f32\"\n", tiny.display()));
    refused_recipe(dir.path(), &r, &[], "model name `../m`");
}

#[test]
fn duplicate_grid_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    refused(dir.path(), "", &["train.lr=[1e-3, 1e-3]"], "lr: 0.001 is listed twice");
    let tiny = repo().join("data/tiny-llama");
    let r = with_models(dir.path(), &format!("[[models]]\npath = \"{0}\"\nname = \"a\"\n[[models]]\npath = \"{0}\"\nname = \"b\"\n", tiny.display()));
    refused_recipe(dir.path(), &r, &[], "`a` and `b` are the same model");
    let r = with_models(dir.path(), &format!("[[models]]\npath = \"{0}\"\nname = \"a\"\n[[models]]\npath = \"{0}\"\nname = \"A\"\ndtype = \"f32\"\n", tiny.display()));
    refused_recipe(dir.path(), &r, &[], "`a` and `A` differ only by case");
}

#[test]
fn values_that_cannot_be_right_are_refused_by_plan_and_run_alike() {
    let dir = tempfile::tempdir().unwrap();
    refused(dir.path(), "", &["lora.alpha=-16"], "[lora] alpha must be a positive number");
    refused(dir.path(), "", &["lora.r=0"], "[lora] r must be at least 1");
    refused(dir.path(), "", &["lora.targets=[\"q\", \"qq\"]"], "`qq` is not one of");
    refused(dir.path(), "", &["train.weight_decay=-0.1"], "weight_decay must be ≥ 0");
    refused(dir.path(), "", &["train.max_grad_norm=-1"], "max_grad_norm must be ≥ 0");
    refused(dir.path(), "", &["train.batch_size=1000000000000"], "batch_size 1000000000000 is more than");
    refused(dir.path(), "", &["train.max_seq_len=1000000000000"], "max_seq_len 1000000000000 is more than");
    refused(dir.path(), "", &["output_dir=\"\""], "output_dir is empty");
}

/// Numbers only the data and the model can judge are bounded by them, with a warning naming both numbers: warmup
/// longer than the run, a batch larger than the data (40 examples), sequences longer than the model's 512
/// positions (cut there).
#[test]
fn what_the_data_and_model_cannot_use_is_bounded_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "warmup_steps = 100");
    let sets = ["--set", "train.batch_size=64", "--set", "train.max_seq_len=4096"];
    let want = [
        "warmup_steps 100 is more than the 2 steps of condition `t`'s runs",
        "batch_size 64 is more than condition `t`'s 40 training sequences",
        "max_seq_len 4096 is more than model `tiny-llama`'s 512 positions",
    ];
    let mut args = vec!["plan", r.to_str().unwrap()];
    args.extend(sets);
    let o = trainer(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    for w in want {
        assert!(stderr(&o).contains(w), "plan: no `{w}` in {}", stderr(&o));
    }
    args.push("--json");
    let plan: Value = serde_json::from_slice(&trainer(&args).stdout).unwrap();
    assert_eq!(plan["warnings"].as_array().unwrap().len(), 3, "{plan}");
    let mut args = vec!["run", r.to_str().unwrap(), "--quiet"];
    args.extend(sets);
    let o = trainer(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    for w in want {
        assert!(stderr(&o).contains(w), "run: no `{w}` in {}", stderr(&o));
    }
    let config = json(&dir.path().join("out/t-lr1e-3/config.json"));
    assert_eq!(config["recipe"]["train"]["max_seq_len"], 512, "the run records the bound it trained with");
}

#[test]
fn generate_refuses_a_zero_batch() {
    let o = trainer(&["generate", "--model", repo().join("data/tiny-llama").to_str().unwrap(), "--data", "x.json", "--out", "/tmp/never.jsonl", "--batch-size", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--batch-size and --max-new-tokens must be at least 1"), "{}", stderr(&o));
}

/// Trains the two-step recipe into `dir/out` and returns the run folder.
fn trained(dir: &Path, extra: &str) -> PathBuf {
    let r = recipe(dir, extra);
    let o = trainer(&["run", r.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir.join("out/t-lr1e-3")
}

#[test]
fn exported_adapters_name_their_base_model_absolutely_and_look_like_peft_s() {
    let dir = tempfile::tempdir().unwrap();
    // The recipe names the model relative to its own folder.
    let r = recipe(dir.path(), "");
    let text = std::fs::read_to_string(&r).unwrap().replace(&format!("path = \"{}\"", repo().join("data/tiny-llama").display()), "path = \"tiny\"");
    std::os::unix::fs::symlink(repo().join("data/tiny-llama"), dir.path().join("tiny")).unwrap();
    std::fs::write(&r, text).unwrap();
    let o = trainer(&["run", r.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("out/t-lr1e-3");
    let absolute = std::fs::canonicalize(repo().join("data/tiny-llama")).unwrap();
    let config = json(&run.join("adapter/adapter_config.json"));
    assert_eq!(config["base_model_name_or_path"], absolute.to_str().unwrap());
    assert!(config["lora_alpha"].is_i64(), "integral alpha as an integer, as PEFT writes it: {config}");
    assert_eq!(json(&run.join("run.json"))["model_path"], absolute.to_str().unwrap());
    assert_eq!(json(&run.join("config.json"))["model"]["path"], absolute.to_str().unwrap());
    // safetensors metadata as PEFT writes it.
    let bytes = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
    // Every file the run wrote has the same permissions (the umask's default), the weights included.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for f in ["adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/README.md", "metrics.jsonl"] {
        assert_eq!(mode(&run.join(f)), mode(&run.join("run.json")), "{f}");
    }
    let card = std::fs::read_to_string(run.join("adapter/README.md")).unwrap();
    for want in [absolute.to_str().unwrap(), "condition `t`", "lr 1e-3", "step 2 of 2", "r=8, alpha=16", env!("CARGO_PKG_VERSION")] {
        assert!(card.contains(want), "model card lacks `{want}`:\n{card}");
    }
}

#[test]
fn merge_refuses_a_folder_that_is_not_empty_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path(), "");
    let out = dir.path().join("merged");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let tiny = repo().join("data/tiny-llama");
    let adapter = run.join("adapter");
    let args = ["merge", "--model", tiny.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let o = trainer(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not empty (it holds notes.txt)") && stderr(&o).contains("--force"), "{}", stderr(&o));
    assert!(!out.join("model.safetensors").exists());
    let mut forced = args.to_vec();
    forced.push("--force");
    let o = trainer(&forced);
    assert!(o.status.success(), "{}", stderr(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out.join("model.safetensors")), mode(&out.join("config.json")), "merged weights get the default permissions");
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
}

#[test]
fn adapters_with_nan_or_inf_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path(), "");
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(run.join("adapter/adapter_config.json"), broken.join("adapter_config.json")).unwrap();
    let st = candle_core::safetensors::load(run.join("adapter/adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let key = "base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight";
    let mut tensors = st.clone();
    let t = &tensors[key];
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[5] = f32::NAN;
    tensors.insert(key.to_string(), candle_core::Tensor::from_vec(v, t.dims(), &candle_core::Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, broken.join("adapter_model.safetensors")).unwrap();
    let tiny = repo().join("data/tiny-llama");
    let data = repo().join("data/samples/es-test.json");
    let o = trainer(&["eval", "--model", tiny.to_str().unwrap(), "--adapter", broken.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(stderr(&o).contains(key) && stderr(&o).contains("NaN"), "{}", stderr(&o));
    // The same adapter as a run's starting point.
    let init = format!("[lora]\ninit_adapter = \"{}\"\n[train]", broken.display());
    std::fs::create_dir_all(dir.path().join("init")).unwrap();
    let r = recipe(&dir.path().join("init"), "");
    let text = std::fs::read_to_string(&r).unwrap().replacen("[train]", &init, 1);
    std::fs::write(&r, text).unwrap();
    let o = trainer(&["run", r.to_str().unwrap(), "--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("init_adapter") && stderr(&o).contains(key), "{}", stderr(&o));
}

#[test]
fn eval_over_a_sweep_lists_what_it_skipped_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    // Two runs: one finishes, one diverges (lr 1e30 without clipping).
    let o = trainer(&["run", r.to_str().unwrap(), "--quiet", "--set", "train.lr=[1e-3, 1e30]", "--set", "train.max_grad_norm=0", "--set", "train.max_steps=3"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("t-lr5e-4")).unwrap();
    std::fs::write(out.join("t-lr5e-4/run.json"), "{ not json").unwrap();
    let tiny = repo().join("data/tiny-llama");
    let data = repo().join("data/samples/es-test.json");
    let args = ["eval", "--model", tiny.to_str().unwrap(), "--runs", out.to_str().unwrap(), "--data", data.to_str().unwrap()];
    let o = trainer(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("skipped t-lr1e30: failed:") && e.contains("diverged"), "{e}");
    assert!(e.contains("skipped t-lr5e-4: unreadable"), "{e}");
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let o = trainer(&with_json);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["runs"]["t-lr1e-3"]["loss"].is_number(), "{v}");
    assert!(v["skipped"]["t-lr1e30"].as_str().unwrap().contains("diverged"), "{v}");
    assert!(v["skipped"]["t-lr5e-4"].as_str().unwrap().contains("unreadable"), "{v}");
}

#[test]
fn a_locked_run_folder_is_left_to_the_process_training_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let run = dir.path().join("out/t-lr1e-3");
    let lock = trainer::sweep::RunLock::try_acquire(&run).unwrap().expect("the folder is free");
    let o = trainer(&["run", r.to_str().unwrap(), "--quiet"]);
    let e = stderr(&o);
    assert!(e.contains("t-lr1e-3: skipped (busy: another trainer process is training it)"), "{e}");
    assert!(!run.join("metrics.jsonl").exists(), "a busy run must not be trained twice");
    drop(lock);
    let o = trainer(&["run", r.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&run.join("run.json"))["status"], "ok");
}

#[test]
fn leftovers_of_a_crash_are_cleaned_and_a_damaged_checkpoint_names_the_file_to_delete() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let run = dir.path().join("out/t-lr1e-3");
    std::fs::create_dir_all(run.join("adapter")).unwrap();
    std::fs::write(run.join(".run.json.4242.tmp"), "{ half").unwrap();
    std::fs::write(run.join("adapter/.tmpAbC123"), "half").unwrap();
    // A checkpoint cut short by a full disk.
    std::fs::write(run.join("checkpoint.safetensors"), [8u8, 0, 0, 0]).unwrap();
    let o = trainer(&["run", r.to_str().unwrap(), "--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("damaged") && e.contains(&format!("delete {}", run.join("checkpoint.safetensors").display())), "{e}");
    assert!(!run.join(".run.json.4242.tmp").exists() && !run.join("adapter/.tmpAbC123").exists(), "stale temporary files stay");
    std::fs::remove_file(run.join("checkpoint.safetensors")).unwrap();
    let o = trainer(&["run", r.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A full disk, for real: the trainer runs under a file-size limit (`ulimit -f`, with SIGXFSZ ignored so writes
/// fail with EFBIG instead of killing it) that the metrics fit in and the checkpoint (adapter + AdamW moments)
/// does not.
#[test]
fn a_write_that_fails_names_the_file_and_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "checkpoint_every = 1");
    let args = ["run", r.to_str().unwrap(), "--quiet", "--set", "train.max_steps=40"];
    let run = dir.path().join("out/t-lr1e-3");
    let checkpoint = run.join("checkpoint.safetensors");
    // A run killed after its first checkpoints: the previous state that must survive.
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).stderr(Stdio::null()).spawn().unwrap();
    let started = std::time::Instant::now();
    while !checkpoint.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first checkpoint");
        assert!(started.elapsed().as_secs() < 120, "no checkpoint after 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = std::fs::read(&checkpoint).unwrap();
    // The checkpoint is about three adapters' worth (adapter, two moments) plus metrics: half of it fits.
    let limit_kib = (before.len() as u64 / 2).div_ceil(1024);
    let script = format!("trap '' XFSZ; ulimit -f {limit_kib}; exec \"$@\"");
    let mut limited = vec!["-c", script.as_str(), "sh", env!("CARGO_BIN_EXE_trainer")];
    limited.extend(args);
    let o = Command::new("sh").args(&limited).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let error = json(&run.join("run.json"))["error"].as_str().unwrap().to_string();
    assert!(error.contains(&format!("cannot write {}", checkpoint.display())) && error.contains("File too large"), "{error}");
    assert_eq!(error.matches("File too large").count(), 1, "the OS message once: {error}");
    assert_eq!(std::fs::read(&checkpoint).unwrap(), before, "the previous checkpoint stays intact");
    let left: Vec<String> = std::fs::read_dir(&run).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains("tmp")).collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    // Without the limit the same command resumes from that checkpoint and trains the run to the end.
    let o = trainer(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming after step"), "{}", stderr(&o));
}

#[test]
fn a_malformed_generation_config_is_an_error_not_a_silent_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = repo().join("data/tiny-llama");
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny.join(f), dir.path().join(f)).unwrap();
    }
    // Without eos_token_id in config.json the end-of-sequence id comes from generation_config.json.
    let mut config = json(&tiny.join("config.json"));
    config.as_object_mut().unwrap().remove("eos_token_id");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let open = || trainer::session::ModelText::open(dir.path().to_str().unwrap(), None);
    std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": [7, 2]}"#).unwrap();
    assert_eq!(open().unwrap().eos_id, 7);
    std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": 2,"#).unwrap();
    let e = format!("{:#}", open().err().expect("a malformed file is an error"));
    assert!(e.contains("generation_config.json is not valid JSON"), "{e}");
    std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": "</s>"}"#).unwrap();
    let e = format!("{:#}", open().err().expect("a non-id is an error"));
    assert!(e.contains("`eos_token_id` \"</s>\" is not a token id"), "{e}");
}
