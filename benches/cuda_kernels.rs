//! Time of each fused CUDA kernel (forward and backward) at Llama-2-7B shapes in bf16 — the trainer's side of
//! the comparison whose torch side is benches/cuda_kernels_torch.py (same shapes, same session).
//!
//!     cargo bench --features cuda --bench cuda_kernels        (on a machine with a GPU)
//!     bench_kernels --attention-only                           (the attention shapes only)
//!
//! Prints one JSON object per line: op, shape, median milliseconds over 20 timed runs after 3 warm-ups, and the
//! achieved TFLOP/s (attention) or GB/s (memory-bound ops: each input read once, each output written once).

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use candle_core::{DType, Tensor};
    use std::time::Instant;
    use trainer::config::Activation;
    use trainer::ops::attention::{self, AttnMask, AttnOpts};
    use trainer::ops::rope::{self, RopeTables};
    use trainer::ops::{activation, cross_entropy, rmsnorm};

    let dev = trainer::cuda::open_device(0)?;
    let sync = || dev.synchronize();
    // Median of 20 runs, each synchronised, after 3 warm-ups.
    let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        for _ in 0..3 {
            f()?;
        }
        sync()?;
        let mut ms = Vec::new();
        for _ in 0..20 {
            let t0 = Instant::now();
            f()?;
            sync()?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2])
    };
    let rnd = |shape: &[usize], std: f64| -> anyhow::Result<Tensor> { Ok((Tensor::randn(0f32, 1.0, shape, &dev)? * std)?.to_dtype(DType::BF16)?) };
    // Which attention ran (TRAINER_ATTENTION=kernels|cudnn picks; auto takes cuDNN where it loads).
    let backend = trainer::cuda::cudnn_sdpa::describe(&dev)?;
    let report = |op: &str, shape: String, ms: f64, metric: (&str, f64)| {
        let mut r = serde_json::json!({"impl": "trainer", "op": op, "shape": shape, "ms": ms, metric.0: metric.1});
        if op.starts_with("attention") {
            r["attention"] = backend.clone().into();
        }
        println!("{r}");
    };

    // Attention, causal, all keys valid: the Llama-2-7B shapes at seq 2048 and 512 and Gemma-2B's MQA with
    // head_dim 256. FLOPs counted for the visible (causal) half.
    for (b, h, hkv, t, d) in [(4, 32, 32, 2048, 128), (16, 32, 32, 512, 128), (4, 8, 1, 2048, 256)] {
        let q = rnd(&[b, h, t, d], 1.0)?;
        let k = rnd(&[b, hkv, t, d], 1.0)?;
        let v = rnd(&[b, hkv, t, d], 1.0)?;
        let dout = rnd(&[b, h, t, d], 1.0)?;
        let mask = AttnMask::new(&vec![vec![true; t]; b], None, &dev);
        let scale = AttnOpts::scaled(1.0 / (d as f64).sqrt());
        let fwd_flops = 4.0 * (b * h * d) as f64 * (t * t) as f64 / 2.0;
        let shape = format!("B{b} H{h} Hkv{hkv} T{t} D{d}");
        let ms = time(&mut || Ok(drop(attention::forward(&q, &k, &v, &mask, &scale)?)))?;
        report("attention fwd", shape.clone(), ms, ("tflops", fwd_flops / ms / 1e9));
        let (o, lse) = attention::forward(&q, &k, &v, &mask, &scale)?;
        let ms_b = time(&mut || Ok(drop(attention::backward(&dout, &q, &k, &v, &o, &lse, &mask, &scale)?)))?;
        report("attention bwd", shape.clone(), ms_b, ("tflops", 2.5 * fwd_flops / ms_b / 1e9));
        report("attention fwd+bwd", shape, ms + ms_b, ("tflops", 3.5 * fwd_flops / (ms + ms_b) / 1e9));
    }
    if std::env::args().any(|a| a == "--attention-only") {
        return Ok(());
    }
    let (h, d) = (32, 128);

    // RMSNorm on 8192 tokens × 4096.
    let (n, hid) = (8192, 4096);
    let x = rnd(&[n, hid], 1.0)?;
    let w = rnd(&[hid], 1.0)?;
    let dy = rnd(&[n, hid], 1.0)?;
    let bytes = (n * hid * 2) as f64;
    let ms = time(&mut || Ok(drop(rmsnorm::forward(&x, &w, 0.0, 1e-5)?)))?;
    report("rmsnorm fwd", format!("{n}x{hid}"), ms, ("gbps", 2.0 * bytes / ms / 1e6));
    let (_, rstd) = rmsnorm::forward(&x, &w, 0.0, 1e-5)?;
    let ms = time(&mut || Ok(drop(rmsnorm::backward(&dy, &x, &w, 0.0, &rstd)?)))?;
    report("rmsnorm bwd", format!("{n}x{hid}"), ms, ("gbps", 3.0 * bytes / ms / 1e6));

    // RoPE on q of 8192 tokens × 32 heads × 128 (fused with the head transpose).
    let (bb, tt) = (4, 2048);
    let rows = rnd(&[bb * tt, h * d], 1.0)?;
    let positions: Vec<Vec<u32>> = vec![(0..tt as u32).collect(); bb];
    let tables = RopeTables::new(&positions, d, 10000.0, DType::BF16, &dev)?;
    let bytes = (bb * tt * h * d * 2) as f64;
    let ms = time(&mut || Ok(drop(rope::forward_heads(&rows, &tables, h)?)))?;
    report("rope fwd", format!("{bb}x{tt}x{h}x{d}"), ms, ("gbps", 2.0 * bytes / ms / 1e6));
    let dyh = rnd(&[bb, h, tt, d], 1.0)?;
    let ms = time(&mut || Ok(drop(rope::backward_rows(&dyh, &tables)?)))?;
    report("rope bwd", format!("{bb}x{tt}x{h}x{d}"), ms, ("gbps", 2.0 * bytes / ms / 1e6));

    // SwiGLU on 8192 × 11008.
    let inter = 11008;
    let g = rnd(&[n, inter], 1.0)?;
    let u = rnd(&[n, inter], 1.0)?;
    let dh = rnd(&[n, inter], 1.0)?;
    let bytes = (n * inter * 2) as f64;
    let ms = time(&mut || Ok(drop(activation::forward(&g, &u, Activation::Silu)?)))?;
    report("swiglu fwd", format!("{n}x{inter}"), ms, ("gbps", 3.0 * bytes / ms / 1e6));
    let ms = time(&mut || Ok(drop(activation::backward(&dh, &g, &u, Activation::Silu)?)))?;
    report("swiglu bwd", format!("{n}x{inter}"), ms, ("gbps", 5.0 * bytes / ms / 1e6));

    // LM head + cross-entropy, forward and backward, 8192 tokens: Llama (32k vocab, 4096) and Gemma (256k, 2048).
    for (vocab, hd) in [(32_000, 4096), (256_000, 2048)] {
        let hs = rnd(&[n, hd], 1.0)?;
        let wh = rnd(&[vocab, hd], 0.02)?;
        let targets: Vec<Option<u32>> = (0..n).map(|i| Some(((i * 7919) % vocab) as u32)).collect();
        let flops = 3.0 * 2.0 * (n * vocab * hd) as f64; // head GEMM forward + the GEMM back to dh (+ the logits pass)
        let ms = time(&mut || Ok(drop(cross_entropy::forward_backward(&hs, &wh, &targets, 1.0 / n as f64, None)?)))?;
        report("lm head + cross-entropy fwd+bwd", format!("{n}x{hd} vocab {vocab}"), ms, ("gemm_tflops", flops * 2.0 / 3.0 / ms / 1e9));
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("cuda_kernels: build with --features cuda");
}
