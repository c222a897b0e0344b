"""benchmarks/accuracy/path_divergence.py: per-layer drift between a checkpoint's integer and
fake-quant paths."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "path_divergence.py"


def test_records_every_layer_and_both_nlls(tiny_checkpoint, wikitext_valid, tmp_path):
    _, ck = tiny_checkpoint
    out = tmp_path / "d.json"
    r = subprocess.run([sys.executable, str(SCRIPT), str(ck), "--dataset", wikitext_valid,
                        "--seqlen", "64", "--windows", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    layers = json.loads((ck / "config.json").read_text())["num_hidden_layers"]
    assert len(d["windows"]) == 2 and d["act_group_size"] == 0
    for w in d["windows"]:
        assert len(w["layer_rel_diff"]) == layers
        # The paths agree per linear to fp32 rounding: the first layer's outputs barely differ.
        assert 0 <= w["layer_rel_diff"][0] < 1e-4
        assert set(w["nll"]) == {"int", "fake"} and all(v > 0 for v in w["nll"].values())
