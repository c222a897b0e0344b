"""benchmarks/accuracy/checkpoint_int_vs_fake.py: one checkpoint's integer, exact (float64) and
fp32 fake-quant paths, in one process or as single-path runs joined by --merge (how the whole
split is run)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "checkpoint_int_vs_fake.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600)


def test_split_runs_merge_to_the_joint_run(tiny_checkpoint, wikitext_valid, tmp_path):
    _, ck = tiny_checkpoint
    common = [str(ck), "--dataset", wikitext_valid, "--limit", "2", "--seqlen", "64"]
    out = {}
    for path in ("all", "int", "exact", "fake"):
        out[path] = tmp_path / f"{path}.json"
        r = _run(*common, "--path", path, "--json", str(out[path]))
        assert r.returncode == 0, r.stderr[-3000:]
    merged = tmp_path / "merged.json"
    r = _run("--merge", str(out["int"]), str(out["exact"]), str(out["fake"]),
             "--json", str(merged))
    assert r.returncode == 0, r.stderr[-3000:]
    joint, split = json.loads(out["all"].read_text()), json.loads(merged.read_text())
    assert joint["windows"] == split["windows"] == 2
    assert split["ppl"] == joint["ppl"] and split["rel_diff"] == joint["rel_diff"]
    assert split["per_window_nll"] == joint["per_window_nll"]
    assert set(joint["per_window_nll"]) == {"int", "exact", "fake"}
    # The exact path is the integer reference's number; fp32 fake quant is another rounding.
    assert joint["ppl"]["int"] == joint["ppl"]["exact"]
    assert joint["windows_bit_equal"]["exact"] == 2
    assert joint["ppl"]["int"] != joint["ppl"]["fake"]

    for bad in ((out["fake"], out["int"]), (out["int"],), (out["int"], out["int"])):
        r = _run("--merge", *map(str, bad), "--json", str(tmp_path / "x.json"))
        assert r.returncode == 2 and "int run's JSON first" in r.stderr
        assert not (tmp_path / "x.json").exists()
