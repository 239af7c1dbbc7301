"""Writes a randomly initialised checkpoint in Hugging Face layout (config.json + sharded bf16 safetensors)
with the exact shapes of a real model, for the GPU benchmarks: no download, same shapes.

    python3 benches/make_random_checkpoint.py [--layers N] CONFIG_JSON OUT_DIR [TOKENIZER_DIR]

CONFIG_JSON is a model's config.json (benches/configs holds Llama-2-7B's and Gemma-2B's). `--layers N` keeps
the first N decoder layers (every shape stays the model's): a device session that must fit in minutes measures
per-layer speed without writing 13 GB. The
weights are drawn on the GPU when there is one (transformers' own initialisation, seed 0). A tokenizer dir, if
given, is copied beside the weights so that `trainer run` can use the checkpoint.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

argv = sys.argv[1:]
layers = None
if argv[:1] == ["--layers"]:
    layers, argv = int(argv[1]), argv[2:]
config_path, out = argv[0], Path(argv[1])
raw = json.loads(Path(config_path).read_text())
raw.pop("torch_dtype", None)
if layers is not None:
    raw["num_hidden_layers"] = layers
cfg = AutoConfig.for_model(**raw)
torch.manual_seed(0)
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
model.save_pretrained(out, max_shard_size="5GB")
if len(argv) > 2:
    for f in Path(argv[2]).iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
print(f"{out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")
