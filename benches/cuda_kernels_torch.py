"""The torch side of benches/cuda_kernels.rs: the same ops at the same shapes in bf16 on the same GPU.

    python3 benches/cuda_kernels_torch.py

Attention is torch.nn.functional.scaled_dot_product_attention restricted to the flash backend; RMSNorm, RoPE,
SwiGLU and the LM head + cross-entropy are written as transformers writes them (LlamaRMSNorm,
apply_rotary_pos_emb, act(gate) * up, logits.float() then F.cross_entropy). Median of 20 timed runs
(triton.testing.do_bench) after warm-up; prints one JSON object per line.
"""
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

dev = "cuda"
bf = torch.bfloat16


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def report(op, shape, ms, key, value):
    print(json.dumps({"impl": "torch", "op": op, "shape": shape, "ms": ms, key: value}), flush=True)


def rnd(*shape, std=1.0, grad=False):
    return (torch.randn(*shape, device=dev) * std).to(bf).requires_grad_(grad)


b, h, t, d = 4, 32, 2048, 128
q, k, v = (rnd(b, h, t, d, grad=True) for _ in range(3))
dout = rnd(b, h, t, d)
fwd_flops = 4 * b * h * d * t * t / 2
with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
    ms_f = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ms_fb = bench(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), dout))
shape = f"B{b} H{h} T{t} D{d}"
report("attention fwd", shape, ms_f, "tflops", fwd_flops / ms_f / 1e9)
report("attention bwd", shape, ms_fb - ms_f, "tflops", 2.5 * fwd_flops / (ms_fb - ms_f) / 1e9)
report("attention fwd+bwd", shape, ms_fb, "tflops", 3.5 * fwd_flops / ms_fb / 1e9)


def rmsnorm(x, w, eps=1e-5):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


n, hid = 8192, 4096
x, w = rnd(n, hid, grad=True), rnd(hid)
dy = rnd(n, hid)
nbytes = n * hid * 2
ms = bench(lambda: rmsnorm(x, w))
report("rmsnorm fwd", f"{n}x{hid}", ms, "gbps", 2 * nbytes / ms / 1e6)
ms_fb = bench(lambda: torch.autograd.grad(rmsnorm(x, w), (x,), dy))
report("rmsnorm bwd", f"{n}x{hid}", ms_fb - ms, "gbps", 3 * nbytes / (ms_fb - ms) / 1e6)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


bb, tt = 4, 2048
rows = rnd(bb, tt, h * d, grad=True)
inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=dev).float() / d))
ang = torch.arange(tt, device=dev).float()[:, None] * inv[None]
emb = torch.cat((ang, ang), -1)
cos, sin = emb.cos().to(bf)[None, None], emb.sin().to(bf)[None, None]


def rope(r):
    qh = r.view(bb, tt, h, d).transpose(1, 2)  # what LlamaAttention does before apply_rotary_pos_emb
    return qh * cos + rotate_half(qh) * sin


nbytes = bb * tt * h * d * 2
dyh = rnd(bb, h, tt, d)
ms = bench(lambda: rope(rows))
report("rope fwd", f"{bb}x{tt}x{h}x{d}", ms, "gbps", 2 * nbytes / ms / 1e6)
ms_fb = bench(lambda: torch.autograd.grad(rope(rows), (rows,), dyh))
report("rope bwd", f"{bb}x{tt}x{h}x{d}", ms_fb - ms, "gbps", 2 * nbytes / (ms_fb - ms) / 1e6)

inter = 11008
g, u = rnd(n, inter, grad=True), rnd(n, inter, grad=True)
dh = rnd(n, inter)
nbytes = n * inter * 2
ms = bench(lambda: F.silu(g) * u)
report("swiglu fwd", f"{n}x{inter}", ms, "gbps", 3 * nbytes / ms / 1e6)
ms_fb = bench(lambda: torch.autograd.grad(F.silu(g) * u, (g, u), dh))
report("swiglu bwd", f"{n}x{inter}", ms_fb - ms, "gbps", 5 * nbytes / (ms_fb - ms) / 1e6)

for vocab, hd in [(32000, 4096), (256000, 2048)]:
    hs = rnd(n, hd, grad=True)
    wh = rnd(vocab, hd, std=0.02)
    tg = (torch.arange(n, device=dev) * 7919) % vocab
    flops = 2 * 2 * n * vocab * hd

    def step():
        loss = F.cross_entropy((hs @ wh.T).float(), tg)
        return torch.autograd.grad(loss, (hs,))

    try:
        torch.cuda.reset_peak_memory_stats()
        ms = bench(step)
        report("lm head + cross-entropy fwd+bwd", f"{n}x{hd} vocab {vocab}", ms, "gemm_tflops", flops / ms / 1e9)
    except torch.OutOfMemoryError:
        print(json.dumps({"impl": "torch", "op": "lm head + cross-entropy fwd+bwd", "shape": f"{n}x{hd} vocab {vocab}", "error": "out of memory"}))
    torch.cuda.empty_cache()
