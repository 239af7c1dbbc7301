#!/usr/bin/env python3
"""PyTorch reference timing of one CPU LoRA training step, for comparison with
`cargo bench --bench train_step`.

Model: LlamaForCausalLM, random init, hidden 256, 4 layers, 4 heads (4 kv heads),
intermediate 688, vocab 320, float32, eager attention.  PEFT LoRA r=8, alpha=16,
dropout 0.05 on q_proj,k_proj,v_proj; AdamW (lr 1e-4).  One step = forward + backward
(over --batch sequences of --seq tokens, split into micro-batches of --micro) +
optimizer.step() + zero_grad().  The loss is next-token cross-entropy over all tokens,
sum / #targets (the trainer's convention), computed outside the model.

    python3 benches/train_step_torch.py [--threads N] [--steps 5] [--batch 8] [--micro 8]
                                        [--seq 256] [--vocab 320]

Prints one JSON object: {"median_s", "mean_s", "min_s", "max_s", "steps", "threads", ...}.
"""

import argparse
import warnings
import json
import os
import platform
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro", type=int, default=None, help="micro-batch size (default: --batch)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=320)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    micro = args.micro or args.batch
    assert args.batch % micro == 0, "--batch must be a multiple of --micro"

    import torch
    import transformers
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate, max_position_embeddings=max(512, args.seq),
        rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )
    base = LlamaForCausalLM._from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    lcfg = LoraConfig(task_type="CAUSAL_LM", r=args.rank, lora_alpha=args.alpha,
                      lora_dropout=args.dropout, bias="none",
                      target_modules=["q_proj", "k_proj", "v_proj"])
    model = get_peft_model(base, lcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(3, args.vocab, (args.batch, args.seq), generator=g)
    attn = torch.ones_like(ids)
    pos = torch.arange(args.seq).unsqueeze(0).expand(micro, args.seq)
    n_targets = args.batch * (args.seq - 1)

    def step():
        for s in range(0, args.batch, micro):
            x = ids[s : s + micro]
            logits = model(input_ids=x, attention_mask=attn[s : s + micro], position_ids=pos,
                           use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1),
                reduction="sum") / n_targets
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)

    print(json.dumps({
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "micro_batch": micro,
        "seq": args.seq,
        "tokens_per_s": args.batch * args.seq / statistics.median(times),
        "trainable_params": n_trainable,
        "total_params": n_total,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
