"""benchmarks/quantize/bench_quantize.py: quantization time per device, device agreement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from offline_quant.pipeline import PipelineOptions

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "quantize" / "bench_quantize.py"


def _run(tmp_path, *args) -> list[dict]:
    r = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [json.loads(x) for x in (tmp_path / "quantize.jsonl").read_text().splitlines()]


def test_compare_against_the_same_device_agrees_exactly(tmp_path):
    # 'cpu:0' runs the pipeline's device branch while staying on the CPU: every result equal.
    (row,) = _run(tmp_path, "compare", "--device", "cpu:0", "--steps", "16")
    assert row["ok"] and row["linears"] == 14
    assert row["perm_equal_frac"] == 1.0 and row["max_rotation_diff"] == 0.0
    assert row["code_mismatch_frac"] == 0.0
    assert row["logits_rel_err_device"] == row["logits_rel_err_cpu"] > 0


def test_time_rows(tmp_path):
    rows = _run(tmp_path, "time", "--shape", "smollm2-135m", "--layers", "2", "--devices",
                "cpu,cpu", "--nsamples", "2", "--seqlen", "64", "--steps", "8",
                "--methods", "duquant,duquant-opt")
    assert [r["method"] for r in rows] == ["duquant", "duquant-opt"]  # devices deduplicated
    row, opt = rows
    assert row["device"] == "cpu" and row["layers_built"] == 2 and row["real_layers"] == 30
    stages = row["seconds_per_stage"]
    assert stages["rotation_permutation"] > 0 and stages["calibration_forward"] > 0
    assert row["extrapolated_model_seconds"] == pytest.approx(row["seconds_per_layer"] * 30, abs=0.1)
    # The optimized method's extra stages are timed where they run.
    assert opt["seconds_per_stage"]["learned_transforms"] > 0 and opt["seconds_per_stage"]["gptq"] > 0
    # Each row names the greedy steps that ran: --steps for duquant, the learned method's own start.
    assert row["steps"] == 8 and opt["steps"] == PipelineOptions().learn_start_steps != 8


@pytest.mark.gpu
def test_gpu_quantization_agrees_with_cpu(tmp_path):
    (row,) = _run(tmp_path, "compare", "--device", "cuda")
    assert row["ok"], row
