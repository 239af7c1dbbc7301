use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use trainer::data::format::Format;
use trainer::lora::Adapter;
use trainer::session::Session;
use trainer::sweep::progress::Mode;
use trainer::sweep::Options;

#[derive(Parser)]
#[command(name = "trainer", version, about = "LoRA fine-tuning for multilingual instruction-tuning research")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `run` and `plan` take besides the recipe.
#[derive(clap::Args, Clone)]
struct RecipeArgs {
    /// The recipe (TOML).
    recipe: PathBuf,
    /// Resolve source paths against this folder instead of the recipe's data_root.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Resolve [[evals]] paths (path, dev) against this folder instead of the recipe's benchmarks_root.
    #[arg(long)]
    benchmarks_root: Option<PathBuf>,
    /// Change a recipe value: --set train.epochs=1 --set 'train.lr=[1e-4]' (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Train this model instead of the recipe's: a directory (relative to the working directory) or a hub id.
    #[arg(long)]
    model: Option<String>,
    /// Put every model on this device: cpu, cuda, cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Only runs i, i+n, i+2n, … of the grid (0 ≤ i < n), e.g. --shard $SLURM_ARRAY_TASK_ID/8.
    #[arg(long, value_name = "i/n")]
    shard: Option<String>,
    /// Only this run of the grid (repeatable; names as `trainer plan` shows them).
    #[arg(long, value_name = "RUN")]
    only: Vec<String>,
}

impl RecipeArgs {
    fn options(&self, output_dir: Option<PathBuf>) -> Result<Options> {
        Ok(Options {
            output_dir,
            data_root: self.data_root.clone(),
            benchmarks_root: self.benchmarks_root.clone(),
            overrides: self.overrides.clone(),
            model: self.model.clone(),
            device: self.device.clone(),
            shard: self.shard.as_deref().map(trainer::sweep::parse_shard).transpose()?,
            only: self.only.clone(),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train every run of a recipe (models × conditions × learning rates × seeds), then write the report.
    Run {
        #[command(flatten)]
        args: RecipeArgs,
        /// Write the runs here instead of the recipe's output_dir.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// No progress bars: one line per run.
        #[arg(long)]
        quiet: bool,
        /// "text" (default) or "json": one JSON event per line on stdout (run_start, step, eval, run_end, ...).
        #[arg(long, default_value = "text")]
        log_format: String,
        /// Train on these CUDA devices, one run per GPU at a time, each GPU taking the next run when its current
        /// one ends, e.g. --gpus 0,1,2,3.
        #[arg(long, value_delimiter = ',')]
        gpus: Vec<usize>,
    },
    /// Expand a recipe without training: runs, conditions and data sizes.
    Plan {
        #[command(flatten)]
        args: RecipeArgs,
        /// Print {"runs": [...], "bad_records": {...}, "dropped": {...}, "warnings": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Answers for every record of a data file (greedy or sampled, with a KV cache), as JSONL for a judge.
    Generate {
        /// Model directory or hub id (org/name[@revision]; downloaded into the Hugging Face cache when missing).
        #[arg(long)]
        model: String,
        /// PEFT adapter directory; without it the base model answers.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        data: PathBuf,
        /// The data file's format, or mt-bench: MT-Bench-style questions (question_id, category, turns), each turn
        /// answered after the model's own answer to the turn before (a chat template is needed for two turns).
        #[arg(long, default_value = "alpaca")]
        format: String,
        /// alpaca, llama2-chat, gemma, chatml or model.
        #[arg(long, default_value = "alpaca")]
        template: String,
        /// Where to write the answers (JSONL: id, location, prompt, reference, answer, finish, new_tokens; for
        /// mt-bench: question_id, category, turns, prompts, answers, finish, new_tokens, one entry per turn).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Stop when the answer contains this text (repeatable); the answer ends before it.
        #[arg(long)]
        stop: Vec<String>,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "auto")]
        dtype: String,
    },
    /// Fold a LoRA adapter into a checkpoint: a Hugging Face model folder (same dtype and shards) transformers loads.
    Merge {
        /// Model directory or hub id (org/name[@revision]; downloaded into the Hugging Face cache when missing).
        #[arg(long)]
        model: String,
        /// PEFT adapter directory.
        #[arg(long)]
        adapter: PathBuf,
        /// A new (or empty) folder for the merged checkpoint.
        #[arg(long)]
        out: PathBuf,
        /// Merge into a folder that is not empty, replacing files of the same names.
        #[arg(long)]
        force: bool,
    },
    /// Download a hub model (config, tokenizer, safetensors) into the Hugging Face cache ahead of a sweep, and
    /// print its snapshot folder. Honours HF_TOKEN, HF_HOME, HF_HUB_CACHE, HF_ENDPOINT and HF_HUB_OFFLINE.
    Fetch {
        /// The hub id: org/name, or org/name@revision.
        model: String,
        /// A branch, tag or commit (default main).
        #[arg(long)]
        revision: Option<String>,
        /// Only config and tokenizer files (what `trainer plan` reads).
        #[arg(long)]
        text_only: bool,
        /// No progress bars or lines: only the folder on stdout.
        #[arg(long)]
        quiet: bool,
    },
    /// Rebuild report.md, report.csv, scores.csv and plots/ from the finished runs in an output folder, or one
    /// report over several folders (e.g. one per model) into --out.
    Report {
        /// The sweep's output folder(s).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where the report goes: default the folder itself; required with several folders.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Evaluate a model (+ adapter, or every adapter of a sweep's folder): held-out loss and perplexity per
    /// language (`--task loss`), multiple-choice log-likelihood (`mc`), generative QA (`qa`) or answers to
    /// MT-Bench-style questions graded by an LLM judge (`judge`).
    Eval {
        /// Model directory or hub id (org/name[@revision]; downloaded into the Hugging Face cache when missing).
        #[arg(long)]
        model: String,
        /// PEFT adapter directory; without it (and without --runs) the base model is evaluated.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// A sweep's output folder: evaluate the adapter of every finished run in it.
        #[arg(long, conflicts_with = "adapter")]
        runs: Option<PathBuf>,
        /// loss | mc | qa | judge.
        #[arg(long, default_value = "loss")]
        task: String,
        #[arg(long)]
        data: PathBuf,
        /// mc / qa: items for k-shot prompts.
        #[arg(long)]
        dev: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        shots: usize,
        /// mc: continuation (each choice's text is scored) or letters (MMLU-style A/B/C/D).
        #[arg(long, default_value = "continuation")]
        style: String,
        /// qa: answer length limit (default 64 for the generic format, 256 as lm-eval for benchmark formats).
        #[arg(long)]
        max_new_tokens: Option<usize>,
        /// loss: the data file's format (default alpaca). mc: generic (default), cmmlu, ceval, mmlu, okapi, mmmlu,
        /// arc or hellaswag; qa: generic (default), xquad, tydiqa, mgsm (= mgsm_native_cot), mgsm_direct or
        /// mgsm_native_cot (each benchmark's released columns, scored as lm-eval's task).
        #[arg(long)]
        format: Option<String>,
        /// loss: the training template (default alpaca). mc / qa: none (default, lm-eval's plain prompt), alpaca,
        /// chatml, gemma, llama2-chat or model (the tokenizer's chat template, as lm-eval's --apply_chat_template).
        #[arg(long)]
        template: Option<String>,
        /// Benchmark formats: a renamed column, FIELD=COLUMN (dotted paths reach nested columns); repeatable.
        #[arg(long = "field", value_name = "FIELD=COLUMN")]
        fields: Vec<String>,
        /// loss: the data file's language, for the per-language result (default: the records' own).
        #[arg(long)]
        language: Option<String>,
        #[arg(long, default_value_t = 512)]
        max_seq_len: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Print JSON: one object, or with --runs {"runs": {run: result}}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        judge: Box<JudgeArgs>,
    },
}

/// `eval --task judge`: the model answers MT-Bench-style questions (--data), a judge model grades the answers.
#[derive(clap::Args)]
struct JudgeArgs {
    /// The judge's OpenAI-compatible endpoint: a base URL (https://api.openai.com/v1) or its /chat/completions URL.
    #[arg(long)]
    judge_url: Option<String>,
    /// The judge model's name at that endpoint (e.g. gpt-4).
    #[arg(long)]
    judge_model: Option<String>,
    /// Judge offline instead: this checkpoint (folder or hub id in the local cache), loaded by the trainer, on
    /// --device, answering greedily.
    #[arg(long, conflicts_with_all = ["judge_url", "judge_model"])]
    judge_local: Option<String>,
    /// The local judge's chat template: model (its own), llama2-chat, gemma or chatml.
    #[arg(long, default_value = "model")]
    judge_template: String,
    /// The judge's answer length limit (FastChat: 2048).
    #[arg(long, default_value_t = 2048)]
    judge_max_tokens: usize,
    /// single (1–10 ratings, MT-Bench) or pairwise (against --baseline, both orders; win rate).
    #[arg(long, default_value = "single")]
    judge_mode: String,
    /// Reference answers for math, reasoning and coding questions (FastChat's reference-answer layout or ours);
    /// default: the questions' own `reference`.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// pairwise: the baseline's answers (answers.jsonl of another judge run or `generate --format mt-bench`, or
    /// FastChat's model-answer layout).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The environment variable holding the judge's API key (the key itself is never written anywhere).
    #[arg(long, default_value = trainer::eval::judge::DEFAULT_API_KEY_ENV)]
    api_key_env: String,
    /// Judge requests in flight at once.
    #[arg(long, default_value_t = 4)]
    judge_concurrency: usize,
    /// Seconds a judge request may take before it is retried.
    #[arg(long, default_value_t = 120.0)]
    judge_timeout: f64,
    /// Attempts after the first on HTTP 429/5xx, timeouts and broken answers (exponential backoff from 2 s).
    #[arg(long, default_value_t = 5)]
    judge_retries: usize,
    /// Where judgments are cached (default ~/.cache/trainer/judge).
    #[arg(long)]
    judge_cache: Option<PathBuf>,
    /// The folder for answers.jsonl, judgments.jsonl and summary.json (with --runs: one subfolder per run).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    // `trainer plan | head` closes stdout early: stop quietly, as command-line tools do, instead of panicking.
    std::panic::set_hook(Box::new(|info| {
        let msg = info.payload().downcast_ref::<String>().map(String::as_str).or_else(|| info.payload().downcast_ref::<&str>().copied()).unwrap_or("");
        if msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        // A panic of the parquet crate on a corrupt file is caught and reported as that file's error.
        if trainer::data::reader::panic_is_guarded() {
            return;
        }
        eprintln!("internal error (please report): {info}");
    }));
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            let interrupted = e.downcast_ref::<trainer::sweep::Interrupted>().is_some();
            std::process::exit(if interrupted { 130 } else { 1 });
        }
    }
}

fn real_main() -> Result<i32> {
    match Cli::parse().command {
        Command::Run { args, output_dir, quiet, log_format, gpus } => {
            let mode = match (log_format.as_str(), quiet) {
                ("json", _) => Mode::Json,
                ("text", true) => Mode::Quiet,
                ("text", false) => Mode::Bars,
                (other, _) => anyhow::bail!("--log-format must be text or json, not `{other}`"),
            };
            trainer::hub::set_quiet(mode != Mode::Bars);
            let opts = args.options(output_dir)?;
            if !gpus.is_empty() {
                return run_on_gpus(&args, &opts, &gpus, &log_format);
            }
            trainer::sweep::install_interrupt_handler();
            let outcome = trainer::sweep::run_recipe(&args.recipe, &opts, mode)?;
            let total = outcome.summaries.len();
            if outcome.failed > 0 {
                eprintln!("error: {} of {total} runs failed:", outcome.failed);
                for s in outcome.summaries.iter().filter(|s| s.status != "ok") {
                    eprintln!("  {}: {}", s.run, s.error.as_deref().unwrap_or("?"));
                }
                return Ok(1);
            }
            if mode != Mode::Json {
                eprintln!("{total} runs finished ({} skipped as done earlier)", outcome.skipped);
                if !outcome.busy.is_empty() {
                    eprintln!("{} run(s) left to the other trainer process training them: {}", outcome.busy.len(), outcome.busy.join(", "));
                }
            }
            Ok(0)
        }
        Command::Plan { args, json } => {
            let plan = trainer::sweep::plan_recipe(&args.recipe, &args.options(None)?)?;
            let (runs, bad) = (&plan.runs, &plan.bad_records);
            if json {
                println!("{}", serde_json::to_string(&plan)?);
            } else {
                for w in &plan.warnings {
                    eprintln!("{w}");
                }
                println!("{:<48} {:>9} {:>5} {:>8} {:>8} {:>7} {:>12} {:>9}", "run", "lr", "seed", "train", "heldout", "steps", "train tok", "truncated");
                for r in runs {
                    println!("{:<48} {:>9} {:>5} {:>8} {:>8} {:>7} {:>12} {:>9}", r.run, trainer::train::lr_label(r.lr), r.seed, r.train_examples, r.heldout_examples, r.steps, r.train_target_tokens, r.truncated_examples);
                }
                for s in &plan.sets {
                    let langs: Vec<String> = s.languages.iter().map(|(l, n)| format!("{} {n}", if l.is_empty() { "unlabelled" } else { l })).collect();
                    let what = s.dev_of.as_ref().map_or_else(|| "a shared evaluation set".to_string(), |source| format!("a dev set drawn from {source}"));
                    println!("set {}: {} examples ({}), {} target tokens; {what}", s.name, s.examples, langs.join(", "), s.target_tokens);
                }
                if plan.sets.iter().any(|s| s.dev_of.is_some()) {
                    // One line per condition, not per run: every run of a condition holds out the same records.
                    let held: std::collections::BTreeSet<(&str, usize)> = runs.iter().map(|r| (r.condition.as_str(), r.dev_heldout_examples)).collect();
                    let held: Vec<String> = held.into_iter().map(|(c, n)| format!("{c} {n}")).collect();
                    println!("held out of training for the dev sets (records with a dev set's id, per condition): {}", held.join(", "));
                }
                if bad.count > 0 {
                    println!("skipped {} bad record(s), first: {}", bad.count, bad.first.join("; "));
                }
                for line in trainer::data::filter::describe(&plan.dropped) {
                    println!("{line}");
                }
                for m in &plan.memory {
                    let e = &m.estimate;
                    let gb = trainer::memory::format_bytes;
                    let (set, other) = if e.gradient_checkpointing { ("with", "without") } else { ("without", "with") };
                    println!(
                        "memory {} ({}, {}; micro-batch {}×{} tokens): weights {}, LoRA state {}, activations {} ({} with gradient_checkpointing), temporaries {}; peak {} {set} recomputation ({} {other})",
                        m.model, e.dtype, e.device, e.micro_batch_sequences, e.micro_batch_tokens / e.micro_batch_sequences.max(1), gb(e.weights_bytes), gb(e.lora_state_bytes),
                        gb(e.activations_bytes), gb(e.activations_recompute_bytes), gb(e.temporaries_bytes), gb(e.peak_bytes), gb(e.peak_other_setting_bytes)
                    );
                }
            }
            Ok(0)
        }
        Command::Generate { model, adapter, data, format, template, out, max_new_tokens, temperature, top_p, stop, batch_size, seed, device, dtype } => {
            if !(temperature >= 0.0 && temperature.is_finite()) || !(top_p > 0.0 && top_p <= 1.0) {
                anyhow::bail!("--temperature must be ≥ 0 and --top-p in (0, 1]");
            }
            if batch_size == 0 || max_new_tokens == 0 {
                anyhow::bail!("--batch-size and --max-new-tokens must be at least 1");
            }
            // MT-Bench questions are answered turn by turn; every other format is one prompt per record.
            enum Input {
                Records(Format),
                Questions(Vec<trainer::eval::multiturn::Question>),
            }
            let input = if format == "mt-bench" { Input::Questions(trainer::eval::multiturn::read_questions(&data)?) } else { Input::Records(Format::parse(&format).context("--format (or mt-bench)")?) };
            let device = trainer::runtime::device(&device)?;
            let dtype = trainer::runtime::dtype(&dtype, &device)?;
            let session = Session::open(&model, None, dtype, &device)?;
            let adapter = adapter
                .map(|dir| Adapter::load_peft(&dir, &session.model.cfg, &device).with_context(|| format!("--adapter {}", dir.display())))
                .transpose()?;
            let opts = trainer::generate::GenOptions { max_new_tokens, temperature, top_p, stop, seed };
            let n = match input {
                Input::Records(format) => trainer::generate::generate_file(&session, adapter.as_ref(), &data, format, &template, batch_size, &opts, &out)?,
                Input::Questions(questions) => {
                    let answered = trainer::eval::multiturn::answer_questions(&session, adapter.as_ref(), &questions, &template, batch_size, &opts)?;
                    trainer::eval::multiturn::write_answers(&out, &answered)?;
                    answered.len()
                }
            };
            eprintln!("{n} answers in {}", out.display());
            Ok(0)
        }
        Command::Merge { model, adapter, out, force } => {
            let s = trainer::merge::merge(&model, &adapter, &out, force)?;
            eprintln!("merged {} weights ({} tensors copied unchanged) into {} file(s) in {}", s.merged, s.copied, s.files.len(), out.display());
            Ok(0)
        }
        Command::Fetch { model, revision, text_only, quiet } => {
            trainer::hub::set_quiet(quiet);
            let need = if text_only { trainer::checkpoint::Need::Text } else { trainer::checkpoint::Need::Weights };
            // A hub id only: a local folder of the same name must not shadow it.
            let files = trainer::checkpoint::locate_hub(&model, revision.as_deref(), need)?;
            println!("{}", files.dir.display());
            Ok(0)
        }
        Command::Report { dirs, out } => {
            let out = match (out, dirs.as_slice()) {
                (Some(out), _) => out,
                (None, [one]) => one.clone(),
                (None, _) => anyhow::bail!("a report over several folders needs --out DIR (where report.md, scores.csv and plots/ go)"),
            };
            let path = trainer::sweep::report::write_many(&dirs, &out)?;
            println!("{}", path.display());
            Ok(0)
        }
        Command::Eval { model, adapter, runs, task, data, dev, shots, style, max_new_tokens, format, template, fields, language, max_seq_len, batch_size, device, dtype, json, judge } => {
            // Settings and files are checked before the model loads: the benchmark's (every task but judge, whose
            // settings are its own below) and the judge's files and key.
            let spec = if task == "judge" {
                None
            } else {
                let fields = fields
                    .iter()
                    .map(|f| f.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).with_context(|| format!("--field {f}: expected FIELD=COLUMN")))
                    .collect::<Result<_>>()?;
                Some(trainer::recipe::BenchmarkSection::parse(&task, &data, dev.as_deref(), shots, &style, max_new_tokens, format.as_deref(), template.as_deref(), fields, language.as_deref(), max_seq_len, batch_size)?)
            };
            let judge_task = if task == "judge" {
                let Some(out) = judge.out.clone() else {
                    anyhow::bail!("--task judge needs --out DIR (for answers.jsonl, judgments.jsonl and summary.json)");
                };
                let settings = trainer::eval::judge::JudgeSettings {
                    questions: data.clone(),
                    judge: trainer::recipe::JudgeSection {
                        url: judge.judge_url,
                        model: judge.judge_model,
                        local: judge.judge_local,
                        template: judge.judge_template,
                        mode: judge.judge_mode,
                        reference: judge.reference,
                        baseline: judge.baseline,
                        api_key_env: judge.api_key_env,
                        concurrency: judge.judge_concurrency,
                        timeout: judge.judge_timeout,
                        retries: judge.judge_retries,
                        max_tokens: judge.judge_max_tokens,
                        cache: judge.judge_cache,
                    },
                    // As [[evals]] task = "judge": the model's chat template, FastChat's 1024 new tokens.
                    template: template.clone().unwrap_or_else(|| "model".into()),
                    max_new_tokens: max_new_tokens.unwrap_or(1024),
                    batch_size,
                };
                settings.judge.check().context("--task judge")?;
                Some((settings, out))
            } else {
                None
            };
            let device = trainer::runtime::device(&device)?;
            let dtype = trainer::runtime::dtype(&dtype, &device)?;
            let judge_task = judge_task.map(|(settings, out)| anyhow::Ok((settings.load(dtype, &device)?, out))).transpose()?;
            let session = Session::open(&model, None, dtype, &device)?;
            if let Some((judge_task, out)) = judge_task {
                return run_judge(&judge_task, &session, &device, runs, adapter, &out, json);
            }
            let Some(spec) = spec else { unreachable!("every task but judge has its spec") };
            let task = trainer::eval::Task::load(&spec, &session)?;
            let from_runs = runs.is_some();
            let mut skipped = std::collections::BTreeMap::new();
            let adapters: Vec<(String, Option<Adapter>)> = match (runs, adapter) {
                (Some(dir), _) => {
                    let found = trainer::sweep::adapters::sweep_adapters(&dir, &session.model.cfg, &device)?;
                    skipped = found.skipped;
                    found.adapters.into_iter().map(|(n, a)| (n, Some(a))).collect()
                }
                (None, Some(dir)) => vec![(dir.display().to_string(), Some(Adapter::load_peft(&dir, &session.model.cfg, &device).with_context(|| format!("--adapter {}", dir.display()))?))],
                (None, None) => vec![("base".into(), None)],
            };
            let mut results = serde_json::Map::new();
            for (name, a) in &adapters {
                let r = task.run(&session, a.as_ref())?;
                if !json {
                    println!("{name}: {}", trainer::eval::summary_line(&r));
                }
                results.insert(name.clone(), r);
            }
            if !json {
                for (run, why) in &skipped {
                    eprintln!("skipped {run}: {why}");
                }
            }
            if json {
                if from_runs {
                    println!("{}", serde_json::json!({ "runs": results, "skipped": skipped }));
                } else if let Some((_, only)) = results.into_iter().next() {
                    println!("{only}");
                }
            }
            Ok(0)
        }
    }
}

/// `eval --task judge` for the base model, one adapter, or every finished run of a sweep (one output subfolder each).
fn run_judge(task: &trainer::eval::judge::JudgeTask, session: &Session, device: &candle_core::Device, runs: Option<PathBuf>, adapter: Option<PathBuf>, out: &std::path::Path, json: bool) -> Result<i32> {
    let (adapters, skipped): (Vec<(String, Option<Adapter>)>, _) = match (runs, adapter) {
        (Some(dir), _) => {
            let found = trainer::sweep::adapters::sweep_adapters(&dir, &session.model.cfg, device)?;
            (found.adapters.into_iter().map(|(n, a)| (n, Some(a))).collect(), found.skipped)
        }
        (None, Some(dir)) => (vec![(dir.display().to_string(), Some(Adapter::load_peft(&dir, &session.model.cfg, device).with_context(|| format!("--adapter {}", dir.display()))?))], Default::default()),
        (None, None) => (vec![("base".into(), None)], Default::default()),
    };
    let several = adapters.len() > 1 || !skipped.is_empty();
    let mut results = serde_json::Map::new();
    for (name, a) in &adapters {
        let dir = if several { out.join(name) } else { out.to_path_buf() };
        let r = task.run(session, a.as_ref(), &trainer::eval::judge::JudgeOutputs::in_dir(&dir))?;
        if !json {
            println!("{name}: {}  (judgments in {})", trainer::eval::summary_line(&r), dir.display());
        }
        results.insert(name.clone(), r);
    }
    if json {
        if several {
            println!("{}", serde_json::json!({ "runs": results, "skipped": skipped }));
        } else if let Some((_, only)) = results.into_iter().next() {
            println!("{only}");
        }
    } else {
        for (run, why) in &skipped {
            eprintln!("skipped {run}: {why}");
        }
    }
    Ok(0)
}

/// `--gpus`: runs handed out one at a time, each GPU taking the next as soon as its current run ends (runs of
/// different models and sizes take very different times), each run a child `trainer run --only RUN --device
/// cuda:G`; then one report over all of them.
fn run_on_gpus(args: &RecipeArgs, opts: &Options, gpus: &[usize], log_format: &str) -> Result<i32> {
    if args.device.is_some() {
        anyhow::bail!("--gpus picks each run's device: drop --device");
    }
    let exe = std::env::current_exe().context("cannot find the trainer binary")?;
    let mut queue: std::collections::VecDeque<String> = trainer::sweep::run_names(&args.recipe, opts)?.into();
    let spawn = |run: &str, gpu: usize| -> Result<std::process::Child> {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("run").arg(&args.recipe).args(["--only", run, "--device", &format!("cuda:{gpu}"), "--log-format", log_format]);
        if log_format != "json" {
            cmd.arg("--quiet");
        }
        if let Some(d) = &opts.output_dir {
            cmd.arg("--output-dir").arg(d);
        }
        if let Some(d) = &args.data_root {
            cmd.arg("--data-root").arg(d);
        }
        if let Some(d) = &args.benchmarks_root {
            cmd.arg("--benchmarks-root").arg(d);
        }
        if let Some(m) = &args.model {
            cmd.args(["--model", m]);
        }
        for o in &args.overrides {
            cmd.args(["--set", o]);
        }
        cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))
    };
    let mut busy: Vec<Option<(String, std::process::Child)>> = gpus.iter().map(|_| None).collect();
    let mut failed = Vec::new();
    loop {
        for (slot, &gpu) in busy.iter_mut().zip(gpus) {
            if slot.is_none() {
                if let Some(run) = queue.pop_front() {
                    eprintln!("{run}: on cuda:{gpu}");
                    *slot = Some((run.clone(), spawn(&run, gpu)?));
                }
            }
        }
        if busy.iter().all(Option::is_none) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        for slot in busy.iter_mut() {
            if let Some((run, child)) = slot {
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        failed.push(run.clone());
                    }
                    *slot = None;
                }
            }
        }
    }
    let recipe = trainer::sweep::load_recipe(&args.recipe, opts)?;
    let path = trainer::sweep::report::write(&recipe.output_dir)?;
    eprintln!("report: {}", path.display());
    if failed.is_empty() {
        Ok(0)
    } else {
        eprintln!("error: {} run(s) did not succeed: {}", failed.len(), failed.join(", "));
        Ok(1)
    }
}
