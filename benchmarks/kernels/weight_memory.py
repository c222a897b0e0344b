"""Resident weight memory of each kernel's prepared layout vs BF16, for real model shapes (CPU).

Counts every tensor `LinearKernel.prepare` keeps on the device for one linear (packed codes,
scales, zeros, code sums, R1/R2, permutation, bias) via PreparedLinear.resident_bytes() plus
the int64 gather permutation, and compares with an [N, K] BF16 weight.
Run: python benchmarks/kernels/weight_memory.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from duquant_serve.core.pack import pack_int4
from duquant_serve.core.quant import quantize_per_channel
from duquant_serve.core.transform import InputTransform, random_orthogonal
from duquant_serve.kernels.base import LayerSpec
from duquant_serve.kernels.select import KERNELS

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.models import block_for, site_shapes  # noqa: E402

MODELS = site_shapes()  # {model: {site: (N, K)}} (benchmarks/models.py)


PATHS = ("triton", "cutlass_sm90", "cutlass_sm90_int8w", "torch_ref")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    rows = []
    for model, layers in MODELS.items():
        tot = {"bf16": 0}
        for lname, (n, k) in layers.items():
            b = block_for(k)
            # Codes from a small random weight tiled to size: only shapes and dtypes matter here.
            q, s, z = quantize_per_channel(torch.randn(64, k, generator=g) / math.sqrt(k), 4)
            reps = math.ceil(n / 64)
            qw = pack_int4(q.repeat(reps, 1)[:n])
            t = InputTransform(random_orthogonal(b, g).float(), torch.randperm(k, generator=g),
                               random_orthogonal(b, g).float(), None)
            bf16 = n * k * 2
            tot["bf16"] += bf16
            row = dict(model=model, op=lname, N=n, K=k, b=b, bf16_bytes=bf16)
            for name in PATHS:
                spec = LayerSpec(k, n, b, device_type="cpu")
                p = KERNELS[name].prepare(spec, qw, s.repeat(reps)[:n], z.repeat(reps)[:n], t,
                                          None, 1.0)
                nbytes = p.resident_bytes() + p.perm.numel() * p.perm.element_size()
                row[f"{name}_bytes"] = nbytes
                row[f"{name}_ratio"] = bf16 / nbytes
                tot[name] = tot.get(name, 0) + nbytes
            rows.append(row)
            print(f"{model:>13} {lname:>8} N={n:6d} K={k:6d}  bf16 {bf16 / 2**20:8.2f} MiB  "
                  f"triton {row['triton_bytes'] / 2**20:7.2f} MiB ({row['triton_ratio']:.2f}x)  "
                  f"cutlass_sm90 {row['cutlass_sm90_bytes'] / 2**20:7.2f} MiB "
                  f"({row['cutlass_sm90_ratio']:.2f}x)  "
                  f"cutlass_sm90_int8w {row['cutlass_sm90_int8w_ratio']:.2f}x")
        rows.append(dict(model=model, op="layer_total", bf16_bytes=tot["bf16"],
                         **{f"{k}_bytes": v for k, v in tot.items() if k != "bf16"},
                         **{f"{k}_ratio": tot["bf16"] / v for k, v in tot.items() if k != "bf16"}))
        print(f"{model:>13} {'layer':>8}  " + "  ".join(
            f"{name} {tot['bf16'] / tot[name]:.2f}x" for name in PATHS) + " smaller than BF16")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
