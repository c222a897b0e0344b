"""Tune the Triton W4A4 GEMM's tile config per (N, K, M) on this GPU; write the table the kernel
reads (`duquant_serve/kernels/tuned.py`).

    python benchmarks/kernels/tune_triton_gemm.py [--models llama2-7b,llama3-8b,smollm2-135m]
        [--shapes NxK,...] [--ms 1,16,64,256,1024,4096] [--out DIR] [--budget-s 420]
    python benchmarks/kernels/tune_triton_gemm.py --dry --out DIR   (CPU, TRITON_INTERPRET=1)

For every linear shape and token count: each candidate config of that M's bucket (the static
choice always among them) runs on fresh random codes, its output poisoned beforehand and
compared with `core.reference.gemm_epilogue_ref`; the correct ones are timed
(`triton.testing.do_bench`, CUDA graphs for M ≤ 256, packed weights rotated over enough
copies to exceed L2, as benchmarks/gpu_session.py does) and the fastest wins. Writes
DIR/tune_triton_gemm.jsonl (every candidate) and DIR/<table> (the winners, rewritten after
each shape so a budget cut keeps what was done). Commit the table under
duquant_serve/kernels/tuned_configs/, or point DUQUANT_TUNED_CONFIGS at DIR.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.gpu_session import L2_BYTES, MODELS, bench_fn, gemm_side, poison, rel  # noqa: E402
from duquant_serve.core.reference import gemm_epilogue_ref  # noqa: E402
from duquant_serve.kernels import device_state, tuned  # noqa: E402
from duquant_serve.kernels.layout import pack_int4_grouped  # noqa: E402
from duquant_serve.kernels.triton_gemm import (  # noqa: E402
    _gemm_config,
    _static_split_k,
    tile_count,
    w4a4_gemm_triton,
)

KERNEL = "triton_gemm"
# Each tuned count serves the counts down to the previous one (tuned.py): 2..16 use the 16
# config, 257..1024 the 1024 one, above 4096 the 4096 one.
DEFAULT_MS = [1, 16, 64, 256, 1024, 4096]


# gpu_session's timing with shorter runs: 12–48 candidates per shape and count must fit one
# device call.
BENCH_REP_MS = 30


def _cfg(bm: int, bn: int, bk: int, gm: int, warps: int, stages: int,
         split: int = 1) -> dict[str, int]:
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=warps,
                num_stages=stages, SPLIT_K=split)


def candidates(m: int, n: int, k: int, sms: int | None) -> list[dict[str, int]]:
    """The static choice first, then the alternatives worth timing for this M: narrow or wide
    N tiles and deeper K tiles where weight streaming dominates, bigger tiles and warp counts
    where the tensor cores do; and, up to 64 tokens, where a tile grid leaves more than half of
    the `sms` SMs idle, the same tiles with K split to fill them (the static rule's split).
    Compiled as served for sm_90 (Triton 3.6, the lent GPUs'), all the tile shapes are
    cp.async-pipelined and spill nothing; the two that spilled 1.3 KB per thread there
    (128×256 on 4 warps, 256×256) are left out."""
    if m <= 16:
        grid = [_cfg(16, bn, bk, 1, 4, st) for bn in (16, 32, 64) for bk in (128, 256, 512)
                for st in (3, 4)]
    elif m <= 64:
        grid = [_cfg(bm, bn, bk, 4, 4, st) for bm in (32, 64) for bn in (32, 64, 128)
                for bk in (64, 128) for st in (3, 4)]
    elif m <= 256:
        grid = [_cfg(bm, bn, 64, 8, w, st) for bm in (64, 128) for bn in (64, 128, 256)
                for w in (4, 8) for st in (3, 4) if (bm, bn, w) != (128, 256, 4)]
    else:
        grid = [_cfg(bm, bn, bk, 8, 8, st) for bm, bn in ((128, 128), (128, 256), (256, 128))
                for bk in (64, 128) for st in (3, 4)]
    # Split variants only where weights stream (M ≤ 64), one per tile shape: every SPLIT_K is
    # its own compile, which costs more of the device call than the timing.
    split = [dict(c, SPLIT_K=_static_split_k(tile_count(m, n, c), k, c["BLOCK_K"], sms))
             for c in grid] if m <= 64 else []
    split = [c for c in split if c["SPLIT_K"] > 1]
    static = _gemm_config(m, n, k, None, sms)
    return list({json.dumps(c, sort_keys=True): c for c in [static, *grid, *split]}.values())


def parse_shape(text: str) -> tuple[int, int]:
    """"NxK" → (N, K), refused unless the Triton GEMM can run it (K % 64 == 0)."""
    try:
        n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shapes: {text!r} is not NxK (e.g. 2048x4096)") from None
    if n <= 0 or k <= 0 or k % 64:
        raise SystemExit(f"--shapes: {text!r} needs N > 0 and K a positive multiple of 64")
    return n, k


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="llama2-7b,llama3-8b,smollm2-135m")
    ap.add_argument("--shapes", help="NxK,... instead of --models' linears: other models, or "
                                     "one tensor-parallel rank's shard (N/TP for qkv and "
                                     "gate_up, K/TP for o and down)")
    ap.add_argument("--ms", default=",".join(map(str, DEFAULT_MS)))
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--budget-s", type=float, default=420)
    ap.add_argument("--dry", action="store_true", help="CPU interpreter, tiny shapes: logic only")
    args = ap.parse_args()
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry:
        dev, device_name, triton_version = "cpu", "cpu-dry", "interpreter"
        shapes, ms = [(48, 512), (64, 192)], [1, 40]
        sms = 8  # a pretend GPU small enough that the dry shapes get split-K candidates
    else:
        import triton

        dev, device_name, triton_version = "cuda", torch.cuda.get_device_name(), triton.__version__
        sms = device_state.sm_count(torch.device(dev))
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference's fp32 matmul stays exact
        shapes = list(dict.fromkeys(nk for mdl in args.models.split(",")
                                    for nk in MODELS[mdl].values()))
        ms = [int(v) for v in args.ms.split(",")]
    if args.shapes:
        shapes = [parse_shape(v) for v in args.shapes.split(",")]
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    table = {"kernel": KERNEL, "device": device_name, "triton": triton_version,
             "torch": torch.__version__, "command": command, "entries": []}
    table_path = out / tuned.table_name(KERNEL, device_name)
    log = (out / "tune_triton_gemm.jsonl").open("a")
    g = torch.Generator().manual_seed(0)
    stopped = False
    for n, k in shapes:
        qw, wvec = gemm_side(n, k, g)
        packed = pack_int4_grouped(qw).to(dev)
        copies = 1 if args.dry else max(2, min(16, math.ceil(3 * L2_BYTES / packed.numel())))
        weights = [packed.clone() for _ in range(copies)]
        wvec = [v.to(dev) for v in wvec]
        for m in ms:
            if time.time() - t0 > args.budget_s:
                stopped = True
                break
            qx, xvec = gemm_side(m, k, g)
            xin = [v.to(dev) for v in (qx.view(torch.int8), *xvec)]
            ref = gemm_epilogue_ref(*xin, qw.to(dev), *wvec, None, torch.float32)
            best = None
            cands = candidates(m, n, k, sms)
            if args.dry:  # the static choice, another tile shape, and a split one if any
                cands = cands[:2] + [c for c in cands if c["SPLIT_K"] > 1][:1]
            for i, cfg in enumerate(cands):
                row = dict(device=device_name, n=n, k=k, m=m, config=cfg, static=i == 0)
                try:
                    poison(dev)
                    y = w4a4_gemm_triton(*xin, weights[0], *wvec, None, torch.bfloat16, config=cfg)
                    row["rel_err"] = rel(y.float(), ref)
                    if not row["rel_err"] < 1e-2:  # NaN (an unwritten tile) fails too
                        raise RuntimeError(f"wrong result, rel err {row['rel_err']}")

                    def run(cfg=cfg, xin=xin, wvec=wvec, weights=weights):
                        for w in weights:
                            w4a4_gemm_triton(*xin, w, *wvec, None, torch.bfloat16, config=cfg)

                    row["ms"] = bench_fn(run, m <= 256, dev, rep=BENCH_REP_MS) / copies
                except Exception as e:  # a config that does not compile, launch or match
                    row["error"] = repr(e)[:300]
                log.write(json.dumps(row) + "\n")
                log.flush()
                if "ms" in row and (best is None or row["ms"] < best["ms"]):
                    best = row
                if i == 0:
                    static_ms = row.get("ms")
            if best is None:
                print(f"n={n} k={k} m={m}: no candidate ran correctly", flush=True)
                continue
            table["entries"].append(dict(n=n, k=k, m=m, config=best["config"], ms=best["ms"],
                                         static_ms=static_ms))
            print(f"n={n:6d} k={k:6d} m={m:5d}: best {best['ms'] * 1e3:8.1f} us "
                  f"(static {static_ms * 1e3 if static_ms else float('nan'):8.1f} us) "
                  f"{best['config']}", flush=True)
        # Rewrite after every shape: a budget cut keeps the shapes done so far.
        if table["entries"]:
            tuned.parse_table(table, str(table_path), KERNEL)  # what the kernel will accept
            table_path.write_text(json.dumps(table, indent=1) + "\n")
        if stopped:
            print("time budget reached: the table holds the shapes done so far", flush=True)
            break
    print(f"wrote {table_path} ({len(table['entries'])} entries) in {time.time() - t0:.0f}s")
    return 0 if table["entries"] else 1


if __name__ == "__main__":
    sys.exit(main())
