# ruff: noqa: B023  (the timed closures are called at once, inside the loop that binds them)
"""One-call GPU session: check every W4A4 path against core.reference, then time them.

    python benchmarks/gpu_session.py --mode check|quick|full [--out DIR] [--budget-s 480]
    python benchmarks/gpu_session.py --dry            (CPU, TRITON_INTERPRET=1: logic only)

Correctness: fresh random inputs per case, outputs poisoned (NaN-filled blocks handed back to
the caching allocator right before each call), ‖out − ref‖/‖ref‖ against
`core.reference.w4a4_linear_ref` (fp32 out), prologue code mismatches against `prologue_ref`.
Timing: `triton.testing.do_bench` medians; weights and inputs rotated over enough copies to
exceed L2 so decode-sized runs stream weights from HBM; CUDA graphs for M ≤ 256.
Writes JSON lines (results.jsonl) and PNG plots to --out, prints a table last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.models import block_for, site_shapes  # noqa: E402
from duquant_serve.core.reference import (  # noqa: E402
    QuantizedLinear,
    prologue_ref,
    w4a4_linear_ref,
)
from duquant_serve.kernels.base import LayerSpec  # noqa: E402
from duquant_serve.kernels.random_cases import random_activations, random_linear  # noqa: E402
from duquant_serve.kernels.select import KERNELS  # noqa: E402

MODELS = site_shapes()  # {model: {site: (N, K)}} (benchmarks/models.py)
L2_BYTES = 50 << 20
# Correctness sweep on the GPU: (N, K) with K not a multiple of 128 among them, and M values
# the issue names (decode 1 and 7, a tile, prefill sizes).
CHECK_SHAPES = [(960, 576), (1000, 1472), (4096, 4096), (4096, 11008)]
CHECK_MS = [1, 7, 128, 2048, 8192]


def make_layer(n: int, k: int, b: int, dev: str, smooth: bool, bias: bool,
               g: torch.Generator) -> QuantizedLinear:
    return random_linear(n, k, b, smooth, bias, g, clip=0.95).to(dev)


def prepare(kernel, lin: QuantizedLinear, dev: str, dtype: torch.dtype, cap):
    n, k = lin.out_features, lin.in_features
    spec = LayerSpec(k, n, lin.transform.block_size, has_smooth=lin.transform.smooth is not None,
                     has_bias=lin.bias is not None, act_dtype=dtype,
                     device_type="cuda" if dev == "cuda" else "cpu", capability=cap)
    return spec, kernel.prepare(spec, lin.qweight, lin.weight_scale, lin.weight_zero,
                                lin.transform, lin.bias, lin.act_clip_ratio, device=dev)


def poison(dev: str) -> None:
    # Hand NaN-filled blocks back to the caching allocator so the next torch.empty of a similar
    # size reuses one: an element the kernel fails to write stays NaN and fails the check.
    if dev != "cuda":
        return
    junk = [torch.full((s,), float("nan"), device=dev) for s in (1 << 10, 1 << 16, 1 << 20,
                                                                  1 << 24)]
    del junk


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_correctness(dev: str, paths: list[str], ms: list[int], shapes, cap, log) -> list[dict]:
    from duquant_serve.kernels.triton_prologue import SPLIT_MAX_M, fused_prologue

    rows = []
    g = torch.Generator().manual_seed(1234)
    for (n, k) in shapes:
        b = block_for(k)  # 1472 → 64: a block that does not divide K is refused
        lin = make_layer(n, k, b, dev, smooth=True, bias=True, g=g)
        for m in ms:
            x = random_activations(m, k, g, torch.bfloat16).to(dev)
            y_ref = w4a4_linear_ref(x.float(), lin)  # fp32 out, exact integer path
            qr, sr, zr, qsr = prologue_ref(x, lin.transform, 4, lin.act_clip_ratio)
            inv = torch.empty_like(lin.transform.perm)
            inv[lin.transform.perm] = torch.arange(k, device=lin.transform.perm.device)
            precs = ["tf32x3", "tf32", "fp16", "ieee"] if dev == "cuda" else ["ieee"]
            variants = [dict(decode="tiled", precision=p, phase3=v)
                        for p, v in itertools.product(precs, ("reload", "recompute"))]
            if m <= SPLIT_MAX_M:  # fp32 on CUDA cores; no phase 3 ("-" is not passed on)
                variants.append(dict(decode="split", precision="ieee", phase3="-"))
            for var in variants:
                poison(dev)
                q, s, z, qs = fused_prologue(x, lin.transform.r1, lin.transform.r2, inv,
                                             lin.transform.smooth, 4, lin.act_clip_ratio,
                                             perm=lin.transform.perm,
                                             **{k: v for k, v in var.items() if v != "-"})
                d = (q.int() - qr.int()).abs()
                row = dict(check="prologue", **var, M=m, N=n, K=k, b=b,
                           mismatches=int((d > 0).sum()), frac=float((d > 0).float().mean()),
                           max_code_diff=int(d.max()),
                           scale_rel=rel(s, sr), zero_diff=float((z - zr).abs().max()),
                           sum_diff=int((qs - qsr).abs().max()))
                rows.append(row)
                log(row)
            for name in paths:
                kern = KERNELS[name]
                try:
                    _, p = prepare(kern, lin, dev, torch.bfloat16, cap)
                    poison(dev)
                    y = kern.apply(p, x)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    row = dict(check="linear", path=name, M=m, N=n, K=k, b=b,
                               rel_err=rel(y.float(), y_ref), nan=int(torch.isnan(y).sum()))
                except Exception as e:  # report, keep going: one broken path must not hide others
                    row = dict(check="linear", path=name, M=m, N=n, K=k, b=b, error=repr(e)[:300])
                rows.append(row)
                log(row)
    return rows


# Activation groups of 128 channels (`--act-group-size 128` checkpoints): (N, K, block, groups).
GROUP_SHAPES = [(960, 576, 64, 9), (4096, 4096, 128, 32), (4096, 11008, 128, 86)]


def check_groups(dev: str, cap, ms: list[int], shapes, log, timed: bool) -> list[dict]:
    """triton_groups (one block-scaled GEMM for all of a layer's activation groups) against
    core.reference, with poisoned outputs; `timed`: also its median time beside the ungrouped
    Triton linear and the bf16 linear of the same shape (CUDA graphs)."""
    rows = []
    g = torch.Generator().manual_seed(77)
    kern, plain = KERNELS["triton_groups"], KERNELS["triton"]
    for n, k, b, groups in shapes:
        lin = random_linear(n, k, b, True, True, g, clip=0.95, groups=groups).to(dev)
        spec = LayerSpec(k, n, b, has_smooth=True, has_bias=True, act_dtype=torch.bfloat16,
                         device_type="cuda" if dev == "cuda" else "cpu", capability=cap,
                         act_groups=groups)
        (p,) = kern.prepare_groups(spec, lin, device=dev)
        for m in ms:
            x = random_activations(m, k, g, torch.bfloat16).to(dev)
            try:
                poison(dev)
                y = kern.apply(p, x)
                row = dict(check="groups", path=kern.name, M=m, N=n, K=k, groups=groups,
                           rel_err=rel(y.float(), w4a4_linear_ref(x.float(), lin)),
                           nan=int(torch.isnan(y).sum()))
                if timed:
                    _, p0 = prepare(plain, make_layer(n, k, b, dev, True, True, g), dev,
                                    torch.bfloat16, cap)
                    w16 = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
                    graph = m <= 256
                    row["groups_ms"] = bench_fn(lambda: kern.apply(p, x), graph, dev)
                    row["triton_ms"] = bench_fn(lambda: plain.apply(p0, x), graph, dev)
                    row["bf16_ms"] = bench_fn(lambda: torch.nn.functional.linear(x, w16), graph,
                                              dev)
            except Exception as e:  # report, keep going
                row = dict(check="groups", path=kern.name, M=m, N=n, K=k, groups=groups,
                           error=repr(e)[:300])
            rows.append(row)
            log(row)
    return rows


def check_graph_replay(paths: list[str], cap, log) -> list[dict]:
    """Each path captured in a CUDA graph at decode size, then an eager prefill-sized call (the
    case where a launcher's reused buffers would have been regrown and the old ones freed),
    then replay on fresh input: the replayed output must still match the reference."""
    from duquant_serve.kernels.triton_prologue import SPLIT_MAX_M

    rows = []
    g = torch.Generator().manual_seed(99)
    n, k = 4096, 4096
    lin = make_layer(n, k, block_for(k), "cuda", smooth=True, bias=True, g=g)
    runs = [(name, "tiled") for name in paths] + [("triton", "split")] * ("triton" in paths)
    for name, decode in runs:
        kern = KERNELS[name]
        os.environ["DUQUANT_PROLOGUE_DECODE"] = decode
        try:
            _, p = prepare(kern, lin, "cuda", torch.bfloat16, cap)
            m = min(8, SPLIT_MAX_M)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            kern.apply(p, x)  # eager warm-up: compiles, creates per-device state
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                y = kern.apply(p, x)
            big = torch.randn(4096, k, device="cuda", dtype=torch.bfloat16)
            kern.apply(p, big)
            del big
            poison("cuda")
            x.copy_(torch.randn(m, k, generator=g).to("cuda", torch.bfloat16))
            graph.replay()
            torch.cuda.synchronize()
            row = dict(check="graph", path=name, decode=decode, M=m, N=n, K=k,
                       rel_err=rel(y.float(), w4a4_linear_ref(x.float(), lin)),
                       nan=int(torch.isnan(y).sum()))
        except Exception as e:  # report, keep going
            row = dict(check="graph", path=name, decode=decode, error=repr(e)[:300])
        finally:
            os.environ.pop("DUQUANT_PROLOGUE_DECODE", None)
        rows.append(row)
        log(row)
    return rows


def gemm_side(rows: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One side of a random W4A4 GEMM: uint8 codes [rows, K] in 0..15 and their [scale, zero,
    code sum] vectors (fp32, fp32, int32), as the prologue or a checkpoint gives them."""
    q = torch.randint(0, 16, (rows, k), generator=g, dtype=torch.uint8)
    return q, [torch.rand(rows, generator=g) / 16 + 1e-3,
               torch.randint(0, 16, (rows,), generator=g).float(), q.sum(-1, dtype=torch.int32)]


def check_split_k(dev: str, log) -> list[dict]:
    """The Triton GEMM with K split over 2, 3 and SPLIT_K_MAX programs per tile (forced, on
    the static tiles): right against the reference, and the same bits over many back-to-back
    launches, eager and replayed from a CUDA graph. The partials are integers, so every
    correct launch is bit-identical: one whose last program read a partial before it was
    written, or found a counter not reset, shows up as a differing launch."""
    from duquant_serve.core.reference import gemm_epilogue_ref
    from duquant_serve.kernels.layout import pack_int4_grouped
    from duquant_serve.kernels.triton_gemm import SPLIT_K_MAX, launch_config, w4a4_gemm_triton

    rows = []
    g = torch.Generator().manual_seed(5)
    launches = 200 if dev == "cuda" else 2
    shapes = [(1000, 1472), (4096, 4096)] if dev == "cuda" else [(40, 576)]
    for n, k in shapes:
        qw, wv = gemm_side(n, k, g)
        packed, wv = pack_int4_grouped(qw).to(dev), [v.to(dev) for v in wv]
        for m in (1, 7, 64):
            qx, xv = gemm_side(m, k, g)
            qx, xv = qx.view(torch.int8).to(dev), [v.to(dev) for v in xv]
            ref = gemm_epilogue_ref(qx, xv[0], xv[1], xv[2], qw.to(dev), *wv, None, torch.float32)
            for split in (2, 3, SPLIT_K_MAX):
                cfg = dict(launch_config(m, n, k, qx.device), SPLIT_K=split)

                def gemm(cfg=cfg, qx=qx, xv=xv, packed=packed, wv=wv):
                    return w4a4_gemm_triton(qx, *xv, packed, *wv, None, torch.bfloat16,
                                            config=cfg)

                row = dict(check="split_k", M=m, N=n, K=k, split=split, config=cfg,
                           launches=launches)
                try:
                    poison(dev)
                    first = gemm()
                    row["rel_err"] = rel(first.float(), ref)
                    outs = [gemm() for _ in range(launches)]  # back to back, no sync between
                    row["differing"] = sum(not torch.equal(y, first) for y in outs)
                    if dev == "cuda":
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            outs = [gemm() for _ in range(10)]
                        differing = 0
                        for _ in range(launches // 10):
                            poison(dev)
                            graph.replay()
                            differing += sum(not torch.equal(y, first) for y in outs)
                        row["graph_differing"] = differing
                except Exception as e:  # report, keep going
                    row["error"] = repr(e)[:300]
                rows.append(row)
                log(row)
    return rows


def check_selftest(dev: str, paths: list[str], shapes, cap, log) -> list[dict]:
    """The load-time self-test (kernels/selftest.py) per path and shape, on this device: the
    verdict choose_kernel would act on in a server."""
    from duquant_serve.kernels import selftest

    rows = []
    for name in (p for p in paths if not KERNELS[p].is_reference):  # as choose_kernel does
        for n, k in shapes:
            spec = LayerSpec(k, n, block_for(k), has_smooth=True, has_bias=True,
                             act_dtype=torch.bfloat16, device_type=dev,
                             capability=cap if dev == "cuda" else None)
            if not KERNELS[name].can_implement(spec)[0]:
                continue
            why, err = selftest.self_test(KERNELS[name], spec)
            row = dict(check="selftest", path=name, N=n, K=k, passed=why is None,
                       rel_err=err, why=why)
            rows.append(row)
            log(row)
    return rows


def bench_fn(fn, graph: bool, dev: str = "cuda", rep: int = 100) -> float:
    """Median ms of fn (do_bench / do_bench_cudagraph over `rep` ms; on CPU, --dry, of 3)."""
    if dev != "cuda":  # --dry: exercises the script's logic; the figure means nothing
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[1]
    import triton.testing as tt

    if graph:
        return float(tt.do_bench_cudagraph(fn, rep=rep, return_mode="median"))
    return float(tt.do_bench(fn, warmup=25, rep=rep, return_mode="median"))


def time_shapes(dev: str, paths: list[str], models: dict, ms: list[int], cap, log,
                deadline: float) -> list[dict]:
    from duquant_serve.kernels import tuned
    from duquant_serve.kernels.knobs import KernelKnobs
    from duquant_serve.kernels.triton_gemm import _device_name, launch_config

    rows = []
    devname = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    g = torch.Generator().manual_seed(7)
    seen = set()
    for model, layers in models.items():
        for lname, (n, k) in layers.items():
            if (n, k) in seen:
                continue
            seen.add((n, k))
            b = block_for(k)
            bf16_bytes = n * k * 2
            copies = max(2, min(16, math.ceil(3 * L2_BYTES / bf16_bytes)))
            w_bf = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) / math.sqrt(k)
                    for _ in range(copies)]
            lins = [make_layer(n, k, b, dev, smooth=False, bias=False, g=g)
                    for _ in range(copies)]
            prepared = {}
            mem = {}
            for name in paths:
                try:
                    prepared[name] = [prepare(KERNELS[name], li, dev, torch.bfloat16, cap)[1]
                                      for li in lins]
                    mem[name] = prepared[name][0].resident_bytes()
                except Exception as e:
                    log(dict(op="prepare", path=name, error=repr(e)[:200]))
            w8 = [torch.randint(0, 16, (k, n), device=dev, dtype=torch.int8) for _ in range(2)]
            w8 = [w.t().contiguous().t() for w in w8]  # column-major, as _int_mm wants
            for m in ms:
                if time.time() > deadline:
                    log(dict(op="stop", reason="time budget reached"))
                    return rows
                graph = m <= 256

                def bench(fn, graph=graph):
                    return bench_fn(fn, graph, dev)

                xs = [torch.randn(m, k, device=dev, dtype=torch.bfloat16) for _ in range(copies)]
                res = dict(device=devname, model=model, op=lname, shape=[m, n, k], M=m, N=n,
                           K=k, copies=copies, cuda_graph=graph,
                           bf16_weight_bytes=bf16_bytes, w4a4_weight_bytes=mem)

                def bf16():
                    for i in range(copies):
                        torch.nn.functional.linear(xs[i], w_bf[i])

                res["bf16_ms"] = bench(bf16, graph) / copies
                for name, ps in prepared.items():
                    kern = KERNELS[name]

                    def full(kern=kern, ps=ps):
                        for i in range(copies):
                            kern.apply(ps[i], xs[i])

                    try:
                        res[f"{name}_ms"] = bench(full, graph) / copies
                    except Exception as e:
                        res[f"{name}_error"] = repr(e)[:200]
                # Pieces: prologue alone, Triton GEMM alone (codes precomputed), CUTLASS GEMM.
                p0 = prepared.get("triton", [None])[0]
                if p0 is not None:
                    q, s, z, qs = torch.ops.duquant.prologue(xs[0], p0.r1, p0.r2, p0.perm,
                                                             p0.inv_perm, None, 4, 0.95)
                    pt = prepared["triton"]

                    def prol():
                        for i in range(copies):
                            torch.ops.duquant.prologue(xs[i], pt[i].r1, pt[i].r2, pt[i].perm,
                                                       pt[i].inv_perm, None, 4, 0.95)

                    def gemm_t():
                        for i in range(copies):
                            torch.ops.duquant.w4a4_gemm(q, s, z, qs, pt[i].qweight,
                                                        pt[i].weight_scale, pt[i].weight_zero,
                                                        pt[i].weight_code_sum, None,
                                                        torch.bfloat16)

                    res["prologue_ms"] = bench(prol, graph) / copies
                    from duquant_serve.kernels import device_state
                    from duquant_serve.kernels.triton_prologue import (
                        SPLIT_MAX_M,
                        TOKEN_TILES,
                        fused_prologue,
                    )
                    from duquant_serve.kernels.triton_prologue import _config as _prologue_config

                    # tf32x3 only where it is the default (≤ 256 tokens); fp16 beside tf32
                    # everywhere: same code error in emulation, twice the tensor-core rate.
                    precs = ("tf32x3", "tf32", "fp16") if m <= 256 else ("tf32", "fp16")
                    for prec, phase3 in itertools.product(precs, ("reload", "recompute")):
                        def prol_p(prec=prec, phase3=phase3):
                            for i in range(copies):
                                fused_prologue(xs[i], pt[i].r1, pt[i].r2, pt[i].inv_perm, None,
                                               4, 0.95, precision=prec, phase3=phase3)

                        res[f"prologue_{prec}_{phase3}_ms"] = bench(prol_p, graph) / copies
                    if m <= SPLIT_MAX_M:
                        def prol_split():
                            for i in range(copies):
                                fused_prologue(xs[i], pt[i].r1, pt[i].r2, pt[i].inv_perm, None,
                                               4, 0.95, perm=pt[i].perm, decode="split")

                        res["prologue_split_ms"] = bench(prol_split, graph) / copies
                    # Tokens per program of the tiled kernel: the static rule's choice, and
                    # each tile timed where the rule's thresholds fall (default precision).
                    res["prologue_tokens"] = _prologue_config(
                        m, k, pt[0].r1.shape[0], device_state.sm_count(xs[0].device))[0]
                    if 16 < m <= 1024:
                        for tok in TOKEN_TILES:
                            def prol_t(tok=tok):
                                for i in range(copies):
                                    fused_prologue(xs[i], pt[i].r1, pt[i].r2, pt[i].inv_perm,
                                                   None, 4, 0.95, tokens=tok)

                            res[f"prologue_tokens{tok}_ms"] = bench(prol_t, graph) / copies
                    res["triton_gemm_ms"] = bench(gemm_t, graph) / copies
                    # Which tiles ran: a tuned table's (kernels/tuned.py) or the static choice.
                    name = _device_name(q.device)
                    extra = KernelKnobs.from_env().tuned_configs  # as prepare read them
                    res["triton_gemm_config"] = launch_config(m, n, k, q.device,
                                                              tuned_configs=extra)
                    res["triton_gemm_tuned"] = bool(
                        name and tuned.counts("triton_gemm", name, n, k, extra))
                    # CUTLASS GEMM + fused epilogue alone (codes precomputed): packed 4-bit
                    # weights (mixed-input mainloop) vs int8 weights (no widening); and the
                    # int8 GEMM with int32 out, no epilogue.
                    fused_keys = {"cutlass_sm90": "cutlass_fused_gemm_ms",
                                  "cutlass_sm90_int8w": "cutlass_int8w_fused_gemm_ms"}
                    for name, key in fused_keys.items():
                        if name not in prepared:
                            continue
                        pc = prepared[name]

                        def gemm_cf(pc=pc, packed=KERNELS[name].packed):
                            for i in range(copies):
                                torch.ops.duquant.w4a4_gemm_sm90(
                                    q, s, z, qs, pc[i].qweight, pc[i].epilogue_u,
                                    pc[i].epilogue_v, pc[i].epilogue_w, None, torch.bfloat16,
                                    packed)

                        try:
                            res[key] = bench(gemm_cf, graph) / copies
                        except Exception as e:
                            res[f"{key[:-3]}_error"] = repr(e)[:200]
                    if "cutlass_sm90_int8w" in prepared:
                        pc = prepared["cutlass_sm90_int8w"]

                        def gemm_c():
                            for i in range(copies):
                                torch.ops.duquant.gemm_s8_sm90(q, pc[i].qweight)

                        try:
                            res["cutlass_gemm_int32_ms"] = bench(gemm_c, graph) / copies
                        except Exception as e:
                            res["cutlass_gemm_int32_error"] = repr(e)[:200]
                    # W8A8 int8 baseline (torch._int_mm needs M > 16 on some builds: pad).
                    mp = max(m, 32)
                    a8 = torch.randint(-8, 8, (mp, k), device=dev, dtype=torch.int8)

                    def int8mm():
                        for i in range(copies):
                            torch._int_mm(a8, w8[i % 2])

                    try:
                        res["int8_intmm_ms"] = bench(int8mm, graph) / copies
                        res["int8_intmm_M_padded"] = mp
                    except Exception as e:
                        res["int8_intmm_error"] = repr(e)[:200]
                best = [res[f"{p}_ms"] for p in paths if f"{p}_ms" in res]
                if best:
                    res["w4a4_ms"] = min(best)
                    res["w4a4_path"] = min((res[f"{p}_ms"], p) for p in paths
                                           if f"{p}_ms" in res)[1]
                    res["speedup"] = res["bf16_ms"] / res["w4a4_ms"]
                rows.append(res)
                log(res)
            w_bf = lins = prepared = w8 = None  # free this shape's copies before the next
            torch.cuda.empty_cache()
    return rows


def plots(rows: list[dict], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    models = sorted({r["model"] for r in rows})
    for model in models:
        rs = [r for r in rows if r["model"] == model and "speedup" in r]
        if not rs:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for op in sorted({r["op"] for r in rs}):
            pts = sorted((r["M"], r["speedup"]) for r in rs if r["op"] == op)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=op)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speedup over BF16 F.linear")
        ax.set_title(f"W4A4 (prologue+GEMM) vs BF16, {model}, {rs[0]['device']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"speedup_{model}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["check", "quick", "full"], default="quick")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--budget-s", type=float, default=480)
    ap.add_argument("--dry", action="store_true")
    args = ap.parse_args()
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "results.jsonl", "a")

    def log(row: dict) -> None:
        logf.write(json.dumps(row) + "\n")
        logf.flush()
        print(json.dumps(row), flush=True)

    # This script is what validates the CUTLASS paths, so it must be allowed to run them.
    os.environ.setdefault("DUQUANT_ENABLE_UNVALIDATED", "1")
    dev = "cpu" if args.dry else "cuda"
    cap = torch.cuda.get_device_capability() if dev == "cuda" else (9, 0)
    if dev == "cuda":
        import triton

        torch.backends.cuda.matmul.allow_tf32 = False  # the reference's fp32 matmuls stay fp32
        log(dict(info="env", torch=torch.__version__, triton=triton.__version__,
                 device=torch.cuda.get_device_name(), capability=cap))
        from duquant_serve.kernels.cutlass import built_archs, load_error

        log(dict(info="cutlass_ext", load_error=load_error(), archs=sorted(built_archs())))
    # --dry runs every path on CPU through the ops' reference implementations (their
    # can_implement would refuse a CPU layer): it checks each prepare layout and this script.
    # (triton_groups serves activation-group layers only: check_groups runs it.)
    paths = (["triton", "cutlass_sm90", "cutlass_sm90_int8w"] if dev == "cuda"
             else [name for name in KERNELS if name != "triton_groups"])
    for name in list(paths):
        if dev == "cuda":
            spec = LayerSpec(4096, 4096, 128, capability=cap)
            ok, why = KERNELS[name].can_implement(spec)
            log(dict(info="can_implement", path=name, ok=ok, why=why))
            if not ok:
                paths.remove(name)
    if args.dry:
        shapes, ms = [(40, 192), (72, 576)], [1, 7, 33]
    else:
        shapes, ms = CHECK_SHAPES, CHECK_MS
    corr = check_correctness(dev, paths, ms, shapes, cap, log)
    corr += check_selftest(dev, paths, shapes, cap, log)
    if "triton" in paths:
        corr += check_split_k(dev, log)
        corr += check_groups(dev, cap, [1, 7, 33] if args.dry else [1, 16, 2048],
                             [(72, 576, 64, 9)] if args.dry else GROUP_SHAPES, log,
                             timed=args.mode != "check")
    if dev == "cuda":  # CUDA graphs need a GPU; --dry skips this check, and says so
        corr += check_graph_replay(paths, cap, log)
    else:
        log(dict(info="graph replay check skipped: needs CUDA"))
    timing: list[dict] = []
    if args.mode != "check":
        if args.dry:
            models, tms = {"tiny": {"qkv": (72, 576)}}, [1, 17]  # decode, and above 16 tokens
        elif args.mode == "quick":
            models = {"llama2-7b": {"o": (4096, 4096), "gate_up": (22016, 4096)},
                      "smollm2-135m": {"qkv": (960, 576)}}
            tms = [1, 16, 2048, 8192]
        else:
            models = MODELS
            tms = [1, 4, 16, 64, 256, 1024, 2048, 4096, 8192]
        deadline = t_start + args.budget_s
        timing = time_shapes(dev, paths, models, tms, cap, log, deadline)
        plots(timing, out)
    # ---- short table, last (the tool returns the tail of the output) ----
    print("\n== correctness (linear, rel err vs w4a4_linear_ref) ==")
    for r in corr:
        if r["check"] == "linear":
            print(f"{r['path']:>13} M={r['M']:<5} N={r['N']:<5} K={r['K']:<5} "
                  f"rel={r.get('rel_err', r.get('error'))}")
    worst = {}
    for r in corr:
        if r["check"] == "prologue":
            key = f"{r['decode']} {r['precision']} {r['phase3']}"
            worst[key] = max(worst.get(key, (0, 0.0, 0)), (r["max_code_diff"], r["frac"],
                                                           r["mismatches"]))
    for r in corr:
        if r["check"] == "selftest":
            print(f"{r['path']:>13} self-test N={r['N']} K={r['K']}: "
                  f"{'pass' if r['passed'] else r['why']} (rel {r['rel_err']:.1e})")
    for r in corr:
        if r["check"] == "graph":
            print(f"{r['path']:>13} graph replay ({r['decode']} prologue) "
                  f"rel={r.get('rel_err', r.get('error'))}")
    for r in corr:
        if r["check"] == "groups":
            times = "".join(f" {key}={r[key]:.4f}" for key in ("groups_ms", "triton_ms", "bf16_ms")
                            if key in r)
            print(f"{r['path']:>13} M={r['M']:<5} N={r['N']:<5} K={r['K']:<5} G={r['groups']:<3} "
                  f"rel={r.get('rel_err', r.get('error'))}{times}")
    for r in corr:
        if r["check"] == "split_k":
            print(f"       triton split-K={r['split']} M={r['M']:<3} N={r['N']:<5} K={r['K']:<5} "
                  f"rel={r.get('rel_err', r.get('error'))} differing launches "
                  f"{r.get('differing')}/{r['launches']} eager, {r.get('graph_differing')} graph")
    print("prologue worst (max|dcode|, frac, count) by kernel, precision, phase 3:", worst)
    if timing:
        print("\n== timing (ms, medians) ==")
        print(f"{'model':>12} {'op':>8} {'M':>5} {'N':>6} {'K':>6} {'bf16':>8} {'w4a4':>8} "
              f"{'x':>5} {'prol':>7} {'tgemm':>7} {'cfused':>7} {'c8wfus':>7} {'int8':>7} path")
        for r in timing:
            def f(key, r=r):
                v = r.get(key)
                return f"{v:8.4f}" if isinstance(v, float) else f"{'-':>8}"
            print(f"{r['model']:>12} {r['op']:>8} {r['M']:>5} {r['N']:>6} {r['K']:>6} "
                  f"{f('bf16_ms')}{f('w4a4_ms')} {r.get('speedup', 0):5.2f}"
                  f"{f('prologue_ms')}{f('triton_gemm_ms')}{f('cutlass_fused_gemm_ms')}"
                  f"{f('cutlass_int8w_fused_gemm_ms')}"
                  f"{f('int8_intmm_ms')} {r.get('w4a4_path', '-')}")
    print(f"total {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
