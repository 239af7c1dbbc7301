//! LoRA training throughput of the trainer on CUDA (bf16) for one checkpoint: tokens/s, peak GPU memory and
//! MFU per configuration — our side of the comparison with transformers + peft (benches/gpu_step_peft.py, same
//! token ids, batch and sequence). Usage, on the GPU machine:
//!
//!     gpu_step MODEL_DIR --steps 5 --run 512,16,qkv --run 2048,4,all,recompute ...
//!
//! Each `--run SEQ,MICRO,TARGETS[,recompute]` trains `steps` optimizer steps of one micro-batch of MICRO
//! sequences of SEQ tokens (after 2 warm-up steps), LoRA r8 alpha16 dropout 0.05 on q/k/v (`qkv`) or on all
//! seven projections (`all`). Prints one JSON object per run.
//!
//! Memory is sampled every 2 ms by a thread asking the driver for used device memory (total − free, so the CUDA
//! context and the allocator's pool count, as they do in the torch script's identical sampler); the pool is
//! trimmed before each run, as the torch script empties its cache.
//! MFU counts model FLOPs only (4·N per token for LoRA — forward 2N, input-gradient backward 2N, no weight
//! gradients — plus 6·T·H·d per layer for causal attention), not recomputation, over the H100 SXM's dense bf16
//! peak of 989.4 TFLOP/s.

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use candle_core::DType;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    use trainer::data::batch::Example;
    use trainer::lora::{Adapter, LoraSpec, Target, ALL_TARGETS};
    use trainer::model::Model;
    use trainer::optim::{AdamWConfig, Schedule};
    use trainer::train::{train, TrainPlan};

    const PEAK_TFLOPS: f64 = 989.4;
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let dir = args.first().ok_or_else(|| anyhow::anyhow!("usage: gpu_step MODEL_DIR --steps N --run SEQ,MICRO,qkv|all[,recompute] ..."))?;
    let steps: usize = args.iter().position(|a| a == "--steps").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(5);
    let runs: Vec<&String> = args.iter().enumerate().filter(|(i, _)| *i > 0 && args[i - 1] == "--run").map(|(_, a)| a).collect();

    let dev = trainer::cuda::open_device(0)?;
    let ctx = dev.as_cuda_device()?.cuda_stream().context().clone();
    let peak = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, ctx) = (peak.clone(), stop.clone(), ctx.clone());
        std::thread::spawn(move || {
            ctx.bind_to_thread().expect("bind the sampler to the context");
            while !stop.load(Ordering::Relaxed) {
                if let Ok((free, total)) = ctx.mem_get_info() {
                    peak.fetch_max(total - free, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };

    let t0 = Instant::now();
    let files = trainer::checkpoint::locate(dir, None)?;
    let model = Model::load(&files, DType::BF16, &dev)?;
    dev.synchronize()?;
    eprintln!("loaded {dir} in {:.1}s", t0.elapsed().as_secs_f64());
    let cfg = &model.cfg;
    let linear: usize = ALL_TARGETS.iter().map(|t| { let (i, o) = t.dims(cfg); i * o }).sum::<usize>() * cfg.num_layers;
    let n_params = linear + cfg.vocab_size * cfg.hidden_size;

    for run in runs {
        let parts: Vec<&str> = run.split(',').collect();
        let (seq, micro): (usize, usize) = (parts[0].parse()?, parts[1].parse()?);
        let targets = match parts[2] {
            "qkv" => vec![Target::Q, Target::K, Target::V],
            "all" => ALL_TARGETS.to_vec(),
            other => anyhow::bail!("targets `{other}`: qkv or all"),
        };
        let recompute = parts.get(3) == Some(&"recompute");
        let spec = LoraSpec { r: 8, alpha: 16.0, dropout: 0.05, targets, rslora: false };
        let mut adapter = Adapter::init(spec, cfg, 0, &dev)?;
        let vocab = cfg.vocab_size;
        // The same ids as gpu_step_peft.py: every token a target.
        let examples: Vec<Example> = (0..micro)
            .map(|i| Example::new((0..seq).map(|t| ((t * 31 + i * 7) % (vocab - 3) + 3) as u32).collect(), vec![true; seq], false))
            .collect();
        let plan = TrainPlan {
            lr: 1e-4,
            total_steps: steps + 2,
            batch_size: micro,
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
        // Each run's peak is its own: what earlier runs left in the pool goes back first.
        trainer::cuda::trim_pool(&dev)?;
        std::thread::sleep(std::time::Duration::from_millis(10));
        peak.store(0, Ordering::Relaxed);
        let mut times = Vec::new();
        let mut last = Instant::now();
        let result = train(&model, &mut adapter, &examples, &plan, 0, |_| {
            dev.synchronize()?;
            times.push(last.elapsed().as_secs_f64());
            last = Instant::now();
            Ok(())
        });
        dev.synchronize()?;
        std::thread::sleep(std::time::Duration::from_millis(10));
        let mut line = serde_json::json!({"impl": "trainer", "model": dir, "seq": seq, "micro_batch": micro, "targets": parts[2], "recompute": recompute});
        match result {
            Ok(_) => {
                let timed = &times[2..];
                let mut sorted = timed.to_vec();
                sorted.sort_by(f64::total_cmp);
                let median = sorted[sorted.len() / 2];
                let tokens = (micro * seq) as f64;
                let flops_per_token = 4.0 * n_params as f64 + 6.0 * (seq * cfg.num_heads * cfg.head_dim * cfg.num_layers) as f64;
                let tps = tokens / median;
                line["step_s"] = median.into();
                line["tokens_per_s"] = tps.into();
                line["peak_gib"] = (peak.load(Ordering::Relaxed) as f64 / (1u64 << 30) as f64).into();
                line["mfu"] = (tps * flops_per_token / (PEAK_TFLOPS * 1e12)).into();
                line["times_s"] = timed.to_vec().into();
            }
            Err(e) => line["error"] = format!("{e:#}").into(),
        }
        println!("{line}");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().ok();
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("gpu_step: build with --features cuda");
}
