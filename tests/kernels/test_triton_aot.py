"""Compile the Triton kernels for sm_90 / sm_80 here (no GPU needed) and check what they became:
int8 tensor-core MMA in the GEMM (wgmma on sm_90 for M ≥ 64 tiles), tf32 (or fp16) tensor cores
in the prologue, shared memory within the per-block limit of the target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).with_name("aot_compile.py")
ROOT = Path(__file__).resolve().parents[2]
SMEM_LIMIT = {90: 227 * 1024, 80: 163 * 1024, 89: 99 * 1024}
# Compiled as a serving launch is (aligned pointers, strides and N/K/C multiples of 16:
# aot_compile.runtime_attrs), no GEMM config spills and no prologue variant spills more than
# 40 B per thread on sm_80/89/90 under Triton 3.9 or 3.6. (Compiled without those attributes,
# the numbers this file used to bound, the GEMM went unpipelined and spilled up to 3.6 KB.)
PROLOGUE_STACK_LIMIT = 64
GEMM_STACK_LIMIT = 0


def compile_report(arch: int, first_on_path: Path | None = None) -> str:
    """aot_compile.py's report for `arch`, run without the interpreter; `first_on_path`: a
    directory searched before everything else (another Triton, test_gpu_image_triton.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = [str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(([str(first_on_path)] if first_on_path else []) + path)
    r = subprocess.run([sys.executable, str(SCRIPT), str(arch)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def check_report(report: str, arch: int) -> None:
    """Check aot_compile.py's output for `arch` (also used under the GPU image's Triton)."""
    rows = [json.loads(line) for line in report.splitlines() if line.startswith("{")]
    assert rows
    for r in rows:
        assert r["shared_bytes"] <= SMEM_LIMIT[arch], r
        if r["kernel"].startswith("gemm"):
            assert any(".s32.s8.s8" in op for op in r["mma"]), r
            if arch == 90 and r["kernel"].split()[1] != "M=1":  # 16-row decode tile: mma.sync
                assert any(op.startswith("wgmma") for op in r["mma"]), r
            # Software-pipelined main loop: its loads are cp.async copies into shared memory.
            assert r["async_copies"] > 0, r
            # Split-K: the last program per tile is found by a GPU-scope acquire-release
            # counter; unsplit grids have no atomics at all.
            split = " split=" in r["kernel"]
            assert split == any(".gpu.acq_rel.add" in a for a in r["atomics"]), r
            assert split or not r["atomics"], r
            if "stack_bytes" in r:
                assert r["stack_bytes"] <= GEMM_STACK_LIMIT, r
        elif r["kernel"].startswith("prologue"):
            if r["kernel"].startswith("prologue split"):
                # CUDA-core fp32 dots; the last program per token is found by a GPU-scope
                # acquire-release counter (what makes the other programs' stores visible to it).
                assert not r["mma"] and any(".gpu.acq_rel.add" in a for a in r["atomics"]), r
            else:  # the R1/R2 dots on tensor cores, in the kernel's operand precision
                kind = ".f32.f16.f16" if " fp16 " in r["kernel"] else "tf32"
                assert any(kind in op for op in r["mma"]), r
            assert r.get("stack_bytes", 0) <= PROLOGUE_STACK_LIMIT, r


def test_triton_kernels_compile_for_sm90():
    check_report(compile_report(90), 90)


@pytest.mark.slow
def test_triton_kernels_compile_for_sm80():
    check_report(compile_report(80), 80)


@pytest.mark.slow
def test_triton_kernels_fit_sm89_shared_memory():
    """Ada (and sm_86) allow 99 KB per block: the Triton path no longer refuses them."""
    check_report(compile_report(89), 89)
