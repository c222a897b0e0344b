"""CPU W4A4 linears against the 16-bit linear they replace, measured in the same run.

    python benchmarks/kernels/bench_cpu_linear.py [--model smollm2-135m] [--ms 1,16,512,1024]
        [--dtype float32] [--act-group-size 0] [--out DIR]

Per linear shape of --model and per M: `F.linear` in --dtype (the 16-bit baseline; CPU serving
keeps float32 checkpoints in float32), and the W4A4 kernels that run on CPU (`cpu_int8`,
`cpu_fp32_gemm`, `torch_ref`), eager; then `F.linear` and the kernel `choose_kernel` picks on
this CPU (`w4a4_path`: cpu_int8 where torch._int_mm is fast, else cpu_fp32_gemm) again under
torch.compile with inductor and dynamic token counts, which is how vLLM runs a model on CPU
(`*_compiled_ms`, `speedup_compiled`). Median of repeated calls after a warm-up, single
process, the torch threads the machine gives. --act-group-size N: the W4A4 linears have the
activation groups a checkpoint quantized with that option has (DuQuantConfig
.activation_groups, column-parallel rule), run as `prepare_groups` / `apply_groups` run them.
Writes DIR/cpu_linear.jsonl.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.models import site_shapes  # noqa: E402
from duquant_serve.core.config import DuQuantConfig  # noqa: E402
from duquant_serve.core.transform import input_layout  # noqa: E402
from duquant_serve.kernels.base import LayerSpec  # noqa: E402
from duquant_serve.kernels.random_cases import random_linear  # noqa: E402
from duquant_serve.kernels.select import KERNELS, choose_kernel  # noqa: E402

MODELS = site_shapes()
W4A4_KERNELS = ("cpu_int8", "cpu_fp32_gemm", "torch_ref")


def median_ms(fn, min_s: float = 0.3, min_reps: int = 5) -> float:
    fn()  # warm-up (first-call allocations, oneDNN primitive creation)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def cpu_spec(lin, dtype: torch.dtype) -> LayerSpec:
    return LayerSpec(lin.in_features, lin.out_features, lin.transform.block_size,
                     has_smooth=lin.transform.smooth is not None, has_bias=lin.bias is not None,
                     act_dtype=dtype, device_type="cpu", act_groups=lin.act_groups)


def prepare_groups(kernel, lin, dtype: torch.dtype) -> list:
    """`lin` (one shard, its activation groups) as `kernel` prepares it."""
    return kernel.prepare_groups(cpu_spec(lin, dtype), lin, device="cpu")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    ap.add_argument("--ms", default="1,16,512,1024")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--act-group-size", type=int, default=0)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    g = torch.Generator().manual_seed(0)
    rows = []
    qcfg = DuQuantConfig(act_group_size=args.act_group_size)
    for op, (n, k) in MODELS[args.model].items():
        groups, block = input_layout(qcfg, k, row_parallel=False)
        lin = random_linear(n, k, block, smooth=True, bias=False, g=g, groups=groups)
        w16 = (torch.randn(n, k, generator=g) / k**0.5).to(dtype)
        prepared = {name: prepare_groups(KERNELS[name], lin, dtype) for name in W4A4_KERNELS}
        pick = choose_kernel(cpu_spec(lin, dtype)).name
        # One compile per function, dynamic in M as vLLM compiles on CPU: the token dim marked
        # dynamic (mark_dynamic, below), as vLLM does. (dynamic=True also makes every size
        # symbolic, and dynamo then fails on the per-group slices: torch 2.13.)
        compiled = {
            "bf16": torch.compile(lambda x, w=w16: torch.nn.functional.linear(x, w),
                                  backend="inductor"),
            pick: torch.compile(
                functools.partial(KERNELS[pick].apply_groups, prepared[pick]),
                backend="inductor"),
        }
        for m in (int(v) for v in args.ms.split(",")):
            x = torch.randn(m, k, generator=g).to(dtype)
            torch._dynamo.mark_dynamic(x, 0)
            row = dict(device=device, model=args.model, op=op, shape=[m, n, k],
                       dtype=args.dtype, act_groups=groups,
                       bf16_ms=median_ms(lambda x=x, w=w16: torch.nn.functional.linear(x, w)))
            for name, p in prepared.items():
                row[f"{name}_ms"] = median_ms(
                    lambda p=p, name=name, x=x: KERNELS[name].apply_groups(p, x))
            row["w4a4_path"] = pick
            row["w4a4_ms"] = row[f"{pick}_ms"]
            row["speedup"] = row["bf16_ms"] / row["w4a4_ms"]
            row["speedup_vs_torch_ref"] = row["torch_ref_ms"] / row["w4a4_ms"]
            for name, fn in compiled.items():
                row[f"{name}_compiled_ms"] = median_ms(lambda fn=fn, x=x: fn(x))
            row["w4a4_compiled_ms"] = row[f"{pick}_compiled_ms"]
            row["speedup_compiled"] = row["bf16_compiled_ms"] / row["w4a4_compiled_ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(out / "cpu_linear.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"\nW4A4 path chosen here: {rows[0]['w4a4_path'] if rows else '-'}")
    print(f"{'':14} {'eager':>48} {'compiled (inductor)':>31}")
    print(f"{'op':>8} {'M':>5} {'16-bit':>9} {'cpu_int8':>9} {'fp32gemm':>9} {'torch_ref':>9}"
          f" {'speedup':>8} {'16-bit':>9} {'W4A4':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['op']:>8} {r['shape'][0]:>5} {r['bf16_ms']:9.3f} {r['cpu_int8_ms']:9.3f} "
              f"{r['cpu_fp32_gemm_ms']:9.3f} {r['torch_ref_ms']:9.3f} {r['speedup']:7.2f}x "
              f"{r['bf16_compiled_ms']:9.3f} {r['w4a4_compiled_ms']:9.3f} "
              f"{r['speedup_compiled']:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
