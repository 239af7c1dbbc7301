use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use trainer::data::format::Format;
use trainer::data::TrainOn;
use trainer::lora::Adapter;
use trainer::session::Session;

#[derive(Parser)]
#[command(name = "trainer", version, about = "LoRA fine-tuning for multilingual instruction-tuning research")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one LoRA adapter per learning rate of a recipe.
    Run {
        /// The recipe (TOML).
        recipe: PathBuf,
        /// Write the runs here instead of the recipe's output_dir.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Resolve source paths against this folder instead of the recipe's data_root.
        #[arg(long)]
        data_root: Option<PathBuf>,
    },
    /// Expand a recipe without training: runs, conditions and data sizes.
    Plan {
        recipe: PathBuf,
        #[arg(long)]
        data_root: Option<PathBuf>,
        /// Print {"runs": [...], "bad_records": {...}}.
        #[arg(long)]
        json: bool,
    },
    /// Held-out loss and perplexity of a model (+ adapter) on a data file.
    Eval {
        /// Model directory or hub id in the local Hugging Face cache.
        #[arg(long)]
        model: String,
        /// PEFT adapter directory; without it the base model is evaluated.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "alpaca")]
        format: String,
        #[arg(long, default_value = "alpaca")]
        template: String,
        #[arg(long, default_value_t = 512)]
        max_seq_len: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Print one JSON object: {"loss", "tokens", "perplexity", "examples"}.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().command {
        Command::Run { recipe, output_dir, data_root } => {
            trainer::train::run_recipe(&recipe, output_dir, data_root.as_deref())?;
            Ok(())
        }
        Command::Plan { recipe, data_root, json } => {
            let (runs, bad) = trainer::train::plan_recipe(&recipe, data_root.as_deref())?;
            if json {
                println!("{}", serde_json::json!({ "runs": runs, "bad_records": bad }));
            } else {
                println!("{:<40} {:>9} {:>8} {:>8} {:>12} {:>9}", "run", "lr", "train", "heldout", "train tok", "truncated");
                for r in &runs {
                    println!("{:<40} {:>9} {:>8} {:>8} {:>12} {:>9}", r.run, trainer::train::lr_label(r.lr), r.train_examples, r.heldout_examples, r.train_target_tokens, r.truncated_examples);
                }
                if bad.count > 0 {
                    println!("skipped {} bad record(s), first: {}", bad.count, bad.first.join("; "));
                }
            }
            Ok(())
        }
        Command::Eval { model, adapter, data, format, template, max_seq_len, batch_size, device, dtype, json } => {
            let format = Format::parse(&format).context("--format")?;
            let device = trainer::runtime::device(&device)?;
            let dtype = trainer::runtime::dtype(&dtype, &device)?;
            let session = Session::open(&model, None, dtype, &device)?;
            let adapter = adapter
                .map(|dir| Adapter::load_peft(&dir, &session.model.cfg, &device).with_context(|| format!("--adapter {}", dir.display())))
                .transpose()?;
            let examples = session.text.examples(&data, format, &template, max_seq_len, TrainOn::Response)?;
            let r = trainer::eval::evaluate(&session.model, adapter.as_ref(), &examples, batch_size, session.text.pad_id)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("loss {:.6}  perplexity {:.4}  ({} target tokens, {} examples)", r.loss, r.perplexity, r.tokens, r.examples);
            }
            Ok(())
        }
    }
}
