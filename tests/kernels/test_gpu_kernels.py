"""On a CUDA machine: every kernel path against core.reference through benchmarks/gpu_session.py
--mode check, run in a subprocess because this directory's conftest puts Triton in interpreter
mode for the CPU tests (triton.jit reads TRITON_INTERPRET once, at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_all_paths_match_reference_on_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_session.py"), "--mode",
                        "check", "--out", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    linear = [x for x in rows if x.get("check") == "linear"]
    prologue = [x for x in rows if x.get("check") == "prologue"]
    assert linear and prologue
    assert {x["phase3"] for x in prologue} >= {"reload", "recompute"}
    assert {x["decode"] for x in prologue} == {"tiled", "split"}
    for x in linear:
        assert "error" not in x, x
        assert x["nan"] == 0 and x["rel_err"] < 1e-2, x  # bf16 output rounding is ~2e-3
    # Captured at decode size, replayed after an eager prefill-sized call: still correct.
    graph = [x for x in rows if x.get("check") == "graph"]
    assert {(x["path"], x["decode"]) for x in graph} >= {("triton", "tiled"), ("triton", "split")}
    for x in graph:
        assert "error" not in x, x
        assert x["nan"] == 0 and x["rel_err"] < 1e-2, x
    # The load-time self-test passes every path it would hand to a server.
    checks = [x for x in rows if x.get("check") == "selftest"]
    assert {x["path"] for x in checks} >= {"triton"}
    assert all(x["passed"] for x in checks), [x for x in checks if not x["passed"]]
    for x in prologue:
        assert x["max_code_diff"] <= 1, x
        # One-pass TF32 / fp16 operands move ~1e-3 of codes (prologue_precision.py).
        assert x["frac"] <= (5e-3 if x["precision"] in ("tf32", "fp16") else 1e-4), x
        assert x["sum_diff"] <= x["mismatches"], x
