"""transformers + peft side of benches/gpu_step.rs: the same LoRA training step (same token ids, micro-batch,
sequence, LoRA r8 alpha16 dropout 0.05, AdamW lr 1e-4 wd 0.01, clipping at 1.0) with SDPA attention in bf16.

    python3 benches/gpu_step_peft.py MODEL_DIR --steps 5 --run 512,16,qkv --run 2048,4,all,gc ...

`gc` turns on transformers' gradient checkpointing (the counterpart of the trainer's `recompute`). Memory is
sampled every 2 ms as used device memory (total − free), the same measure as gpu_step.rs; torch's own
max_memory_allocated is printed beside it. Prints one JSON object per run.
"""
import argparse
import json
import threading
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

PEAK_TFLOPS = 989.4
p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--steps", type=int, default=5)
p.add_argument("--run", action="append", default=[])
args = p.parse_args()

peak = [0]
stop = False


def sample():
    while not stop:
        free, total = torch.cuda.mem_get_info()
        peak[0] = max(peak[0], total - free)
        time.sleep(0.002)


torch.cuda.init()
threading.Thread(target=sample, daemon=True).start()
t0 = time.time()
base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
print(f"loaded {args.model} in {time.time() - t0:.1f}s", flush=True)
cfg = base.config
head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
linear = sum(m.weight.numel() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
n_params = linear + cfg.vocab_size * cfg.hidden_size
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

for run in args.run:
    parts = run.split(",")
    seq, micro, targets = int(parts[0]), int(parts[1]), parts[2]
    gc = "gc" in parts[3:]
    line = {"impl": "peft", "model": args.model, "seq": seq, "micro_batch": micro, "targets": targets, "recompute": gc}
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                            target_modules=ALL[:3] if targets == "qkv" else ALL))
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    v = cfg.vocab_size
    ids = torch.tensor([[(t * 31 + i * 7) % (v - 3) + 3 for t in range(seq)] for i in range(micro)], device="cuda")
    times = []
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        peak[0] = 0
        for step in range(args.steps + 2):
            t = time.time()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.time() - t)
        timed = sorted(times[2:])
        median = timed[len(timed) // 2]
        tps = micro * seq / median
        flops_per_token = 4 * n_params + 6 * seq * cfg.num_attention_heads * head_dim * cfg.num_hidden_layers
        time.sleep(0.01)
        line.update(step_s=median, tokens_per_s=tps, peak_gib=peak[0] / 2**30,
                    max_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                    mfu=tps * flops_per_token / (PEAK_TFLOPS * 1e12), times_s=times[2:])
    except torch.OutOfMemoryError as e:
        line["error"] = "out of memory"
    print(json.dumps(line), flush=True)
    del opt, params
    if gc:
        model.gradient_checkpointing_disable()
    base = model.unload()
    del model
    torch.cuda.empty_cache()
stop = True
