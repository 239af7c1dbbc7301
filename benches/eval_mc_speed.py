"""Multiple-choice scoring speed: `trainer eval --task mc` against lm-evaluation-harness's HF backend, same machine,
same model, same items, run back to back (BENCHMARKS.md, "Multiple-choice evaluation speed").

    python3 benches/eval_mc_speed.py --trainer after=PATH [--trainer before=PATH ...] [--repeats 3]
        [--lm-eval-batch 1 --lm-eval-batch 16] [--work DIR] [--items 200]

The first run writes, under --work (default ~/.cache/trainer-bench-mc, never committed):
  model/  a random-weight Llama (hidden 512, 8 layers, 8 heads / 4 KV heads, intermediate 1408, Llama-2's 32,000
          token vocabulary and tokenizer from ../shared/tokenizers/llama2; 56M parameters), float32, seed 0;
  data/   an MMLU-layout test file of synthetic items (made-up sentences from a fixed word list, seeded: never real
          benchmark items; questions of 15-110 words, four choices of 1-12 words, all of subject `anatomy`) and
          a 5-item dev file (lm-eval's MMLU config names a dev split);
  tasks/  an lm-eval task that includes lm-eval's own mmlu_anatomy.yaml and points it at those files, so both
          tools build the same zero-shot prompt ("The following are multiple choice questions (with answers)
          about anatomy.\n\n{question}\nA. ...\nAnswer:", continuations " A" … " D").

Each repeat runs every trainer binary and then lm-eval at each batch size, one after the other (the machine is
shared: alternating spreads load changes over all of them). Each command is timed whole, start-up included, in
wall-clock seconds and in CPU seconds (user + system of it and its children): on a loaded shared machine wall time
mostly measures the other users, CPU time much less so. The start-up of each tool (the same command on a 1-item
file, once) is reported beside them and subtracted for the CPU-time ratio. Accuracies are printed as a check that
both scored the same items the same way.
"""
import argparse, glob, json, os, random, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = ("the a of to and in is was for on that with as by at from this which be are or an it not have has but "
         "bone muscle nerve artery vein cell tissue organ heart lung liver kidney brain spine skull joint blood "
         "membrane gland hormone enzyme protein lobe cortex valve chamber vessel fibre cartilage tendon ligament "
         "upper lower left right anterior posterior medial lateral deep superficial proximal distal major minor "
         "supplies drains connects separates protects forms lies passes enters leaves crosses surrounds contains "
         "patient injury damage loss function movement sensation pressure flow rate signal response structure "
         "which following most likely best describes primarily responsible located between within during after").split()


def sentence(rng, lo, hi):
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize()


def write_items(path, n, rng):
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            row = {"question": sentence(rng, 15, 110) + "?", "subject": "anatomy", "choices": [sentence(rng, 1, 12) for _ in range(4)], "answer": rng.randrange(4)}
            f.write(json.dumps(row) + "\n")


def prepare(work, items, tokenizer_dir):
    model = work / "model"
    if not (model / "config.json").exists():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, intermediate_size=1408,
                          vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
        torch.manual_seed(0)
        m = LlamaForCausalLM(cfg).to(torch.float32)
        tmp = Path(tempfile.mkdtemp(dir=work))
        m.save_pretrained(tmp)
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy(f, tmp / f.name)
        os.replace(tmp, model)
        print(f"{model}: {sum(p.numel() for p in m.parameters()) / 1e6:.0f}M parameters", file=sys.stderr)
    data = work / "data"
    data.mkdir(exist_ok=True)
    rng = random.Random(0)
    write_items(data / "test.jsonl", items, rng)
    write_items(data / "dev.jsonl", 5, rng)
    write_items(data / "one.jsonl", 1, rng)
    import lm_eval
    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    include = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "mmlu_anatomy.yaml"
    for name, test in [("bench_mc", "test.jsonl"), ("bench_mc_one", "one.jsonl")]:
        (tasks / f"{name}.yaml").write_text("\n".join([
            f"include: {include}", f"task: {name}", "tag: []", "dataset_path: json", "dataset_name: null",
            "dataset_kwargs:", "  data_files:", f"    test: {data / test}", f"    dev: {data / 'dev.jsonl'}", ""]))
    return model, data, tasks


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd):
    """(wall s, CPU s of the command and its children, stdout)."""
    t, c = time.perf_counter(), cpu_seconds()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt, dc = time.perf_counter() - t, cpu_seconds() - c
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{p.stderr[-3000:]}")
    return dt, dc, p.stdout


def trainer_cmd(binary, model, test, batch):
    return [binary, "eval", "--model", model, "--task", "mc", "--format", "mmlu", "--data", test, "--dtype", "f32", "--batch-size", str(batch), "--json"]


def lm_eval_cmd(model, tasks, task, batch, out):
    return ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu", "--tasks", task,
            "--include_path", tasks, "--batch_size", str(batch), "--output_path", out]


def lm_eval_acc(out):
    files = sorted(glob.glob(os.path.join(out, "**", "results_*.json"), recursive=True), key=os.path.getmtime)
    return json.loads(Path(files[-1]).read_text())["results"]["bench_mc"]["acc,none"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", action="append", required=True, help="NAME=PATH of a trainer binary (repeatable)")
    ap.add_argument("--trainer-batch", type=int, default=8, help="trainer eval --batch-size (its default)")
    ap.add_argument("--lm-eval-batch", action="append", type=int, help="lm-eval batch sizes (default: 1, its default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/trainer-bench-mc"))
    ap.add_argument("--tokenizer", default=str(REPO.parent / "shared" / "tokenizers" / "llama2"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model, data, tasks = prepare(work, a.items, a.tokenizer)
    bins = [t.split("=", 1) for t in a.trainer]
    batches = a.lm_eval_batch or [1]
    out = str(work / "lm_eval_out")
    configs = [(f"trainer {n} (batch {a.trainer_batch})", lambda b=b, f="test.jsonl": trainer_cmd(b, str(model), str(data / f), a.trainer_batch)) for n, b in bins]
    configs += [(f"lm-eval hf (batch {k})", lambda k=k, t="bench_mc": lm_eval_cmd(str(model), str(tasks), t, k, out)) for k in batches]
    startup = {}
    for n, b in bins:
        startup[f"trainer {n} (batch {a.trainer_batch})"] = run(trainer_cmd(b, str(model), str(data / "one.jsonl"), a.trainer_batch))[:2]
    for k in batches:
        startup[f"lm-eval hf (batch {k})"] = run(lm_eval_cmd(str(model), str(tasks), "bench_mc_one", k, out + "_one"))[:2]
    times = {name: [] for name, _ in configs}
    accs = {}
    for r in range(a.repeats):
        for name, cmd in configs:
            dt, dc, stdout = run(cmd())
            times[name].append((dt, dc))
            accs[name] = json.loads(stdout)["acc"] if name.startswith("trainer") else lm_eval_acc(out)
            print(f"repeat {r + 1}: {name}: {dt:.1f} s wall, {dc:.1f} s CPU, acc {accs[name]:.4f}", file=sys.stderr)
    print(f"load: {os.getloadavg()}, {os.cpu_count()} cores", file=sys.stderr)
    ref = f"lm-eval hf (batch {batches[0]})"
    med = {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for name, ts in times.items()}
    print(f"| command | wall s | CPU s | start-up wall / CPU s (1 item) | items/s (wall) | items per CPU s, start-up subtracted | speed vs {ref}: wall / CPU, start-up subtracted | acc | runs: wall/CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _ in configs:
        (w, c), (sw, sc) = med[name], startup[name]
        net = max(c - sc, 1e-9)
        ref_net = med[ref][1] - startup[ref][1]
        print(f"| {name} | {w:.1f} | {c:.1f} | {sw:.1f} / {sc:.1f} | {a.items / w:.2f} | {a.items / net:.2f} | {med[ref][0] / w:.2f}× / {ref_net / net:.2f}× | {accs[name]:.4f} | {' '.join(f'{x:.0f}/{y:.0f}' for x, y in times[name])} |")

if __name__ == "__main__":
    main()
