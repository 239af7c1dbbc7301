#!/usr/bin/env bash
# One device session for issue 16 (fused attention), in one command of at most 8 minutes, prepared here:
#
#   benches/gpu_session.sh stage   BIN_DIR           # CPU machine: build (cuda + cuDNN shim), strip, copy binaries
#   benches/gpu_session.sh dry-run BIN_DIR OUT_DIR   # anywhere: check every file, binary and argument; print the plan
#   benches/gpu_session.sh run     BIN_DIR OUT_DIR   # GPU machine: the session itself
#
# `run` prints device, driver, cuDNN and torch versions and torch's default SDPA backend; runs the CUDA test
# binary under compute-sanitizer on one small case (cuDNN attention), then the whole binary with cuDNN required
# (TRAINER_ATTENTION=cudnn) and the attention tests again with our kernels; times attention (ours: kernels and
# cuDNN; torch: default, FlashAttention-2, cuDNN) at B4 H32 T2048 D128, B16 H32 T512 D128 and Gemma-2B's MQA
# with head_dim 256; and LoRA q/k/v steps of Llama-2-7B- and Gemma-2B-shaped checkpoints (LAYERS decoder layers,
# default 4, so the random checkpoints are written in seconds) for us and for transformers + peft (default SDPA).
# Results are JSON lines under OUT_DIR; the log says which step took how long. Each step has its own timeout,
# and together they stay under 8 minutes.
#
# BIN_DIR (stage writes it; carry it to the GPU machine) holds bins.tar.xz: cuda_kernels_test, bench_kernels and
# gpu_step, stripped. Each embeds Candle's and our PTX (about 55 MB apiece, 164 MB together), which xz brings to
# about 22 MB, so that with the 13 MB working tree a device call's 64 MiB carry holds them. The GPU
# machine needs PyTorch (with triton), transformers and peft; the CUDA 13 libraries and libcudnn.so.9 are searched
# for (as shared/cuda/device-env.sh does) and put on LD_LIBRARY_PATH.
set -uo pipefail
mode=${1:-} BIN=${2:-}
OUT=${3:-}
here=$(cd "$(dirname "$0")/.." && pwd)
LAYERS=${LAYERS:-4}
BINARIES=(cuda_kernels_test bench_kernels gpu_step)
PY_SCRIPTS=(benches/attention_torch.py benches/gpu_step_peft.py benches/make_random_checkpoint.py)
CONFIGS=(benches/configs/llama-2-7b.json benches/configs/gemma-2b.json)
LLAMA_RUNS="--run 512,16,qkv --run 2048,4,qkv"
GEMMA_RUNS="--run 512,16,qkv --run 2048,4,qkv"
# Seconds per step: the plan's budget (the sum stays under 480).
declare -A BUDGET=([versions]=20 [sanitizer]=60 [tests_cudnn]=120 [tests_kernels]=40 [attn_ours]=45 [attn_torch]=45
                   [checkpoints]=50 [steps]=100)
usage() { echo "usage: $0 stage BIN_DIR | dry-run BIN_DIR OUT_DIR | run BIN_DIR OUT_DIR" >&2; exit 2; }
[ -n "$mode" ] && [ -n "$BIN" ] || usage

stage() {
  # Release builds with the cuDNN shim; tests and benches are found through cargo's JSON messages (their file
  # names carry a hash).
  source "$here/scripts/cudnn-toolchain.sh" || exit 1
  [ -n "${CUDA_ROOT:-}" ] || { echo "source ../shared/cuda/toolchain.sh first (CUDA 13 toolchain)" >&2; exit 1; }
  mkdir -p "$BIN"
  local msgs; msgs=$(mktemp)
  (cd "$here" && cargo build --release --features cuda --test cuda_kernels --bench cuda_kernels --bench gpu_step \
     --message-format=json-render-diagnostics) > "$msgs" || exit 1
  python3 - "$msgs" "$BIN" <<'EOF'
import json, shutil, sys
names = {("test", "cuda_kernels"): "cuda_kernels_test", ("bench", "cuda_kernels"): "bench_kernels", ("bench", "gpu_step"): "gpu_step"}
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        key = (m["target"]["kind"][0], m["target"]["name"])
        if key in names:
            shutil.copy(m["executable"], f"{sys.argv[2]}/{names[key]}")
EOF
  rm -f "$msgs"
  for b in "${BINARIES[@]}"; do strip "$BIN/$b" || exit 1; done
  du -ch "${BINARIES[@]/#/$BIN/}" | tail -1
  tar -C "$BIN" -cf - "${BINARIES[@]}" | xz -T1 -6 > "$BIN/bins.tar.xz" || exit 1
  (cd "$BIN" && rm -f "${BINARIES[@]}")
  du -h "$BIN/bins.tar.xz"
}

# The binaries, unpacked from BIN_DIR's archive into a scratch folder (BIN from here on).
unpack() {
  [ -f "$BIN/bins.tar.xz" ] || { echo "  MISSING: $BIN/bins.tar.xz (run: $0 stage $BIN)"; return 1; }
  local dir; dir=$(mktemp -d /tmp/gpu-bin.XXXXXX)
  xz -dc "$BIN/bins.tar.xz" | tar -C "$dir" -xf - || return 1
  BIN=$dir
}

# Every input of `run`, checked without running any of it.
check_inputs() {
  local ok=0
  for b in "${BINARIES[@]}"; do
    if [ ! -x "$BIN/$b" ]; then
      echo "  MISSING: $BIN/$b"; ok=1
    elif grep -q "cuDNN SDPA" "$BIN/$b"; then  # the shim's own messages: it was compiled in
      echo "  $BIN/$b ($(du -h "$BIN/$b" | cut -f1), cuDNN shim compiled in)"
    else
      echo "  $BIN/$b: no cuDNN shim in it (built without scripts/cudnn-toolchain.sh?)"; ok=1
    fi
  done
  for f in "${PY_SCRIPTS[@]}" "${CONFIGS[@]}"; do
    if [ -f "$here/$f" ]; then echo "  $f"; else echo "  MISSING: $f"; ok=1; fi
  done
  python3 -c "import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]" "${PY_SCRIPTS[@]/#/$here/}" || ok=1
  local total=0
  for s in "${!BUDGET[@]}"; do total=$((total + BUDGET[$s])); done
  echo "  step budgets sum to ${total}s (limit 480s)"
  [ "$total" -le 480 ] || ok=1
  # What a device call carries: the working tree (git's files, untracked ones too) plus BIN_DIR's archive.
  local mib; mib=$(du -sm --exclude=.git "$here" | cut -f1)
  echo "  working tree with the archive: ${mib} MiB (a device call carries at most 64)"
  [ "$mib" -le 64 ] || ok=1
  return $ok
}

# The CUDA 13 runtime libraries and libcudnn.so.9, wherever this machine's image put them (PyTorch's wheels).
find_libs() {
  local dirs="" f d
  for lib in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libcurand.so.10 libnvrtc.so.13 libcudnn.so.9; do
    f=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$lib" -print 2>/dev/null | head -1)
    if [ -z "$f" ]; then echo "not found: $lib" >&2; continue; fi
    d=$(dirname "$f"); case ":$dirs:" in *":$d:"*) ;; *) dirs="${dirs:+$dirs:}$d";; esac
    [ "$lib" = libcudnn.so.9 ] && export TRAINER_CUDNN_LIB=$f
  done
  export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# step NAME CMD...: runs CMD under NAME's budget, logs its time and exit status.
step() {
  local name=$1; shift
  local t0=$SECONDS
  # The plan goes to fd 3 (the terminal): the step's own redirections point into OUT_DIR.
  if [ -n "${DRY:-}" ]; then echo "[$name ≤${BUDGET[$name]}s] $*" >&3; return 0; fi
  timeout "${BUDGET[$name]}" "$@"
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0))s" | tee -a "$OUT/session.log" >&2
}

session() {
  mkdir -p "$OUT"
  export TRAINER_REPO=$here TRAINER_REQUIRE_CUDA=1 PYTHONUNBUFFERED=1
  [ -n "${DRY:-}" ] || find_libs
  step versions bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
    echo LD_LIBRARY_PATH=\$LD_LIBRARY_PATH TRAINER_CUDNN_LIB=\${TRAINER_CUDNN_LIB:-none};
    python3 -c 'import torch, transformers, peft; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version(), \"transformers\", transformers.__version__, \"peft\", peft.__version__)'" \
    > "$OUT/versions.txt" 2>&1
  # One small case under the sanitizer: the cuDNN shim's reads and writes of our buffers.
  step sanitizer bash -c "if command -v compute-sanitizer >/dev/null; then
      TRAINER_ATTENTION=cudnn compute-sanitizer --tool memcheck --error-exitcode 3 '$BIN/cuda_kernels_test' cudnn_attention_matches_reference --test-threads=1;
    else echo 'compute-sanitizer: not on this machine'; fi" > "$OUT/sanitizer.log" 2>&1
  step tests_cudnn env TRAINER_ATTENTION=cudnn "$BIN/cuda_kernels_test" --test-threads=1 > "$OUT/tests_cudnn.log" 2>&1
  step tests_kernels env TRAINER_ATTENTION=kernels "$BIN/cuda_kernels_test" attention --test-threads=1 > "$OUT/tests_kernels.log" 2>&1
  step attn_ours bash -c "TRAINER_ATTENTION=kernels '$BIN/bench_kernels' --attention-only; TRAINER_ATTENTION=cudnn '$BIN/bench_kernels' --attention-only" \
    > "$OUT/attention.jsonl" 2>"$OUT/attention.err"
  step attn_torch python3 "$here/benches/attention_torch.py" >> "$OUT/attention.jsonl" 2>>"$OUT/attention.err"
  step checkpoints bash -c "python3 '$here/benches/make_random_checkpoint.py' --layers $LAYERS '$here/benches/configs/llama-2-7b.json' /tmp/llama7b &&
    python3 '$here/benches/make_random_checkpoint.py' --layers $LAYERS '$here/benches/configs/gemma-2b.json' /tmp/gemma2b" > "$OUT/checkpoints.log" 2>&1
  # Our steps with TRAINER_ATTENTION=auto: cuDNN where it loads (the default is our kernels until this session
  # has checked cuDNN); the log line says which ran.
  step steps bash -c "TRAINER_ATTENTION=auto '$BIN/gpu_step' /tmp/llama7b --steps 3 $LLAMA_RUNS; python3 '$here/benches/gpu_step_peft.py' /tmp/llama7b --steps 3 $LLAMA_RUNS;
    TRAINER_ATTENTION=auto '$BIN/gpu_step' /tmp/gemma2b --steps 3 $GEMMA_RUNS; python3 '$here/benches/gpu_step_peft.py' /tmp/gemma2b --steps 3 $GEMMA_RUNS" \
    > "$OUT/steps.jsonl" 2>"$OUT/steps.err"
  if [ -z "${DRY:-}" ]; then
    grep -h "^test result\|panicked\|FAILED" "$OUT"/tests_*.log | head -20
    grep -h "^attention:" "$OUT"/*.log "$OUT"/*.err 2>/dev/null | sort | uniq -c
    cat "$OUT/versions.txt" "$OUT/attention.jsonl" "$OUT/steps.jsonl"
  fi
}

case $mode in
  stage) stage ;;
  dry-run)
    [ -n "$OUT" ] || usage
    echo "inputs:"; unpack && check_inputs; rc=$?
    echo "plan (binaries unpacked to $BIN, OUT_DIR=$OUT, LAYERS=$LAYERS):"; DRY=1 session 3>&1
    case $BIN in /tmp/gpu-bin.*) rm -rf "$BIN";; esac
    exit $rc ;;
  run)
    [ -n "$OUT" ] || usage
    unpack || exit 1
    check_inputs > /dev/null || { check_inputs; exit 1; }
    session ;;
  *) usage ;;
esac
