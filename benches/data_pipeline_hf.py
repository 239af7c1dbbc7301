"""Reference for `cargo bench --bench data_pipeline`: the same read -> alpaca template -> tokenize -> pad to
batches of 8 in Python with transformers' fast Llama-2 tokenizer (batched, Rust core, all threads).

    python3 benches/data_pipeline_hf.py
"""
import json
import os
import statistics
import time
import warnings

warnings.filterwarnings("ignore")
from transformers import AutoTokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared")
FILE = os.path.join(SHARED, "data/good-data-or-bad-eval/aya_native/aya_native_data_processed.es.json")
NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
WITH_INPUT = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


def run(tok):
    records = json.load(open(FILE))
    prompts = [(WITH_INPUT if r["input"] else NO_INPUT).format(**r) for r in records]
    p = tok(prompts, add_special_tokens=True)["input_ids"]
    o = tok([r["output"] for r in records], add_special_tokens=False)["input_ids"]
    seqs = [a + b + [tok.eos_token_id] for a, b in zip(p, o)]
    batches = []
    for i in range(0, len(seqs), 8):
        chunk = seqs[i : i + 8]
        t = max(map(len, chunk))
        batches.append([s + [0] * (t - len(s)) for s in chunk])
    return len(seqs), sum(map(len, seqs))


tok = AutoTokenizer.from_pretrained(os.path.join(SHARED, "tokenizers/llama2"))
times = []
for _ in range(3):
    t0 = time.perf_counter()
    n, tokens = run(tok)
    times.append(time.perf_counter() - t0)
m = statistics.median(times)
print(json.dumps({"tokenizer": "llama-2 via transformers", "examples": n, "tokens": tokens, "median_s": m, "examples_per_s": n / m, "tokens_per_s": tokens / m}))
