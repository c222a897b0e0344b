"""benchmarks/accuracy/select_on_validation.py on a tiny model: variants with config and
pipeline overrides, the calibration size, rows appended to one JSON."""

import json
import math
import subprocess
import sys
from pathlib import Path

from duquant_serve.testing.tiny import make_tiny_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "select_on_validation.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600)


def test_variants_and_calibration_size(tmp_path):
    src = make_tiny_model(tmp_path / "m", "llama")
    out = tmp_path / "sel.json"
    common = ["--model", str(src), "--json", str(out), "--limit", "1", "--seqlen", "64"]
    r = _run(*common, "--nsamples", "2", "--calib-seqlen", "32",
             "--variant", "fp:fp16", "--variant", "base:duquant:rotation_steps=4")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(*common, "--nsamples", "3", "--calib-seqlen", "16", "--val-limit", "2",
             "--variant", "opt:duquant-opt:learn_steps=2,learn_start_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [row["variant"] for row in rows] == ["fp", "base", "opt"]  # appended, in order
    # The method's default activation groups are part of the recorded config.
    assert rows[1]["config"] == {"act_clip_ratio": 1.0, "act_group_size": 128, "rotation_steps": 4}
    assert rows[2]["options"] == {"learn_steps": 2, "learn_start_steps": 2}
    assert [row["calibration"] for row in rows] == ["wikitext2 validation, 2 x 32"] * 2 + [
        "wikitext2 validation, 3 x 16"]
    assert all(row["validation"] > 1 and row["test"] > 1 for row in rows)
    assert rows[0]["validation"] != rows[1]["validation"]  # quantization changed the model
    # Window counts and per-window NLLs: the score is their mean's exp.
    assert [(r["validation_windows"], r["test_windows"]) for r in rows] == [(1, 1)] * 2 + [(2, 1)]
    for row in rows:
        for split in ("validation", "test"):
            nll = row[f"{split}_window_nll"]
            assert len(nll) == row[f"{split}_windows"]
            assert abs(math.exp(sum(nll) / len(nll)) - row[split]) < 1e-3 * row[split]


def test_unknown_override_is_refused(tmp_path):
    r = _run("--json", str(tmp_path / "x.json"), "--variant", "bad:duquant:no_such_field=1")
    assert r.returncode == 2 and "no_such_field" in r.stderr
    assert not (tmp_path / "x.json").exists()
