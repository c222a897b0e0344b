"""Compile the Triton kernels for a GPU target on a machine without one (run as a script,
without TRITON_INTERPRET: ASTSource needs real JIT functions). Used by test_triton_aot.py.

    python tests/kernels/aot_compile.py 90 > report.json

Prints one JSON object per compiled kernel: which tensor-core instructions the PTX holds, shared
memory, and (read with Triton's bundled cuobjdump) registers and stack (spill) bytes per thread.
The configs come from the launchers themselves, so what compiles here is what runs there.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from duquant_serve.kernels.triton_gemm import (
    _epilogue_kernel,
    _gemm_config,
    _w4a4_gemm_groups_kernel,
    _w4a4_gemm_kernel,
    groups_config,
)
from duquant_serve.kernels.triton_prologue import KC, NS, _config, _prologue_kernel
from duquant_serve.kernels.triton_prologue_split import _prologue_split_kernel
from duquant_serve.testing import cuda_tools

GEMM_SIG = {"a_ptr": "*i8", "stride_am": "i32", "p_ptr": "*u8", "stride_pn": "i32",
            "sx_ptr": "*fp32", "zx_ptr": "*fp32", "sqx_ptr": "*i32", "sw_ptr": "*fp32",
            "zw_ptr": "*fp32", "sqw_ptr": "*i32", "bias_ptr": "*bf16", "out_ptr": "*bf16",
            "stride_om": "i32", "ws_ptr": "*i32", "count_ptr": "*i32", "M": "i32", "N": "i32",
            "K": "i32", "HAS_BIAS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
            "BLOCK_K": "constexpr", "GROUP_M": "constexpr", "SPLIT_K": "constexpr"}
GROUPS_SIG = {"a_ptr": "*i8", "stride_am": "i32", "p_ptr": "*u8", "stride_pn": "i32",
              "sx_ptr": "*fp32", "zx_ptr": "*fp32", "sqx_ptr": "*i32", "sw_ptr": "*fp32",
              "zw_ptr": "*fp32", "gsum_ptr": "*i32", "bias_ptr": "*bf16", "out_ptr": "*bf16",
              "stride_om": "i32", "M": "i32", "N": "i32", "G": "i32", "KG": "i32",
              "HAS_BIAS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
              "BLOCK_K": "constexpr", "GROUP_M": "constexpr"}
EPI_SIG = {"acc_ptr": "*i32", "stride_am": "i32", "sx_ptr": "*fp32", "zx_ptr": "*fp32",
           "sqx_ptr": "*i32", "sw_ptr": "*fp32", "zw_ptr": "*fp32", "sqw_ptr": "*i32",
           "bias_ptr": "*bf16", "out_ptr": "*bf16", "stride_om": "i32", "M": "i32", "N": "i32",
           "K": "i32", "HAS_BIAS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"}
PRO_SIG = {"x_ptr": "*bf16", "stride_xm": "i32", "smooth_ptr": "*fp32", "r1_ptr": "*fp32",
           "r2_ptr": "*fp32", "inv_perm_ptr": "*i32", "scratch_ptr": "*fp32", "q_ptr": "*i8",
           "stride_qm": "i32", "scale_ptr": "*fp32", "zero_ptr": "*fp32", "sum_ptr": "*i32",
           "M": "i32", "C": "i32", "clip_ratio": "fp32", "QMAX": "constexpr", "B": "constexpr",
           "NBLK": "constexpr", "CHUNK": "constexpr", "BLOCK_M": "constexpr", "NS": "constexpr", "KC": "constexpr",
           "HAS_SMOOTH": "constexpr", "PRECISION": "constexpr", "RELOAD": "constexpr",
           "USE_LIBDEVICE": "constexpr"}

SPLIT_SIG = {"x_ptr": "*bf16", "stride_xm": "i32", "smooth_ptr": "*fp32", "r1t_ptr": "*fp32",
             "r2t_ptr": "*fp32", "perm_ptr": "*i64", "scratch_ptr": "*fp32", "part_ptr": "*fp32",
             "count_ptr": "*i32", "q_ptr": "*i8", "stride_qm": "i32", "scale_ptr": "*fp32",
             "zero_ptr": "*fp32", "sum_ptr": "*i32", "C": "i32", "clip_ratio": "fp32",
             "QMAX": "constexpr", "B": "constexpr", "NBLK": "constexpr", "NBLK_P2": "constexpr",
             "KD": "constexpr", "QC": "constexpr", "HAS_SMOOTH": "constexpr",
             "USE_LIBDEVICE": "constexpr"}


# What the JIT knows at a serving launch and AOT must be told: torch's allocations are 16-byte
# aligned, and these integers are multiples of 16 for every supported model (K % 64 == 0, N and
# C multiples of 64; M is anything). Triton specializes on both (tt.divisibility), and only
# with it can the GEMM's loads become cp.async copies that `num_stages` pipelines: compiled
# without, the same config was unpipelined and spilled up to 3.6 KB per thread.
ALIGNED_INTS = {"stride_am", "stride_pn", "stride_om", "N", "K", "stride_xm", "stride_qm", "C",
                "KG"}


def runtime_attrs(fn, sig: dict[str, str]) -> dict[tuple[int], list]:
    """Triton's specialization attributes for a launch with aligned pointers and ALIGNED_INTS."""
    return {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name, ty in sig.items()
            if ty.startswith("*") or name in ALIGNED_INTS}


def _mma_ops(ptx: str) -> list[str]:
    return sorted(set(re.findall(r"(?:wgmma\.mma_async\.sync|mma\.sync)\.aligned\.[a-z0-9_.]+", ptx)))


def main(arch: int) -> None:
    target = GPUTarget("cuda", arch, 32)
    jobs = []
    # The static buckets at full grids, then split-K ones as H100 (132 SMs) would get them at
    # narrow N (a tensor-parallel shard of qkv; SmolLM2's 576).
    for m, n, k, sms in ((1, 4096, 4096, None), (64, 4096, 4096, None), (256, 4096, 4096, None),
                         (4096, 4096, 4096, None), (1, 1536, 4096, 132), (64, 576, 576, 132)):
        cfg = dict(_gemm_config(m, n, k, None, sms))
        opts = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
        split = f" split={cfg['SPLIT_K']}" if cfg["SPLIT_K"] > 1 else ""
        jobs.append((f"gemm M={m}{split}", _w4a4_gemm_kernel, GEMM_SIG,
                     {"HAS_BIAS": True, **cfg}, opts))
    # The block-scaled GEMM (activation groups of 128 channels) at the same static buckets.
    for m in (1, 64, 256, 4096):
        cfg = groups_config(_gemm_config(m, 4096, 4096, None, None), 128)
        opts = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
        jobs.append((f"gemm M={m} groups=32", _w4a4_gemm_groups_kernel, GROUPS_SIG,
                     {"HAS_BIAS": True, **cfg}, opts))
    jobs.append(("epilogue", _epilogue_kernel, EPI_SIG,
                 {"HAS_BIAS": True, "BLOCK_M": 32, "BLOCK_N": 128}, {"num_warps": 4}))
    # Every token tile (1, 2 and 4 per program, as H100's 132 SMs get them) at real widths.
    for m, c, b in ((1, 4096, 128), (64, 11008, 128), (300, 4096, 128), (2048, 11008, 128),
                    (1, 576, 64), (300, 576, 64), (2048, 576, 64)):
        bm, chunk, warps = _config(m, c, b, 132)
        for prec, phase3 in itertools.product(("tf32x3", "tf32", "fp16"),
                                               ("reload", "recompute")):
            consts = {"QMAX": 15, "B": b, "NBLK": c // b, "CHUNK": chunk, "BLOCK_M": bm,
                      "NS": min(b, NS), "KC": min(b, KC), "HAS_SMOOTH": True, "PRECISION": prec,
                      "RELOAD": phase3 == "reload", "USE_LIBDEVICE": True}
            jobs.append((f"prologue M={m} C={c} b={b} {prec} {phase3}", _prologue_kernel,
                         PRO_SIG, consts, {"num_warps": warps, "num_stages": 1}))
    for c, b in ((4096, 128), (14336, 128), (576, 64)):
        consts = {"QMAX": 15, "B": b, "NBLK": c // b, "NBLK_P2": triton.next_power_of_2(c // b),
                  "KD": 32, "QC": 1024, "HAS_SMOOTH": True, "USE_LIBDEVICE": True}
        jobs.append((f"prologue split C={c} b={b}", _prologue_split_kernel, SPLIT_SIG, consts,
                     {"num_warps": 4, "num_stages": 1}))
    for name, fn, sig, consts, opts in jobs:
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts,
                                     attrs=runtime_attrs(fn, sig)), target=target, options=opts)
        atomics = sorted(set(re.findall(r"atom\.[a-z0-9_.]+", k.asm["ptx"])))
        print(json.dumps({"kernel": name, "arch": arch, "mma": _mma_ops(k.asm["ptx"]),
                          "atomics": atomics,
                          "async_copies": len(re.findall(r"async_copy_global_to_local",
                                                         k.asm["ttgir"])),
                          "shared_bytes": k.metadata.shared, **_resources(k.asm["cubin"])}),
              flush=True)


def _resources(cubin: bytes) -> dict:
    """Registers and stack (spill) bytes per thread, read from the cubin."""
    exe = cuda_tools.cuobjdump()
    if exe is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = cuda_tools.resource_usage(Path(f.name), exe)
    return {k: usage[0][k] for k in ("registers", "stack_bytes")} if usage else {}


if __name__ == "__main__":
    main(int(sys.argv[1]))
