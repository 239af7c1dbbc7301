#!/usr/bin/env python3
"""Builds data/tiny-llama: the tiny Llama checkpoint the quickstart (recipes/quickstart.toml) fine-tunes.

    python data/make_tiny_model.py            # from the repository root; a few minutes on 2 CPU cores

Steps:
  1. train a byte-level BPE tokenizer (vocab 1024; <pad>=0, <s>=1, </s>=2) on all text in data/samples/*.json but
     the two test sets (es-test.json, es-test-native.json), plus the alpaca prompt templates, so Spanish and the template phrases tokenize compactly;
  2. build a 4-layer LlamaForCausalLM (hidden 128, GQA 4/2 heads, tied embeddings), torch.manual_seed(0);
  3. pre-train it briefly (full parameters, AdamW 3e-3, cosine, 300 steps of 16 sequences)
     on every sample file except the five the quickstart fine-tunes and tests on (es-native, es-translated,
     es-round-trip, es-test, es-test-native): the alpaca-rendered en-native, ru-* and zh-* records and the multiturn-en/-es
     conversations as plain text. So it knows the alpaca format and a little Spanish, but none of the quickstart's
     Spanish instructions: what the quickstart's LoRA learns is learned there, and its loss falls;
  4. save it in bfloat16 with safetensors (no lm_head.weight, the embedding is tied) plus the tokenizer files;
  5. reload it with transformers and print the response-only loss on data/samples/es-native.json (not pre-trained
     on), trained vs. freshly initialised.

Needs torch, transformers and tokenizers (CPU is enough). Not a useful language model: for demos and tests only.
"""

import copy
import glob
import json
import math
import os
import shutil
import sys
import time

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "samples")
OUT = os.environ.get("TINY_LLAMA_OUT", os.path.join(HERE, "tiny-llama"))  # the env var: to try variants elsewhere

VOCAB_SIZE = 1024
SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2
PAD, BOS, EOS = 0, 1, 2

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

# The quickstart fine-tunes on these and evaluates on es-test and es-test-native: the model never sees them in pre-training, so what
# the quickstart's LoRA learns (Spanish instructions in the alpaca format) is learned there, not recalled.
QUICKSTART = ["es-native.json", "es-translated.json", "es-round-trip.json", "es-test.json", "es-test-native.json"]
TEST_SETS = ["es-test.json", "es-test-native.json"]
# The tokenizer sees every sample file but the test sets (Spanish must tokenize compactly); pre-training sees the
# rest.
ALL = sorted(os.path.basename(p) for p in glob.glob(os.path.join(SAMPLES, "*.json")))
TOKENIZER_FILES = [n for n in ALL if n not in TEST_SETS]
PRETRAIN_FILES = [n for n in ALL if n not in QUICKSTART]

MAX_STEPS = 300
BATCH = 16
MAX_SEQ = 256
LR = 3e-3
WARMUP = 10


README = """# tiny-llama

A tiny Llama checkpoint for demos and tests: the model the quickstart (`recipes/quickstart.toml`) fine-tunes with
LoRA on CPU in about a minute. **Not a useful language model.**

It is a random initialisation (`torch.manual_seed(0)`) given a brief full-parameter pre-training on part of this
repository's own sample data, made by `data/make_tiny_model.py`. Nothing in it comes from a pretrained model or a
third-party dataset.

- Model: `LlamaForCausalLM`, vocab 1024, hidden 128, 4 layers, 4 attention heads / 2 key-value heads (head dim 32),
  intermediate 344, max positions 512, RMSNorm eps 1e-5, RoPE theta 10000, tied input/output embeddings
  (no `lm_head.weight` in the file), {n_params} parameters, stored in bfloat16 (`model.safetensors`).
- Tokenizer: byte-level BPE (vocab 1024) trained on all text in `data/samples/*.json` except `es-test.json` (and `es-test-native.json`, written later), plus
  the alpaca templates;
  `<pad>`=0, `<s>`=1 (BOS, prepended by `encode(..., add_special_tokens=True)`), `</s>`=2 (EOS).
- Pre-training: AdamW lr 3e-3, 10 warmup steps then cosine to 0, {steps} steps of 16 sequences (max 256 tokens),
  loss on all tokens; loss {first:.2f} -> {last:.2f} (mean of the last 10 steps), on {n_alpaca} alpaca records
  rendered with the alpaca prompt template and {n_conv} conversations as plain text, from
  {files}.
  **Not pre-trained on** the quickstart's fine-tuning and test data — `es-native.json`, `es-translated.json`,
  `es-round-trip.json`, `es-test.json` and `es-test-native.json` —, so the quickstart's LoRA learns its Spanish instructions rather
  than recalling them; the only Spanish the model saw is `multiturn-es.json`'s 8 conversations.
- Made with torch {torch_version}, transformers {tf_version}, tokenizers {tok_version}.

Regenerate (from the repository root; torch, transformers and tokenizers on CPU; a few minutes on 2 cores):

```sh
python data/make_tiny_model.py
```

It rewrites this directory, including this file, and prints the pre-training loss and, as a check, the
response-only loss on `data/samples/es-native.json` (not pre-trained on) for the trained and the untrained model.
"""


def write_readme(out, n_params, losses, n_alpaca, n_conv):
    import tokenizers

    text = README.format(
        n_params=f"{n_params:,}",
        files=", ".join(f"`{n}`" for n in PRETRAIN_FILES),
        n_alpaca=n_alpaca,
        n_conv=n_conv,
        steps=len(losses),
        first=losses[0],
        last=sum(losses[-10:]) / len(losses[-10:]),
        torch_version=torch.__version__.split("+")[0],
        tf_version=transformers.__version__,
        tok_version=tokenizers.__version__,
    )
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)


def render(rec):
    if rec.get("input", ""):
        return PROMPT_INPUT.format(instruction=rec["instruction"], input=rec["input"])
    return PROMPT_NO_INPUT.format(instruction=rec["instruction"])


def load_samples(names):
    alpaca, multiturn = [], []
    for path in sorted(os.path.join(SAMPLES, n) for n in names):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for rec in data:
            if "conversations" in rec:
                multiturn.append([turn["value"] for turn in rec["conversations"]])
            else:
                alpaca.append(rec)
    return alpaca, multiturn


def train_tokenizer(alpaca, multiturn):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = []
    for rec in alpaca:  # the rendered prompt carries the template's fixed text once per record
        texts.append(render(rec))
        texts.append(rec["output"])
    for conv in multiturn:
        texts.extend(conv)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    assert [tok.token_to_id(t) for t in SPECIALS] == [PAD, BOS, EOS], "special token ids"
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    return tok


def write_tokenizer(tok, out):
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, t in enumerate(SPECIALS)
        },
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


def encode_pair(encode, rec):
    """encode(prompt, with BOS) + encode(output, without) + [EOS]; returns ids and the prompt length."""
    prompt = encode(render(rec), True)
    resp = encode(rec["output"], False)
    return prompt + resp + [EOS], len(prompt)


def make_config():
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=344,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )


def pad_batch(seqs):
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, : len(s)] = torch.tensor(s)
    return ids, mask, labels


def pretrain(model, seqs):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)

    def lr_at(step):  # linear warmup, cosine to 0 over MAX_STEPS
        if step < WARMUP:
            return (step + 1) / WARMUP
        return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (MAX_STEPS - WARMUP)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(0)

    def epoch_batches():
        # Shuffle, then sort within windows of 8 batches by length so that batches pad little; shuffle batches.
        order = torch.randperm(len(seqs), generator=gen).tolist()
        order = order[: len(order) // BATCH * BATCH]
        batches = []
        for w in range(0, len(order), 8 * BATCH):
            window = sorted(order[w : w + 8 * BATCH], key=lambda i: len(seqs[i]))
            batches += [window[b : b + BATCH] for b in range(0, len(window), BATCH)]
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    pending = []
    losses = []
    t0 = time.time()
    for step in range(MAX_STEPS):
        if not pending:
            pending = epoch_batches()
        batch = [seqs[i] for i in pending.pop()]
        ids, mask, labels = pad_batch(batch)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == MAX_STEPS - 1:
            print(f"  step {step:4d}  loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:5.1f}s")
    model.eval()
    return losses, time.time() - t0


@torch.no_grad()
def response_loss(model, encode, records):
    """Token-weighted mean next-token NLL over response tokens + EOS, all records."""
    total, count = 0.0, 0
    for rec in records:
        ids, plen = encode_pair(encode, rec)
        ids = ids[:MAX_SEQ]
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        tgt = x[0, 1:]
        nll = -logp.gather(1, tgt[:, None])[:, 0]
        resp = nll[plen - 1 :]  # positions predicting ids[plen:]
        total += resp.sum().item()
        count += resp.numel()
    return total / count, count


def main():
    t_start = time.time()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")

    tok_alpaca, tok_multiturn = load_samples(TOKENIZER_FILES)
    print(f"tokenizer samples: {len(tok_alpaca)} alpaca records, {len(tok_multiturn)} conversations")
    alpaca, multiturn = load_samples(PRETRAIN_FILES)
    print(f"pre-training samples ({', '.join(PRETRAIN_FILES)}): {len(alpaca)} alpaca records, "
          f"{len(multiturn)} conversations")

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)

    tok = train_tokenizer(tok_alpaca, tok_multiturn)
    write_tokenizer(tok, OUT)

    def encode(text, special):
        return tok.encode(text, add_special_tokens=special).ids

    for name, tmpl in [("no-input", PROMPT_NO_INPUT), ("input", PROMPT_INPUT)]:
        fixed = tmpl.format(instruction="", input="")
        print(f"template ({name}) fixed text: {len(fixed)} chars -> {len(encode(fixed, False))} tokens")

    seqs = [encode_pair(encode, r)[0][:MAX_SEQ] for r in alpaca]
    # Conversations as plain text, turns separated by blank lines: Spanish (and English) prose outside the
    # alpaca format, so the model knows some Spanish before the quickstart teaches it the Spanish instructions.
    seqs += [(encode("\n\n".join(conv), True) + [EOS])[:MAX_SEQ] for conv in multiturn]
    lens = sorted(len(s) for s in seqs)
    print(f"pre-training sequences: {len(seqs)}, tokens {sum(lens)}, length min/median/max "
          f"{lens[0]}/{lens[len(lens) // 2]}/{lens[-1]}")

    torch.manual_seed(0)
    model = LlamaForCausalLM(make_config())
    model.generation_config.bos_token_id = BOS
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters (tied embedding counted once)")
    untrained = copy.deepcopy(model).eval()

    losses, secs = pretrain(model, seqs)
    k = 10
    print(f"pre-training: {len(losses)} steps in {secs:.1f} s; loss first {losses[0]:.4f} last {losses[-1]:.4f}; "
          f"mean of first {k} {sum(losses[:k]) / k:.4f}, last {k} {sum(losses[-k:]) / k:.4f}")

    model.to(torch.bfloat16)
    model.save_pretrained(OUT, safe_serialization=True)
    write_readme(OUT, n_params, losses, len(alpaca), len(multiturn))

    # Checks on what was written.
    with open(os.path.join(OUT, "config.json")) as f:
        cfg = json.load(f)
    dtype = cfg.get("dtype", cfg.get("torch_dtype"))
    assert dtype == "bfloat16", f"config dtype {dtype}"
    assert cfg["tie_word_embeddings"] is True
    from safetensors import safe_open

    with safe_open(os.path.join(OUT, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert "lm_head.weight" not in keys, "lm_head.weight was written"
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in keys)
    assert os.path.exists(os.path.join(OUT, "generation_config.json"))

    # Reload as a user would and compare trained vs. untrained on es-native.
    htok = AutoTokenizer.from_pretrained(OUT)
    for text in ["Hola, ¿qué tal?", PROMPT_NO_INPUT.format(instruction="Name the largest planet.")]:
        a = htok(text, add_special_tokens=True)["input_ids"]
        b = encode(text, True)
        assert a == b and a[0] == BOS and a[1] != BOS, (a, b)
    assert htok.decode(encode("¿En qué ciudad? 北京。 Москва", False)) == "¿En qué ciudad? 北京。 Москва"
    reloaded = AutoModelForCausalLM.from_pretrained(OUT, dtype=torch.float32).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()

    def hf_encode(text, special):
        return htok(text, add_special_tokens=special)["input_ids"]

    with open(os.path.join(SAMPLES, "es-native.json"), encoding="utf-8") as f:
        es = json.load(f)
    trained_loss, ntok = response_loss(reloaded, hf_encode, es)
    untrained_loss, _ = response_loss(untrained.float(), hf_encode, es)
    print(f"es-native response loss ({len(es)} records, {ntok} target tokens, float32): "
          f"trained {trained_loss:.4f}, untrained {untrained_loss:.4f} (ln {VOCAB_SIZE} = {math.log(VOCAB_SIZE):.4f})")

    for name in sorted(os.listdir(OUT)):
        print(f"  {name:28s} {os.path.getsize(os.path.join(OUT, name)):>9d} bytes")
    with open(os.path.join(OUT, "config.json")) as f:
        print("config.json:\n" + f.read())
    print(f"total {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
