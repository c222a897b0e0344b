"""How the tensor-core precision of the prologue's R1/R2 dots moves activation codes (CPU).

Emulates the operand rounding of each Triton `input_precision` (fp32 accumulation throughout):
    ieee    fp32 operands
    tf32    operands rounded to TF32 (10-bit mantissa, round-to-nearest-even)
    tf32x3  a·b ≈ hi(a)·hi(b) + hi(a)·lo(b) + lo(a)·hi(b), hi = tf32(v), lo = tf32(v − hi)
    fp16    each b-value row of a divided by the power of two above its max |value|, operands
            rounded to fp16, the product multiplied back (the Triton kernel's "fp16")
    bf16    operands rounded to bfloat16
and counts codes that differ from `core.reference.prologue_ref`. The transform is composed from
`core.transform.block_rotate` and `core.quant.quantize_per_token`; only operand rounding is
added here. Run: python benchmarks/kernels/prologue_precision.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from duquant_serve.core.quant import quantize_per_token
from duquant_serve.core.reference import prologue_ref
from duquant_serve.core.transform import InputTransform, block_rotate, random_orthogonal


def to_tf32(v: torch.Tensor) -> torch.Tensor:
    """Round fp32 to TF32 (keep 10 mantissa bits, nearest-even) by integer bit arithmetic."""
    i = v.float().contiguous().view(torch.int32)
    lsb = (i >> 13) & 1
    i = (i + 0xFFF + lsb) & ~0x1FFF
    return i.view(torch.float32)


def rot(x: torch.Tensor, r: torch.Tensor, prec: str) -> torch.Tensor:
    if prec == "ieee":
        return block_rotate(x, r)
    if prec == "tf32":
        return block_rotate(to_tf32(x), to_tf32(r))
    if prec == "bf16":
        return block_rotate(x.bfloat16().float(), r.bfloat16().float())
    if prec == "fp16":
        b = r.shape[0]
        xb = x.reshape(*x.shape[:-1], -1, b)
        e = torch.frexp(xb.abs().amax(-1, keepdim=True)).exponent  # amax < 2^e (0 for a zero row)
        s = torch.ldexp(torch.ones_like(xb[..., :1]), e)
        y = (xb / s).half().double() @ r.half().double()  # fp32 accumulation ≈ exact here
        return (y * s).float().reshape(x.shape)
    if prec == "tf32x3":
        xh, rh = to_tf32(x), to_tf32(r)
        xl, rl = to_tf32(x - xh), to_tf32(r - rh)
        return block_rotate(xh, rh) + block_rotate(xh, rl) + block_rotate(xl, rh)
    raise ValueError(prec)


def llm_like(m: int, k: int, g: torch.Generator) -> torch.Tensor:
    """Activations with per-channel scales and a few massive outlier channels (LLaMA-like)."""
    x = torch.randn(m, k, generator=g) * (0.5 + torch.rand(k, generator=g))
    out = torch.randint(0, k, (max(1, k // 512),), generator=g)
    x[:, out] *= 50
    return x.bfloat16().float()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    rows = []
    for m, k, b in ((512, 4096, 128), (512, 576, 64), (256, 11008, 128)):
        t = InputTransform(random_orthogonal(b, g).float(), torch.randperm(k, generator=g),
                           random_orthogonal(b, g).float(), None)
        x = llm_like(m, k, g)
        qr, *_ = prologue_ref(x, t, 4, 1.0)
        for prec in ("ieee", "tf32x3", "tf32", "fp16", "bf16"):
            y = rot(x, t.r1, prec).index_select(-1, t.perm)
            y = rot(y, t.r2, prec)
            q, *_ = quantize_per_token(y, 4, 1.0, check_finite=False)
            d = (q.int() - qr.int()).abs()
            row = dict(M=m, K=k, b=b, precision=prec, mismatch_frac=float((d > 0).float().mean()),
                       max_code_diff=int(d.max()))
            rows.append(row)
            print(f"M={m:5d} K={k:6d} b={b:4d} {prec:>7}: mismatched codes "
                  f"{row['mismatch_frac']:.2e}  max |dq| {row['max_code_diff']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    assert math.isfinite(rows[0]["mismatch_frac"])


if __name__ == "__main__":
    main()
