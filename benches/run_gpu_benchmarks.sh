#!/usr/bin/env bash
# One GPU session's worth of measurements, as recorded in BENCHMARKS.md: the CUDA kernel tests, each kernel
# beside its torch form, LoRA training throughput/memory/MFU of the trainer beside transformers + peft on
# random Llama-2-7B- and Gemma-2B-shaped checkpoints, and GPU parity of an exported adapter with PEFT.
#
#   benches/run_gpu_benchmarks.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds release builds made elsewhere (`cargo build --release --features cuda`, `cargo test --release
# --features cuda --no-run`, `cargo bench --features cuda --no-run`): trainer, cuda_kernels_test, bench_kernels,
# gpu_step. The machine needs PyTorch, transformers and peft, and the CUDA 13 libraries (found by
# shared/cuda/device-env.sh, or the LD_LIBRARY_PATH line of the README).
set -uo pipefail
BIN=$1 OUT=$2
mkdir -p "$OUT"
export TRAINER_REPO=$PWD TRAINER_REQUIRE_CUDA=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

timeout 300 "$BIN/cuda_kernels_test" --test-threads=1 --nocapture > "$OUT/tests.log" 2>&1; grep "^test result" "$OUT/tests.log"
grep -E "panicked|FAILED" -A2 "$OUT/tests.log" | head -20

timeout 120 "$BIN/bench_kernels" > "$OUT/kernels.jsonl" 2>&1
timeout 120 python3 benches/cuda_kernels_torch.py >> "$OUT/kernels.jsonl" 2>&1

TOK=${TOKENIZER_DIR:-}
timeout 200 python3 benches/make_random_checkpoint.py "$CONFIGS/llama-2-7b.json" /tmp/llama7b $TOK 2>&1 | tail -1
timeout 100 python3 benches/make_random_checkpoint.py "$CONFIGS/gemma-2b.json" /tmp/gemma2b ${GEMMA_TOKENIZER_DIR:-} 2>&1 | tail -1
LLAMA_RUNS="--run 512,16,qkv --run 512,16,qkv,recompute --run 2048,4,qkv --run 2048,4,qkv,recompute --run 512,16,all,recompute"
GEMMA_RUNS="--run 512,16,qkv --run 512,16,qkv,recompute --run 2048,4,qkv,recompute --run 512,16,all,recompute"
timeout 300 "$BIN/gpu_step" /tmp/llama7b --steps 5 $LLAMA_RUNS > "$OUT/steps.jsonl" 2>>"$OUT/steps.err"
timeout 300 python3 benches/gpu_step_peft.py /tmp/llama7b --steps 5 ${LLAMA_RUNS//recompute/gc} >> "$OUT/steps.jsonl" 2>>"$OUT/steps.err"
timeout 200 "$BIN/gpu_step" /tmp/gemma2b --steps 5 $GEMMA_RUNS >> "$OUT/steps.jsonl" 2>>"$OUT/steps.err"
timeout 200 python3 benches/gpu_step_peft.py /tmp/gemma2b --steps 5 ${GEMMA_RUNS//recompute/gc} >> "$OUT/steps.jsonl" 2>>"$OUT/steps.err"
grep -h '^{' "$OUT/steps.jsonl" | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print(r["impl"], r["model"], r["seq"], r["micro_batch"], r["targets"], r["recompute"],
          *(f"{r[k]:.3f}" for k in ("tokens_per_s", "peak_gib", "mfu") if k in r), r.get("error", ""))'

if [ -n "$TOK" ]; then
  # Parity: a short bf16 run on the 7B-shaped checkpoint, its exported adapter evaluated by the trainer and by PEFT.
  timeout 300 "$BIN/trainer" run "$PARITY_RECIPE" > "$OUT/parity.log" 2>&1
  adapter=$(ls -d runs/parity-7b/*/adapter | head -1)
  loss=$(timeout 120 "$BIN/trainer" eval --model /tmp/llama7b --adapter "$adapter" --data data/samples/es-native.json \
         --device cuda --dtype bf16 --batch-size 4 --json | tee -a "$OUT/parity.log" | python3 -c 'import json,sys; print(json.load(sys.stdin)["loss"])')
  timeout 200 python3 tests/fixtures/gen_fixtures.py check-export --model /tmp/llama7b --adapter "$adapter" \
    --data data/samples/es-native.json --expected-loss "$loss" --tol 0.05 --device cuda --dtype bfloat16 | tee -a "$OUT/parity.log"
fi

# Where the time goes: per-kernel totals of a short 7B run at seq 2048, when Nsight Systems is installed.
if command -v nsys >/dev/null && [ -d /tmp/llama7b ]; then
  timeout 200 nsys profile -o /tmp/prof --force-overwrite true "$BIN/gpu_step" /tmp/llama7b --steps 2 --run 2048,4,qkv > /dev/null 2>&1
  timeout 120 nsys stats --report cuda_gpu_kern_sum --format csv /tmp/prof.nsys-rep 2>/dev/null | head -25 > "$OUT/profile.csv"
fi
