"""benchmarks/kernels/bench_cpu_linear.py: CPU W4A4 kernels vs the 16-bit linear, same run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from duquant_serve.kernels.base import LayerSpec
from duquant_serve.kernels.select import choose_kernel

ROOT = Path(__file__).resolve().parents[2]


def test_rows_time_every_cpu_kernel_against_16_bit(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernels" / "bench_cpu_linear.py"),
                        "--ms", "1,3", "--out", str(tmp_path)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "cpu_linear.jsonl").read_text().splitlines()]
    assert {tuple(x["shape"]) for x in rows} == {(m, n, k) for m in (1, 3)
                                                 for n, k in ((960, 576), (576, 576),
                                                              (3072, 576), (576, 1536))}
    pick = choose_kernel(LayerSpec(64, 64, 64, act_dtype=torch.float32, device_type="cpu")).name
    for x in rows:
        assert x["bf16_ms"] > 0 and x["torch_ref_ms"] > 0
        assert x["cpu_int8_ms"] > 0 and x["cpu_fp32_gemm_ms"] > 0
        assert x["w4a4_path"] == pick and x["w4a4_ms"] == x[f"{pick}_ms"]
        assert x["speedup"] == x["bf16_ms"] / x["w4a4_ms"]
        assert x["bf16_compiled_ms"] > 0 and x["w4a4_compiled_ms"] == x[f"{pick}_compiled_ms"] > 0
        assert x["speedup_compiled"] == x["bf16_compiled_ms"] / x["w4a4_compiled_ms"]
