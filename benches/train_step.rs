//! CPU time of one LoRA training step (forward + explicit backward + clipping + AdamW) on a small Llama:
//! hidden 256, 4 layers, 4 heads, intermediate 688, vocab 320, batch 8 × seq 256, LoRA r=8 alpha=16
//! dropout 0.05 on q/k/v — the same step `benches/train_step_torch.py` times in torch.
//!
//!     cargo bench --bench train_step [-- --steps 5 --micro 8 --recompute]
//!
//! Prints one JSON object with the median/mean/min/max seconds per step.

use std::time::Instant;
use trainer::data::batch::Example;
use trainer::lora::{Adapter, LoraSpec, Target};
use trainer::optim::{AdamWConfig, Schedule};
use trainer::train::{train, TrainPlan};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let steps = arg("--steps", 5);
    let batch = arg("--batch", 8);
    let micro = arg("--micro", batch);
    let seq = arg("--seq", 256);
    let recompute = std::env::args().any(|a| a == "--recompute");
    let config = serde_json::json!({"architectures":["LlamaForCausalLM"],"hidden_size":256,"num_hidden_layers":4,
        "num_attention_heads":4,"num_key_value_heads":4,"intermediate_size":688,"vocab_size":320,"rms_norm_eps":1e-5,
        "tie_word_embeddings":false});
    let model = trainer::testing::random_model(config, 0);
    let spec = LoraSpec { r: 8, alpha: 16.0, dropout: 0.05, targets: vec![Target::Q, Target::K, Target::V], rslora: false };
    let mut adapter = Adapter::init(spec, &model.cfg, 0, &model.device)?;
    // Every token is a target, as in the torch script.
    let examples: Vec<Example> = (0..batch)
        .map(|i| Example::new((0..seq).map(|t| ((t * 31 + i * 7) % 317 + 3) as u32).collect(), vec![true; seq], false))
        .collect();
    let plan = TrainPlan {
        lr: 1e-4,
        total_steps: steps + 1,
        batch_size: batch,
        micro_batch_size: micro,
        schedule: Schedule::Constant,
        warmup_steps: 0,
        adamw: AdamWConfig { weight_decay: 0.01, ..Default::default() },
        max_grad_norm: 1.0,
        shuffle: false,
        seed: 0,
        dropout: 0.05,
        recompute,
        group_by_length: false,
    };
    let mut times = Vec::new();
    let mut last = Instant::now();
    train(&model, &mut adapter, &examples, &plan, 0, |_| {
        times.push(last.elapsed().as_secs_f64());
        last = Instant::now();
        Ok(())
    })?;
    times.remove(0); // warm-up step
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "median_s": median,
            "mean_s": times.iter().sum::<f64>() / times.len() as f64,
            "min_s": sorted[0],
            "max_s": sorted[sorted.len() - 1],
            "times_s": times,
            "steps": steps,
            "batch": batch,
            "micro_batch": micro,
            "seq": seq,
            "recompute": recompute,
            "tokens_per_s": (batch * seq) as f64 / median,
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        })
    );
    Ok(())
}
