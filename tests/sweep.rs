//! Sweeps end to end through the binary: the grid, evaluations and kept adapters, the report, skipping finished
//! runs, exact resumption after SIGKILL, Ctrl-C, failed runs, `--set` and `--shard`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{repo, trainer, stderr, json};

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A small sweep on the tiny Llama: es native / translated / round-trip, held out 4 of 40, best kept.
fn recipe(dir: &Path, extra_train: &str) -> PathBuf {
    let r = repo();
    let mut text = format!(
        r#"name = "t"
output_dir = "out"
seed = 3
[model]
path = "{tiny}"
[lora]
dropout = 0.05
[train]
lr = [1e-3]
max_steps = 6
batch_size = 8
micro_batch_size = 4
max_seq_len = 128
warmup_steps = 1
{extra_train}
[eval]
heldout_fraction = 0.1
every = 3
keep = "best"
"#,
        tiny = r.join("data/tiny-llama").display(),
    );
    for origin in ["native", "translated", "round-trip"] {
        let samples = r.join("data/samples");
        text.push_str(&format!("[[sources]]\nname = \"es-{origin}\"\npath = \"{}/es-{origin}.json\"\nlanguage = \"es\"\norigin = \"{origin}\"\n", samples.display()));
    }
    text.push_str(&format!("[[sources]]\nname = \"es-test\"\npath = \"{}/es-test.json\"\nlanguage = \"es\"\n", r.join("data/samples").display()));
    for origin in ["native", "translated", "round-trip"] {
        let matched = if origin == "native" { "" } else { "match_size_of = \"es-native\"\n" };
        text.push_str(&format!("[[conditions]]\nname = \"es-{origin}\"\nsources = [\"es-{origin}\"]\n{matched}"));
    }
    let p = dir.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_sweep_evaluates_keeps_the_best_reports_and_skips_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let out = dir.path().join("out");
    let o = trainer(&["run", r.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--set", "train.lr=[1e-3, 1e-4]", "--set", "eval.sets=[\"es-test\"]"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let runs = ["es-native-lr1e-3", "es-native-lr1e-4", "es-translated-lr1e-3", "es-translated-lr1e-4", "es-round-trip-lr1e-3", "es-round-trip-lr1e-4"];
    for run in runs {
        let d = out.join(run);
        let s = json(&d.join("run.json"));
        assert_eq!(s["status"], "ok", "{s}");
        // 6 steps with evaluations after steps 3 and 6: 6 train lines and 2 eval lines.
        let m = lines(&d.join("metrics.jsonl"));
        assert_eq!(m.iter().filter(|l| l["kind"] == "train").count(), 6);
        let evals: Vec<&Value> = m.iter().filter(|l| l["kind"] == "eval").collect();
        assert_eq!(evals.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [3, 6]);
        assert!(evals.iter().all(|e| e["languages"]["es"]["tokens"] == e["tokens"]), "one language: its tokens are all tokens");
        // The shared set: all 12 records at every evaluation, the same tokens for every run.
        assert!(evals.iter().all(|e| e["sets"]["es-test"]["examples"] == 12), "{evals:?}");
        // keep = "best": the exported adapter is the evaluation with the lowest held-out loss, and run.json says which.
        let best = evals.iter().min_by(|a, b| a["loss"].as_f64().unwrap().total_cmp(&b["loss"].as_f64().unwrap())).unwrap();
        assert_eq!(s["best"]["step"], best["step"], "{run}");
        assert_eq!(s["heldout"]["loss"], best["loss"]);
        assert_eq!(s["sets"]["es-test"], best["sets"]["es-test"], "the kept adapter's shared-set results");
        assert!(d.join("adapter/adapter_model.safetensors").is_file());
        assert!(!d.join("checkpoint.safetensors").exists(), "a finished run leaves no checkpoint");
        let csv = std::fs::read_to_string(d.join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + 6 + 2 * 3, "header, 6 steps, 2 evaluations × (all, es, set:es-test)");
        assert!(csv.contains(",set:es-test,"));
        let cfg = json(&d.join("config.json"));
        assert_eq!(cfg["trainer"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(cfg["recipe"]["train"]["lr"], serde_json::json!([1e-3, 1e-4]), "the resolved recipe, --set applied");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| language | native | round-trip | translated |"), "{report}");
    assert!(report.contains("### tiny-llama, lr 1e-3") && report.contains("### tiny-llama, lr 1e-4"), "{report}");
    assert!(report.contains("## Shared evaluation sets") && report.contains("| es-test (es) |"), "{report}");
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7);
    assert!(csv.lines().next().unwrap().contains("heldout_perplexity_es") && csv.lines().next().unwrap().contains("set_es-test_perplexity"));
    for c in ["es-native", "es-translated", "es-round-trip"] {
        let svg = std::fs::read_to_string(out.join(format!("plots/{c}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("<circle"), "{c}: training lines and held-out points");
    }

    // Again: every run is done, nothing is retrained, the adapters stay byte for byte.
    let before = std::fs::read(out.join("es-native-lr1e-3/adapter/adapter_model.safetensors")).unwrap();
    let mtime = std::fs::metadata(out.join("es-native-lr1e-3/run.json")).unwrap().modified().unwrap();
    let o = trainer(&["run", r.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--set", "train.lr=[1e-3, 1e-4]", "--set", "eval.sets=[\"es-test\"]", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("skipped (finished earlier)").count(), 6, "{}", stderr(&o));
    assert_eq!(std::fs::metadata(out.join("es-native-lr1e-3/run.json")).unwrap().modified().unwrap(), mtime);
    assert_eq!(std::fs::read(out.join("es-native-lr1e-3/adapter/adapter_model.safetensors")).unwrap(), before);

    // Other settings in the same folder are refused, not mixed in.
    let o = trainer(&["run", r.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--set", "train.max_steps=2", "--set", "eval.sets=[\"es-test\"]"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("holds a finished run with other settings"), "{}", stderr(&o));

    // `trainer report` rebuilds the same table from the folder.
    let csv_before = std::fs::read_to_string(out.join("report.csv")).unwrap();
    std::fs::remove_file(out.join("report.csv")).unwrap();
    let o = trainer(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The refused run (max_steps = 2) recorded nothing over the finished ones.
    assert_eq!(std::fs::read_to_string(out.join("report.csv")).unwrap(), csv_before);
}

fn wait_for(path: &Path, child: &mut std::process::Child, what: &str) {
    let started = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {what}");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no {what} after 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn adapters_equal(a: &Path, b: &Path) {
    let read = |d: &Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(read(a) == read(b), "adapters of {} and {} differ", a.display(), b.display());
}

fn losses(run: &Path) -> Vec<(String, u64, f64)> {
    lines(&run.join("metrics.jsonl")).iter().map(|l| (l["kind"].as_str().unwrap().to_string(), l["step"].as_u64().unwrap(), l["loss"].as_f64().unwrap())).collect()
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_bit_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    // 12 steps with a checkpoint after every step, evaluations every 4; the native condition only.
    let r = recipe(dir.path(), "checkpoint_every = 1\nshuffle = true");
    let set = ["--set", "train.max_steps=12", "--set", "eval.every=4", "--set", "conditions=[{name = \"es-native\", sources = [\"es-native\"]}]"];
    let whole = dir.path().join("whole");
    let mut args = vec!["run", r.to_str().unwrap(), "--quiet", "--output-dir", whole.to_str().unwrap()];
    args.extend(set);
    let o = trainer(&args);
    assert!(o.status.success(), "{}", stderr(&o));

    let cut = dir.path().join("cut");
    let mut args = vec!["run", r.to_str().unwrap(), "--quiet", "--output-dir", cut.to_str().unwrap()];
    args.extend(set);
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer")).args(&args).stderr(Stdio::null()).spawn().unwrap();
    let run = cut.join("es-native-lr1e-3");
    // Kill it once a few steps are checkpointed, mid-run.
    wait_for(&run.join("checkpoint.safetensors"), &mut child, "a checkpoint");
    let started = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0) < 5 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!run.join("run.json").exists(), "killed before the end: the test must interrupt a run");
    let o = trainer(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming after step"), "{}", stderr(&o));
    adapters_equal(&whole.join("es-native-lr1e-3"), &run);
    assert_eq!(losses(&whole.join("es-native-lr1e-3")), losses(&run), "the same losses, step for step, evaluations included");
    let (a, b) = (json(&whole.join("es-native-lr1e-3/run.json")), json(&run.join("run.json")));
    assert_eq!((a["best"].clone(), a["heldout"].clone()), (b["best"].clone(), b["heldout"].clone()));
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_130_then_resumes() {
    interrupted_run_saves_and_resumes("-INT");
}

/// SIGTERM is what Slurm and Kubernetes send before they kill: the same as Ctrl-C.
#[test]
fn sigterm_saves_a_checkpoint_like_ctrl_c() {
    interrupted_run_saves_and_resumes("-TERM");
}

fn interrupted_run_saves_and_resumes(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "checkpoint_every = 0");
    let out = dir.path().join("out");
    let args = ["run", r.to_str().unwrap(), "--quiet", "--output-dir", out.to_str().unwrap(), "--set", "train.max_steps=20", "--set", "eval.every=100"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).stderr(Stdio::piped()).spawn().unwrap();
    let run = out.join("es-native-lr1e-3");
    wait_for(&run.join("metrics.jsonl"), &mut child, "a metrics file");
    let started = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0) < 2 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let kill = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("interrupted: es-native-lr1e-3 saved its state after step"), "{}", stderr(&o));
    assert!(run.join("checkpoint.safetensors").is_file(), "checkpoint_every = 0 still checkpoints on Ctrl-C");
    assert!(!run.join("run.json").exists());
    let o = trainer(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming after step"), "{}", stderr(&o));
    assert_eq!(json(&run.join("run.json"))["status"], "ok");
}

#[test]
fn a_diverging_run_is_recorded_and_the_sweep_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let out = dir.path().join("out");
    // lr 1e30 sends the weights to infinity after the first update: the loss of step 2 is not finite.
    let o = trainer(&["run", r.to_str().unwrap(), "--quiet", "--output-dir", out.to_str().unwrap(), "--set", "train.lr=[1e30, 1e-3]", "--set", "train.max_steps=3", "--set", "train.max_grad_norm=0"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("3 of 6 runs failed") && e.contains("diverged"), "{e}");
    let failed = json(&out.join("es-native-lr1e30/run.json"));
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().unwrap().contains("diverged"), "{failed}");
    assert_eq!(json(&out.join("es-native-lr1e-3/run.json"))["status"], "ok");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("6 runs: 3 finished, 3 failed") && report.contains("## Failed runs"), "{report}");
}

fn plan(args: &[&str]) -> Value {
    let mut all = vec!["plan"];
    all.extend(args);
    all.push("--json");
    let o = trainer(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn names(plan: &Value) -> Vec<String> {
    plan["runs"].as_array().unwrap().iter().map(|r| r["run"].as_str().unwrap().to_string()).collect()
}

#[test]
fn the_grid_spans_models_lrs_and_seeds_and_shards_split_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let tiny = repo().join("data/tiny-llama");
    let p = plan(&[r.to_str().unwrap(), "--set", "seeds=[1, 2]", "--set", "train.lr=[1e-4, 1e-6]"]);
    assert_eq!(p["runs"].as_array().unwrap().len(), 3 * 2 * 2);
    assert_eq!(names(&p)[..2], ["es-native-lr1e-4-seed1", "es-native-lr1e-4-seed2"]);
    // [[models]] instead of [model]: the model's name leads the run name.
    let text = std::fs::read_to_string(&r).unwrap();
    let start = text.find("[model]").unwrap();
    let end = text.find("[lora]").unwrap();
    // The same model twice would be refused: b is a second copy (a link) of it.
    let copy = dir.path().join("tiny-copy");
    std::os::unix::fs::symlink(&tiny, &copy).unwrap();
    let two = format!("{}[[models]]\npath = \"{t}\"\nname = \"a\"\n[[models]]\npath = \"{c}\"\nname = \"b\"\n{}", &text[..start], &text[end..], t = tiny.display(), c = copy.display());
    let r2 = dir.path().join("two.toml");
    std::fs::write(&r2, two).unwrap();
    let p = plan(&[r2.to_str().unwrap()]);
    let all = names(&p);
    assert_eq!(all.len(), 2 * 3);
    assert_eq!(all[0], "a-es-native-lr1e-3");
    assert_eq!(p["runs"][3]["model"], "b");
    assert_eq!(p["runs"][0]["steps"], 6);
    assert_eq!(p["runs"][0]["origins"], serde_json::json!(["native"]));
    // Shards 0/4..3/4 partition the grid.
    let mut sharded: Vec<String> = (0..4).flat_map(|i| names(&plan(&[r2.to_str().unwrap(), "--shard", &format!("{i}/4")]))).collect();
    sharded.sort();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(sharded, sorted);
    assert_eq!(names(&plan(&[r2.to_str().unwrap(), "--shard", "1/4"])), [all[1].clone(), all[5].clone()]);
}

#[test]
fn command_line_mistakes_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let err = |args: &[&str]| {
        let mut all = vec!["plan", r.to_str().unwrap()];
        all.extend(args);
        let o = trainer(&all);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        stderr(&o)
    };
    let e = err(&["--set", "train.bogus=1"]);
    assert!(e.contains("unknown field `bogus`") && e.contains("--set train.bogus=1"), "{e}");
    assert!(err(&["--set", "train.epochs"]).contains("write key=value"));
    assert!(err(&["--set", "eval.keep=sometimes"]).contains("[eval] keep must be"));
    assert!(err(&["--set", "eval.heldout_fraction=0"]).contains("compares held-out losses"));
    assert!(err(&["--shard", "4/4"]).contains("0 ≤ i < n"));
    assert!(err(&["--set", "seeds=[1, 1]"]).contains("distinct seeds"));
    assert!(err(&["--set", "eval.sets=[\"es-native\"]"]).contains("`es-native` is trained on by condition `es-native`"));
    assert!(err(&["--set", "eval.sets=[\"fr\"]"]).contains("`fr` is not a [[sources]] name"));
    let o = trainer(&["report", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("holds no runs"), "{}", stderr(&o));
}

/// Writes `n` small records in `format` at `path`, ids aligned across files ("r0", "r1", …) or, with
/// `id_languages`, Aya-style ids carrying a language part; without ids at all when `with_ids` is false (a source
/// with `id_from = "index"`, aligned by position).
fn synthetic(path: &Path, format: trainer::data::format::Format, n: usize, id_parts: &[String], with_ids: bool) {
    use trainer::data::format::Format;
    let records: Vec<Value> = (0..n)
        .map(|i| {
            let id = if id_parts.is_empty() { format!("r{i}") } else { format!("aya_{}_{i}", id_parts[i % id_parts.len()]) };
            let (q, a) = (format!("question {i}?"), format!("answer {i}."));
            let mut r = match format {
                Format::Alpaca => serde_json::json!({ "instruction": q, "input": "", "output": a, "id": id }),
                Format::Lima => serde_json::json!({ "conversations": [q, a, "and then?", "more."], "id": id }),
                Format::UltraLink => serde_json::json!({ "data": [q, a], "id": id }),
                other => panic!("no synthetic records for {other:?}"),
            };
            if !with_ids {
                r.as_object_mut().unwrap().remove("id");
            }
            r
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = if path.extension().is_some_and(|e| e == "jsonl") {
        records.iter().map(|r| r.to_string() + "\n").collect::<String>()
    } else {
        serde_json::to_string(&records).unwrap()
    };
    std::fs::write(path, text).unwrap();
}

#[test]
fn every_shipped_recipe_plans() {
    let tiny = repo().join("data/tiny-llama");
    let tiny = tiny.to_str().unwrap();
    // Each recipe with what its grid must hold: (recipe, extra arguments, runs with --model, conditions).
    let cases: [(&str, &[&str], usize, usize); 5] = [
        ("quickstart", &[], 6, 3),
        ("native-vs-translated", &[], 30, 15),
        ("multilingual-8", &[], 6, 3),
        // Their judged and scored [[evals]] resolve against our samples (plan checks every file exists).
        ("ultralink", &["--benchmarks-root", "data/benchmarks"], 11, 11),
        // Nine compositions on each of Lima-X, Bactrian-X and Bactrian-X small, one seed.
        ("polyglot-x", &["--benchmarks-root", "data/benchmarks"], 27, 27),
    ];
    for (name, extra, runs, conditions) in cases {
        let path = repo().join(format!("recipes/{name}.toml"));
        let recipe = trainer::recipe::Recipe::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let data = tempfile::tempdir().unwrap();
        let expanded = trainer::data::pipeline::expand_with_root(&recipe, Some(data.path())).unwrap();
        if name != "quickstart" {
            for s in &expanded.sources {
                synthetic(&s.path, s.format, 60, &s.id_languages.keys().cloned().collect::<Vec<_>>(), !s.filter.id_from_index);
            }
        }
        assert_eq!(expanded.conditions.len(), conditions, "{name}");
        let mut args = vec![path.to_str().unwrap()];
        if name != "quickstart" {
            args.extend(["--data-root", data.path().to_str().unwrap(), "--model", tiny, "--device", "cpu"]);
        }
        // The study's [[evals]] resolve against our samples, laid out as the releases are.
        let samples = repo().join("data/benchmarks");
        if name == "native-vs-translated" {
            args.extend(["--benchmarks-root", samples.to_str().unwrap()]);
        }
        args.extend(extra);
        let p = plan(&args);
        assert_eq!(p["runs"].as_array().unwrap().len(), runs, "{name}: {p}");
        for r in p["runs"].as_array().unwrap() {
            assert!(r["train_examples"].as_u64().unwrap() > 0 && r["steps"].as_u64().unwrap() > 0, "{name}: {r}");
        }
        if name == "multilingual-8" {
            assert_eq!(p["runs"][0]["languages"].as_object().unwrap().len(), 8, "languages read from the ids: {}", p["runs"][0]);
        }
        let by = |c: &str| p["runs"].as_array().unwrap().iter().find(|r| r["condition"] == c).unwrap_or_else(|| panic!("{name}: no run of {c}")).clone();
        let all = |r: &Value| r["train_examples"].as_u64().unwrap() + r["heldout_examples"].as_u64().unwrap();
        if name == "polyglot-x" {
            // Lima-X's synthetic files carry no ids (id_from = "index" aligns them by position), Bactrian-X's do.
            for data in ["lima-x", "bactrian-x", "bactrian-x-small"] {
                let mono = by(&format!("{data}-en-mono"));
                for (mix, n) in [("ENDEFRITES", 5), ("DEFRITES", 4)] {
                    let (parallel, sampled) = (by(&format!("{data}-{mix}-parallel")), by(&format!("{data}-{mix}-sampled")));
                    assert_eq!(parallel["train_examples"].as_u64().unwrap(), n * sampled["train_examples"].as_u64().unwrap(), "{data} {mix}");
                    assert_eq!(sampled["languages"].as_object().unwrap().len(), n as usize, "{data} {mix}: {sampled}");
                    assert_eq!(parallel["languages"].as_object().unwrap().contains_key("en"), n == 5);
                    assert_eq!(mono["train_examples"], sampled["train_examples"], "{data} {mix}");
                }
            }
        }
        if name == "ultralink" {
            // The release is already pruned: nothing is dropped again, all four files of a language are trained on.
            assert_eq!(all(&by("en-specific+agnostic")), 4 * all(&by("en-specific")));
            assert_eq!(all(&by("all-languages")), 5 * 4 * 60);
        }
    }
}

#[test]
fn the_study_recipe_plans_on_the_released_data() {
    let Some(shared) = trainer::testing::shared("data/good-data-or-bad-eval") else { return };
    let path = repo().join("recipes/native-vs-translated.toml");
    let tiny = repo().join("data/tiny-llama");
    let samples = repo().join("data/benchmarks");
    let p = plan(&[path.to_str().unwrap(), "--data-root", shared.to_str().unwrap(), "--model", tiny.to_str().unwrap(), "--benchmarks-root", samples.to_str().unwrap()]);
    let runs = p["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 15 * 2);
    // Every origin is cleaned alike (the Cohere translator's chatter): what each source loses, as the recipe's
    // comments state; the sets are taken whole, so each condition is its source's usable records.
    let dropped = |source: &str| p["dropped"][source].as_object().unwrap_or_else(|| panic!("{source}: {}", p["dropped"])).values().map(|n| n.as_u64().unwrap()).sum::<u64>();
    for (lang, native) in [("es", 3854), ("ru", 423), ("zh", 3944)] {
        for origin in ["native", "google", "cohere", "google-rt", "cohere-rt"] {
            let name = format!("{lang}-{origin}");
            // Google's es and zh translations hold three empty records each (skipped as bad records).
            let bad = if origin == "google" && lang != "ru" { 3 } else { 0 };
            let r = runs.iter().find(|r| r["condition"] == name).unwrap();
            let total = r["train_examples"].as_u64().unwrap() + r["heldout_examples"].as_u64().unwrap();
            assert_eq!(total, native - bad - dropped(&name), "{name}: the usable records, 5% held out");
        }
    }
    assert_eq!([("es-cohere", 3), ("es-cohere-rt", 2), ("ru-cohere-rt", 1), ("zh-cohere", 4)].map(|(s, _)| dropped(s)), [3, 2, 1, 4]);
    let total_dropped: u64 = p["dropped"].as_object().unwrap().keys().map(|s| dropped(s)).sum();
    assert_eq!(total_dropped, 10, "nothing else is dropped: {}", p["dropped"]);
    assert_eq!(p["bad_records"]["count"], 6);
    // The held-out split is keyed by (data seed, id): native and its round-trip translations (ids aligned by
    // id_strip) hold out the same ids.
    let recipe = trainer::recipe::Recipe::load(&path).unwrap();
    let expanded = trainer::data::pipeline::expand_with_root(&recipe, Some(&shared)).unwrap();
    let data = trainer::data::pipeline::mixes(&recipe, &expanded).unwrap();
    let mixes = &data.conditions;
    let held = |name: &str| -> std::collections::BTreeSet<String> {
        mixes.iter().find(|m| m.0 == name).unwrap().2.iter().map(|r| r.provenance.source_id.clone().unwrap()).collect()
    };
    for lang in ["es", "ru", "zh"] {
        let native = held(&format!("{lang}-native"));
        assert_eq!(native.len(), [("es", 193), ("ru", 21), ("zh", 197)].iter().find(|x| x.0 == lang).unwrap().1);
        assert_eq!(held(&format!("{lang}-google-rt")), native, "{lang}: native and Google round-trip hold out the same ids");
        // Cohere's round trip lost a few records to cleaning (es 2, ru 1): every id native holds out that it
        // still has, it holds out too.
        let m = mixes.iter().find(|m| m.0 == format!("{lang}-cohere-rt")).unwrap();
        let all: std::collections::BTreeSet<String> = m.1.iter().chain(&m.2).map(|r| r.provenance.source_id.clone().unwrap()).collect();
        let crt = held(&format!("{lang}-cohere-rt"));
        assert!(native.iter().filter(|id| all.contains(*id)).all(|id| crt.contains(id)), "{lang}-cohere-rt");
        if lang == "zh" {
            assert_eq!(crt, native, "zh: nothing dropped, the same ids");
        }
        // Google's and Cohere's translations of the same English records hold out the same ids as each other.
        let (g, c) = (held(&format!("{lang}-google")), held(&format!("{lang}-cohere")));
        assert!(g.intersection(&c).count() + 2 >= g.len(), "{lang}: {} of {} shared", g.intersection(&c).count(), g.len());
        // The language's shared dev set: the native records of exactly the ids native holds out, which no
        // condition trains on (after id_strip: its round trips' translations of them included); every condition
        // of the language selects on it.
        let k = expanded.dev_sets.iter().position(|d| d.name == format!("{lang}-dev")).unwrap();
        assert_eq!(expanded.dev_sets[k].source, format!("{lang}-native"));
        let dev: std::collections::BTreeSet<String> = data.dev_sets[k].iter().map(|r| r.provenance.source_id.clone().unwrap()).collect();
        assert_eq!(dev, native, "{lang}-dev: the ids native holds out");
        assert!(data.dev_sets[k].iter().all(|r| r.provenance.source == format!("{lang}-native") && r.provenance.language.as_deref() == Some(lang)));
        for m in mixes {
            assert!(m.1.iter().all(|r| !dev.contains(r.provenance.source_id.as_ref().unwrap())), "{}: trains on a record of {lang}-dev", m.0);
        }
        for origin in ["native", "google", "cohere", "google-rt", "cohere-rt"] {
            let c = expanded.conditions.iter().position(|c| c.name == format!("{lang}-{origin}")).unwrap();
            assert_eq!(expanded.select_on[c], [format!("{lang}-dev")]);
            let dev_held = runs.iter().find(|r| r["condition"] == format!("{lang}-{origin}")).unwrap()["dev_heldout_examples"].as_u64().unwrap() as usize;
            assert_eq!(dev_held, if origin.ends_with("rt") || origin == "native" { dev.len() } else { 0 }, "{lang}-{origin}");
        }
        let set = p["sets"].as_array().unwrap().iter().find(|s| s["name"] == format!("{lang}-dev")).unwrap();
        let ids: std::collections::BTreeSet<String> = set["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
        assert_eq!((ids, set["dev_of"].as_str()), (dev, Some(format!("{lang}-native").as_str())), "plan --json lists the dev set's ids");
    }
}

#[test]
fn json_log_mode_prints_one_event_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let out = dir.path().join("out");
    let o = trainer(&["run", r.to_str().unwrap(), "--log-format", "json", "--output-dir", out.to_str().unwrap(), "--set", "train.max_steps=2", "--set", "conditions=[{name = \"es-native\", sources = [\"es-native\"]}]"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let events: Vec<Value> = String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).filter(|k| *k != "message").collect();
    assert_eq!(kinds, ["run_start", "step", "step", "eval", "run_end"]);
    let step = events.iter().find(|e| e["event"] == "step").unwrap();
    assert!(step["metrics"]["loss"].is_number() && step["tokens_per_s"].is_number(), "{step}");
    assert_eq!(events.iter().find(|e| e["event"] == "run_end").unwrap()["summary"]["status"], "ok");
}

#[test]
fn multi_turn_conversations_train_with_a_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = repo().join("tests/recipes/chat.toml");
    let p = plan(&[recipe.to_str().unwrap()]);
    let run = &p["runs"][0];
    // 16 conversations, a quarter held out per language.
    assert_eq!((run["train_examples"].as_u64(), run["heldout_examples"].as_u64()), (Some(12), Some(4)), "{run}");
    assert_eq!(run["languages"], serde_json::json!({ "en": 6, "es": 6 }));
    let o = trainer(&["run", recipe.to_str().unwrap(), "--quiet", "--output-dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = json(&dir.path().join("chat-lr1e-3/run.json"));
    assert_eq!(s["status"], "ok");
    let langs = s["heldout"]["languages"].as_object().unwrap();
    assert_eq!(langs.keys().collect::<Vec<_>>(), ["en", "es"], "held-out loss per language");
    assert!(langs.values().all(|l| l["loss"].as_f64().unwrap().is_finite() && l["examples"] == 2));
}

/// `--gpus` hands the runs out one at a time, a child `trainer run --only RUN --device cuda:G` each, and reports
/// over all of them. This build has no CUDA, so every child fails — naming the device it was given.
#[test]
fn gpus_hand_out_runs_one_child_per_device() {
    if cfg!(feature = "cuda") {
        return; // on a CUDA build the runs would train; this checks the hand-out on CPU builds
    }
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let out = dir.path().join("out");
    let o = trainer(&["run", r.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--gpus", "2,5", "--set", "train.lr=[1e-3, 1e-4]"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("6 run(s) did not succeed"), "{}", stderr(&o));
    let mut used = std::collections::BTreeSet::new();
    for run in ["es-native-lr1e-3", "es-native-lr1e-4", "es-translated-lr1e-3", "es-translated-lr1e-4", "es-round-trip-lr1e-3", "es-round-trip-lr1e-4"] {
        let e = json(&out.join(run).join("run.json"))["error"].as_str().unwrap().to_string();
        let gpu = ["cuda:2", "cuda:5"].into_iter().find(|g| e.contains(&format!("device `{g}`"))).unwrap_or_else(|| panic!("{run}: {e}"));
        used.insert(gpu);
    }
    assert_eq!(used.len(), 2, "both GPUs took runs");
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("6 runs: 0 finished, 6 failed"));
    let o = trainer(&["run", r.to_str().unwrap(), "--gpus", "0", "--device", "cpu"]);
    assert!(stderr(&o).contains("drop --device"), "{}", stderr(&o));
    // --only picks runs by name, and names outside the grid are refused.
    let p = plan(&[r.to_str().unwrap(), "--only", "es-translated-lr1e-3"]);
    assert_eq!(names(&p), ["es-translated-lr1e-3"]);
    let o = trainer(&["plan", r.to_str().unwrap(), "--only", "es-native-lr9"]);
    assert!(stderr(&o).contains("--only es-native-lr9: no such run"), "{}", stderr(&o));
}

#[test]
fn tests_that_need_shared_material_skip_without_it_and_fail_where_it_is_required() {
    // This binary's own test of the released data, run in a child with ../shared pointed away.
    let me = std::env::current_exe().unwrap();
    let run = |require: &str| {
        Command::new(&me)
            .args(["--exact", "the_study_recipe_plans_on_the_released_data", "--nocapture"])
            .env("TRAINER_SHARED", "/nonexistent/shared")
            .env("TRAINER_REQUIRE_SHARED", require)
            .output()
            .unwrap()
    };
    let o = run("0");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipped the_study_recipe_plans_on_the_released_data: /nonexistent/shared/data/good-data-or-bad-eval not found"), "{}", stderr(&o));
    let o = run("1");
    assert!(!o.status.success(), "TRAINER_REQUIRE_SHARED=1 (CI) turns a skip into a failure");
}

#[test]
fn select_on_keeps_the_best_on_a_shared_set_and_cleaning_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let text = std::fs::read_to_string(&r).unwrap();
    // es-test is the shared set selection is made on; the translated source is cleaned (its "2" records go).
    let text = text.replace("keep = \"best\"\n", "keep = \"best\"\nsets = [\"es-test\"]\nselect_on = \"es-test\"\n").replacen("origin = \"translated\"\n", "origin = \"translated\"\ndrop_if = ['2']\ndedup = true\n", 1);
    std::fs::write(&r, &text).unwrap();
    let rs = r.to_str().unwrap();
    let only = ["--set", "conditions=[{name = \"es-native\", sources = [\"es-native\"]}, {name = \"es-translated\", sources = [\"es-translated\"]}]"];
    let p = plan(&[&[rs][..], &only[..]].concat());
    let dropped = &p["dropped"]["es-translated"];
    assert!(dropped["drop_if: 2"].as_u64().unwrap() > 0, "{}", p["dropped"]);
    assert!(dropped.get("dedup").is_some() && p["dropped"].get("es-native").is_none(), "{}", p["dropped"]);
    let out = dir.path().join("out");
    let o = trainer(&[&["run", rs, "--quiet", "--output-dir", out.to_str().unwrap()][..], &only[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let s = json(&out.join("es-native-lr1e-3/run.json"));
    assert_eq!(s["selected_on"], "es-test");
    // The kept evaluation is the one with the lowest loss on es-test, not on the held-out share.
    let evals: Vec<Value> = std::fs::read_to_string(out.join("es-native-lr1e-3/metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|l| l["kind"] == "eval").collect();
    let best = evals.iter().min_by(|a, b| a["sets"]["es-test"]["loss"].as_f64().unwrap().total_cmp(&b["sets"]["es-test"]["loss"].as_f64().unwrap())).unwrap();
    assert_eq!(s["best"]["step"], best["step"]);
    assert_eq!(s["best"]["loss"], best["sets"]["es-test"]["loss"]);
    let t = json(&out.join("es-translated-lr1e-3/run.json"));
    assert!(t["dropped"]["es-translated"]["drop_if: 2"].as_u64().unwrap() > 0, "{t}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains(&format!("| es-native | {} | es-test |", s["truncated_examples"])) && md.contains("| es-translated | `drop_if: 2` |"), "{md}");

    // Mistakes: a set that is not in [eval] sets, {lang} for a condition without a language, keep != best.
    for (set, want) in [("select_on = \"es-dev\"", "[eval] select_on: `es-dev`"), ("select_on = [\"{lang}-test\"]", "has no language to put for {lang}"), ("select_on = 3", "select_on must be a set name")] {
        std::fs::write(&r, text.replace("select_on = \"es-test\"", set)).unwrap();
        let o = trainer(&["plan", rs]);
        assert!(!o.status.success() && stderr(&o).contains(want), "{set}: {}", stderr(&o));
    }
    std::fs::write(&r, text.replace("keep = \"best\"", "keep = \"last\"")).unwrap();
    assert!(stderr(&trainer(&["plan", rs])).contains("select_on chooses the evaluation that keep = \"best\" keeps"));
    std::fs::write(&r, text.replace("drop_if = ['2']", "drop_if = ['(2']")).unwrap();
    let e = stderr(&trainer(&["plan", rs]));
    assert!(e.contains("[[sources]] `es-translated`") && e.contains("`(2`"), "{e}");
}

/// A shared dev set: every condition of the language is selected on the same native records, none trains on
/// them (the round trip holds its translations of them out, by id), and `keep = "best"` judges by the dev set,
/// not by the condition's own held-out share.
#[test]
fn dev_sets_select_every_condition_on_the_same_native_text_that_none_trains_on() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    // 20% of es-native (8 records) as the dev set, 10% of each condition held out as before.
    let text = std::fs::read_to_string(&r).unwrap().replace("keep = \"best\"\n", "keep = \"best\"\nselect_on = \"{lang}-dev\"\n")
        + "[[dev_sets]]\nname = \"{lang}-dev\"\nsource = \"{lang}-native\"\nlanguages = [\"es\"]\nfraction = 0.2\n";
    // select_on's {lang} needs conditions expanded with languages.
    let text = text.replace("name = \"es-native\"\nsources = [\"es-native\"]", "name = \"{lang}-native\"\nsources = [\"{lang}-native\"]\nlanguages = [\"es\"]")
        .replace("name = \"es-translated\"\nsources = [\"es-translated\"]", "name = \"{lang}-translated\"\nsources = [\"{lang}-translated\"]\nlanguages = [\"es\"]")
        .replace("name = \"es-round-trip\"\nsources = [\"es-round-trip\"]", "name = \"{lang}-round-trip\"\nsources = [\"{lang}-round-trip\"]\nlanguages = [\"es\"]");
    std::fs::write(&r, &text).unwrap();
    let rs = r.to_str().unwrap();
    let p = plan(&[rs]);
    let sets = p["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 1, "{sets:?}");
    let dev = &sets[0];
    assert_eq!((dev["name"].as_str(), dev["dev_of"].as_str(), dev["examples"].as_u64(), dev["languages"]["es"].as_u64()), (Some("es-dev"), Some("es-native"), Some(8), Some(8)));
    let dev_ids: std::collections::BTreeSet<&str> = dev["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
    assert_eq!(dev_ids.len(), 8);
    assert!(dev_ids.iter().all(|i| i.starts_with("es-n")), "native ids: {dev_ids:?}");
    let run = |c: &str| p["runs"].as_array().unwrap().iter().find(|r| r["condition"] == c).unwrap().clone();
    // Native and its round trip (the same ids) hold out all 8, besides their own 10% (the first 4 in the same
    // keyed order: inside the 8); the translation (other ids) holds out none of them.
    for (c, dev_held, held) in [("es-native", 8, 8), ("es-round-trip", 8, 8), ("es-translated", 0, 4)] {
        let r = run(c);
        assert_eq!((r["dev_heldout_examples"].as_u64(), r["heldout_examples"].as_u64(), r["train_examples"].as_u64()), (Some(dev_held), Some(held), Some(40 - held)), "{c}: {r}");
        assert_eq!(r["selected_on"], "es-dev");
    }
    let o = trainer(&["plan", rs]);
    let text_plan = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text_plan.contains("set es-dev: 8 examples (es 8)") && text_plan.contains("es-native 8, es-round-trip 8, es-translated 0"), "{text_plan}");

    let out = dir.path().join("out");
    let o = trainer(&["run", rs, "--quiet", "--output-dir", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut dev_results = Vec::new();
    let mut data_rows = Vec::new();
    for c in ["es-native", "es-translated", "es-round-trip"] {
        let s = json(&out.join(format!("{c}-lr1e-3/run.json")));
        assert_eq!(s["selected_on"], "es-dev", "{c}");
        data_rows.push(format!("| {c} | {} | es-dev |", s["truncated_examples"]));
        let evals: Vec<Value> = lines(&out.join(format!("{c}-lr1e-3/metrics.jsonl"))).into_iter().filter(|l| l["kind"] == "eval").collect();
        assert_eq!(evals.len(), 2);
        // The same 8 records for every condition: the same examples and target tokens at every evaluation.
        for e in &evals {
            let d = &e["sets"]["es-dev"];
            dev_results.push((d["examples"].as_u64().unwrap(), d["tokens"].as_u64().unwrap()));
        }
        let dev_loss = |e: &Value| e["sets"]["es-dev"]["loss"].as_f64().unwrap();
        let best = evals.iter().min_by(|a, b| dev_loss(a).total_cmp(&dev_loss(b))).unwrap();
        assert_eq!(s["best"]["step"], best["step"], "{c}: the evaluation with the lowest dev loss is kept");
        assert_eq!(s["best"]["loss"].as_f64(), Some(dev_loss(best)), "{c}: best loss is the dev set's");
        if c == "es-translated" {
            // Its own held-out share is translated text: selecting on it would give another loss.
            assert_ne!(best["loss"].as_f64(), Some(dev_loss(best)), "the held-out share is not the dev set");
        }
    }
    assert!(dev_results.windows(2).all(|w| w[0] == w[1]) && dev_results[0].0 == 8, "{dev_results:?}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| es-dev (es) |") && data_rows.iter().all(|row| md.contains(row.as_str())), "{md}");

    // Mistakes, each one error naming the dev set: an unknown source, a name already taken, no share, a bad
    // share, an unknown key (a dev set without ids: src/data/devset.rs).
    for (from, to, want) in [
        ("source = \"{lang}-native\"", "source = \"{lang}-natve\"", "[[dev_sets]] `es-dev` is drawn from source `es-natve`, which no [[sources]] defines"),
        ("name = \"{lang}-dev\"", "name = \"{lang}-test\"", "[[dev_sets]] name `es-test` is already a source"),
        ("fraction = 0.2\n", "", "__keep__"),
        ("fraction = 0.2", "fraction = 1.5", "[[dev_sets]] `{lang}-dev`: fraction must be in (0, 1), not 1.5"),
        ("fraction = 0.2", "fraction = 0.2\nsize = 3", "unknown field `size`"),
        ("max_seq_len = 128", "max_seq_len = 8", "[eval] select_on: set `es-dev` has no target token at max_seq_len 8"),
    ] {
        if want == "__keep__" {
            // Without its own fraction a dev set takes heldout_fraction; with neither it is an error.
            let t = text.replace(from, to).replace("heldout_fraction = 0.1\n", "");
            std::fs::write(&r, t).unwrap();
            let e = stderr(&trainer(&["plan", rs]));
            assert!(e.contains("[[dev_sets]] `{lang}-dev`: give fraction, or set [eval] heldout_fraction"), "{e}");
            continue;
        }
        std::fs::write(&r, text.replace(from, to)).unwrap();
        let o = trainer(&["plan", rs]);
        assert!(!o.status.success() && stderr(&o).contains(want), "{to}: {}", stderr(&o));
    }
}

/// `[[evals]]` paths resolve against `--benchmarks-root` (then the recipe's `benchmarks_root`, then its folder):
/// a recipe naming its benchmarks by file name alone is planned and scored on the files of the folder given.
#[test]
fn benchmarks_root_resolves_evals_paths() {
    let dir = tempfile::tempdir().unwrap();
    let r = repo();
    let text = format!(
        r#"name = "b"
output_dir = "out"
[model]
path = "{tiny}"
[train]
lr = [1e-3]
max_steps = 1
batch_size = 4
max_seq_len = 128
[[sources]]
name = "es"
path = "{samples}/es-native.json"
language = "es"
[[evals]]
name = "mc-es"
task = "mc"
path = "mc-es.jsonl"
dev = "mc-es-dev.jsonl"
shots = 1
[[evals]]
name = "qa-es"
task = "qa"
path = "qa-es.jsonl"
max_new_tokens = 4
"#,
        tiny = r.join("data/tiny-llama").display(),
        samples = r.join("data/samples").display(),
    );
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(&recipe, &text).unwrap();
    let recipe = recipe.to_str().unwrap();
    let benchmarks = r.join("data/benchmarks");
    let benchmarks = benchmarks.to_str().unwrap();
    // Without a root the paths resolve against the recipe's folder, which has no benchmarks: plan says so.
    let o = trainer(&["plan", recipe]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("[[evals]] `mc-es`: no file") && stderr(&o).contains("--benchmarks-root"), "{}", stderr(&o));
    assert!(trainer(&["plan", recipe, "--benchmarks-root", benchmarks]).status.success());
    // The recipe key does the same, relative to the recipe's folder.
    let keyed = dir.path().join("keyed.toml");
    std::fs::write(&keyed, format!("benchmarks_root = {:?}\n{text}", pathdiff(dir.path(), &r.join("data/benchmarks")))).unwrap();
    let o = trainer(&["plan", keyed.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A run scores both benchmarks from there.
    let out = dir.path().join("out");
    let o = trainer(&["run", recipe, "--benchmarks-root", benchmarks, "--output-dir", out.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = json(&out.join("b-lr1e-3/run.json"));
    assert!(run["benchmarks"]["mc-es"]["acc"].is_number() && run["benchmarks"]["qa-es"]["exact_match"].is_number(), "{run}");
    assert_eq!(lines(&out.join("b-lr1e-3/benchmarks/mc-es.jsonl")).len(), lines(&r.join("data/benchmarks/mc-es.jsonl")).len());
}

/// `to` relative to `from` (both absolute, `from` a temporary folder): up to the root, then down.
fn pathdiff(from: &Path, to: &Path) -> String {
    let ups = from.components().count() - 1;
    format!("{}{}", "../".repeat(ups), to.strip_prefix("/").unwrap().display())
}
