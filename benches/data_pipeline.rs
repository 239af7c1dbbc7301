//! Throughput of the data pipeline on the study's Spanish native file (3,854 records, ../shared):
//! read → parse (alpaca) → template → tokenize (all cores) → pad into batches of 8, with the tiny Llama's
//! tokenizer and with the real Llama-2 tokenizer from ../shared/tokenizers.
//!
//!     cargo bench --bench data_pipeline

use std::time::Instant;
use trainer::data::batch::{Batch, Example};
use trainer::data::format::Format;
use trainer::data::TrainOn;
use trainer::session::ModelText;

fn main() -> anyhow::Result<()> {
    let shared = trainer::testing::shared_root();
    let file = shared.join("data/good-data-or-bad-eval/aya_native/aya_native_data_processed.es.json");
    // The Llama-2 tokenizer with the tiny model's config: a model directory assembled in a temp folder.
    let llama2 = tempfile::tempdir()?;
    let tiny = trainer::testing::repo_dir().join("data/tiny-llama");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny.join(f), llama2.path().join(f))?;
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(shared.join("tokenizers/llama2").join(f), llama2.path().join(f))?;
    }
    let mut results = Vec::new();
    for (name, dir) in [("tiny-llama (1k BPE)", tiny), ("llama-2 (32k SentencePiece-BPE)", llama2.path().to_path_buf())] {
        let mut text = ModelText::open(dir.to_str().unwrap(), None)?;
        text.config.vocab_size = usize::MAX; // only the tokenizer matters here
        let mut times = Vec::new();
        let mut tokens = 0;
        let mut n = 0;
        for _ in 0..3 {
            let started = Instant::now();
            let examples = text.examples(&file, Format::Alpaca, "alpaca", 4096, TrainOn::Response)?;
            let batches: Vec<Batch> = examples.chunks(8).map(|c| Batch::pad(&c.iter().collect::<Vec<&Example>>(), 0)).collect();
            times.push(started.elapsed().as_secs_f64());
            tokens = examples.iter().map(|e| e.ids.len()).sum::<usize>();
            n = examples.len();
            assert_eq!(batches.len(), n.div_ceil(8));
        }
        times.sort_by(f64::total_cmp);
        let median = times[1];
        results.push(serde_json::json!({
            "tokenizer": name, "examples": n, "tokens": tokens, "median_s": median,
            "examples_per_s": n as f64 / median, "tokens_per_s": tokens as f64 / median,
            "threads": std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1),
        }));
    }
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}
