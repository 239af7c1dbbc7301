"""Torch's side of the attention timings in benches/cuda_kernels.rs (`--attention-only`): causal SDPA, forward
and forward+backward, at the same shapes in bf16, under torch's default choice and forced to FlashAttention-2
and to cuDNN's fused attention. Prints the backend the default picks for each shape, then one JSON object per
line (median of triton's do_bench after warm-up).

    python3 benches/attention_torch.py
"""
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

dev = "cuda"
bf = torch.bfloat16
SHAPES = [(4, 32, 32, 2048, 128), (16, 32, 32, 512, 128), (4, 8, 1, 2048, 256)]
BACKENDS = {"default": None, "flash2": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def default_choice(q, k, v, gqa):
    """The backend torch's dispatcher picks for these inputs (torch._fused_sdp_choice, the function that
    scaled_dot_product_attention itself asks)."""
    try:
        idx = torch._fused_sdp_choice(q, k, v, None, 0.0, True, enable_gqa=gqa)
        return SDPBackend(idx).name
    except Exception as e:  # a private API: say so instead of failing the session
        return f"unknown ({type(e).__name__}: {e})"


print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "device": torch.cuda.get_device_name()}), flush=True)
for b, h, hkv, t, d in SHAPES:
    q = torch.randn(b, h, t, d, device=dev, dtype=bf, requires_grad=True)
    k = torch.randn(b, hkv, t, d, device=dev, dtype=bf, requires_grad=True)
    v = torch.randn(b, hkv, t, d, device=dev, dtype=bf, requires_grad=True)
    dout = torch.randn(b, h, t, d, device=dev, dtype=bf)
    gqa = hkv != h
    shape = f"B{b} H{h} Hkv{hkv} T{t} D{d}"
    fwd_flops = 4 * b * h * d * t * t / 2
    choice = default_choice(q, k, v, gqa)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    for name, backend in BACKENDS.items():
        row = {"impl": "torch", "backend": name, "shape": shape}
        if name == "default":
            row["chosen"] = choice
        try:
            if backend is None:
                ms_f = bench(sdpa)
                ms_fb = bench(lambda: torch.autograd.grad(sdpa(), (q, k, v), dout))
            else:
                with sdpa_kernel(backend):
                    ms_f = bench(sdpa)
                    ms_fb = bench(lambda: torch.autograd.grad(sdpa(), (q, k, v), dout))
            row.update({"fwd_ms": ms_f, "fwd_bwd_ms": ms_fb, "fwd_bwd_tflops": 3.5 * fwd_flops / ms_fb / 1e9})
        except Exception as e:  # e.g. a backend that does not take this head dim or GQA
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(json.dumps(row), flush=True)
