"""One LLaMA-style decoder layer, BF16 linears vs W4A4 linears (the kernel choose_kernel picks).

    python benchmarks/layers/bench_decoder_layer.py [--model llama2-7b] [--out DIR]
    python benchmarks/layers/bench_decoder_layer.py --dry     (CPU, tiny shapes, logic only)

Layer: RMSNorm → qkv → SDPA (causal prefill / one-token decode against a KV cache) → o →
residual → RMSNorm → gate_up → SiLU·mul → down → residual; attention stays BF16 in both
variants (a 16-bit KV cache, as the server runs it). Cases (DuQuant paper, Table 7 style):
prefill 2048 tokens at batch 1/4/16, decode batch 64 with 2048 cached tokens. Reports median
ms (`triton.testing.do_bench`; CUDA graphs for decode), speedup and peak memory; JSON lines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.models import MODELS, Model  # noqa: E402
from duquant_serve.core.pack import pack_int4  # noqa: E402
from duquant_serve.core.quant import quantize_per_channel  # noqa: E402
from duquant_serve.kernels.base import LayerSpec  # noqa: E402
from duquant_serve.kernels.random_cases import random_transform  # noqa: E402
from duquant_serve.kernels.select import choose_kernel  # noqa: E402


class Linears:
    """The four linears of a layer, either BF16 weights or prepared W4A4 kernels."""

    def __init__(self, shapes: dict[str, tuple[int, int]], quant: bool, dev: str,
                 dtype: torch.dtype, g: torch.Generator) -> None:
        self.quant = quant
        self.w: dict = {}
        self.kernel: dict = {}
        cap = torch.cuda.get_device_capability() if dev == "cuda" else None
        for name, (n, k) in shapes.items():
            w = torch.randn(n, k, generator=g) / math.sqrt(k)
            if not quant:
                self.w[name] = w.to(dev, dtype)
                continue
            b = 128 if k % 128 == 0 else 64
            gt = torch.Generator().manual_seed(n * 7 + k)  # transforms: own stream, so that
            t = random_transform(k, b, False, gt)  # weights match BF16's
            q, s, z = quantize_per_channel(t.apply_to_weight(w), 4, 1.0)
            spec = LayerSpec(k, n, b, act_dtype=dtype, device_type=dev, capability=cap)
            kern = choose_kernel(spec, layer_name=name)
            self.kernel[name] = kern
            self.w[name] = kern.prepare(spec, pack_int4(q), s, z, t, None, 1.0, device=dev)

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.quant:
            return self.kernel[name].apply(self.w[name], x)
        return F.linear(x, self.w[name])


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)


def layer_forward(lin: Linears, x: torch.Tensor, m: Model, kv: tuple | None) -> torch.Tensor:
    """x [B, T, H]; kv = (k_cache, v_cache) [B, kvh, S, d] for decode, None for prefill."""
    hidden, heads, kvh, d = m.hidden, m.heads, m.kv_heads, m.head_dim
    bsz, t, _ = x.shape
    h = rms_norm(x)
    qkv = lin("qkv", h)
    q, k, v = qkv.split([heads * d, kvh * d, kvh * d], dim=-1)
    q = q.view(bsz, t, heads, d).transpose(1, 2)
    k = k.view(bsz, t, kvh, d).transpose(1, 2)
    v = v.view(bsz, t, kvh, d).transpose(1, 2)
    if kv is not None:
        k = torch.cat((kv[0], k), dim=2)
        v = torch.cat((kv[1], v), dim=2)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=kv is None, enable_gqa=kvh != heads)
    x = x + lin("o", a.transpose(1, 2).reshape(bsz, t, hidden))
    gu = lin("gate_up", rms_norm(x))
    g_, u = gu.chunk(2, dim=-1)
    return x + lin("down", F.silu(g_) * u)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama2-7b", choices=sorted(MODELS))
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--dry", action="store_true")
    args = ap.parse_args()
    dev = "cpu" if args.dry else "cuda"
    model = "tiny" if args.dry else args.model
    m = MODELS[model]
    hidden, kvh, d = m.hidden, m.kv_heads, m.head_dim
    shapes = m.site_linears()
    dtype = torch.float32 if args.dry else torch.bfloat16
    cases = ([("prefill", 1, 16), ("decode", 4, 32)] if args.dry else
             [("prefill", 1, 2048), ("prefill", 4, 2048), ("prefill", 16, 2048),
              ("decode", 64, 2048)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, bsz, tokens in cases:
        row = dict(device=torch.cuda.get_device_name() if dev == "cuda" else "cpu",
                   model=model, case=kind, batch=bsz, tokens=tokens)
        for variant in ("bf16", "w4a4"):
            if dev == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            # Same seed for both variants: same weights and inputs, so outputs are comparable.
            g = torch.Generator().manual_seed(0)
            lin = Linears(shapes, variant == "w4a4", dev, dtype, g)
            t_in = tokens if kind == "prefill" else 1
            gx = torch.Generator().manual_seed(1)
            x = torch.randn(bsz, t_in, hidden, generator=gx).to(dev, dtype)
            kv = None if kind == "prefill" else tuple(
                torch.randn(bsz, kvh, tokens, d, generator=gx).to(dev, dtype) for _ in range(2))

            def fn(lin=lin, x=x, kv=kv):
                return layer_forward(lin, x, m, kv)

            if dev == "cuda":
                import triton.testing as tt

                fn()
                torch.cuda.synchronize()
                ms = (tt.do_bench_cudagraph(fn, rep=50, return_mode="median") if kind == "decode"
                      else tt.do_bench(fn, warmup=10, rep=100, return_mode="median"))
                row[f"{variant}_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            else:
                t0 = time.perf_counter()
                fn()
                ms = (time.perf_counter() - t0) * 1e3
            row[f"{variant}_ms"] = float(ms)
            y = fn().float()
            if variant == "bf16":
                y_bf16 = y
            else:  # W4A4 quantization error of the whole layer, a sanity check, not a target
                row["w4a4_rel_diff_vs_bf16"] = float((y - y_bf16).norm() / y_bf16.norm())
            if variant == "w4a4":
                row["kernels"] = sorted({k.name for k in lin.kernel.values()})
            del lin
        row["speedup"] = row["bf16_ms"] / row["w4a4_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(out / "decoder_layer.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"\n{'case':>8} {'B':>3} {'T':>5} {'bf16 ms':>9} {'w4a4 ms':>9} {'x':>5}")
    for r in rows:
        print(f"{r['case']:>8} {r['batch']:>3} {r['tokens']:>5} {r['bf16_ms']:9.3f} "
              f"{r['w4a4_ms']:9.3f} {r['speedup']:5.2f}")


if __name__ == "__main__":
    main()
