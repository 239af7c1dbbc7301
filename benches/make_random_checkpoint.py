"""Writes a randomly initialised checkpoint in Hugging Face layout (config.json + sharded bf16 safetensors)
with the exact shapes of a real model, for the GPU benchmarks: no download, same shapes.

    python3 benches/make_random_checkpoint.py CONFIG_JSON OUT_DIR [TOKENIZER_DIR]

CONFIG_JSON is a model's config.json (../shared/tokenizers/configs holds Llama-2-7B's and Gemma-2B's). The
weights are drawn on the GPU when there is one (transformers' own initialisation, seed 0). A tokenizer dir, if
given, is copied beside the weights so that `trainer run` can use the checkpoint.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

config_path, out = sys.argv[1], Path(sys.argv[2])
raw = json.loads(Path(config_path).read_text())
raw.pop("torch_dtype", None)
cfg = AutoConfig.for_model(**raw)
torch.manual_seed(0)
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
model.save_pretrained(out, max_shard_size="5GB")
if len(sys.argv) > 3:
    for f in Path(sys.argv[3]).iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
print(f"{out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")
