"""benchmarks/accuracy/cross_domain.py on a tiny model: every method on every text, one run."""

import json
import subprocess
import sys
from pathlib import Path

from duquant_serve.testing.tiny import make_tiny_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "cross_domain.py"


def test_rows_have_every_text(tmp_path, wikitext_valid):
    src = make_tiny_model(tmp_path / "m", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    other = tmp_path / "other.txt"
    other.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", str(src), "--methods",
                        "fp16,duquant", "--text", f"wiki={wikitext_valid}", "--text",
                        f"fox={other},{other}", "--seqlen", "64", "--limit", "2",
                        "--calib", wikitext_valid, "--act-clip", "0.8", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["texts"]["fox"]["files"] == [str(other)] * 2 and res["texts"]["wiki"]["windows"] == 2
    assert [row["method"] for row in res["results"]] == ["fp16", "duquant"]
    assert all(row["wiki"] > 1 and row["fox"] > 1 for row in res["results"])
    q = res["results"][1]
    assert (q["act_group_size"], q["act_clip_ratio"]) == (128, 0.8)  # default groups, given clip
    # Quantization changes the model: the rows differ.
    assert res["results"][0]["wiki"] != res["results"][1]["wiki"]


def test_summary_table_gap_closed():
    from benchmarks.accuracy.summarize import table

    res = {"results": [{"method": "fp16", "ppl": 20.0, "seconds": 1},
                       {"method": "hadamard", "ppl": 60.0, "seconds": 2},
                       {"method": "duquant-opt", "ppl": 26.0, "seconds": 3}]}
    lines = table(res).splitlines()
    assert lines[2].startswith("| fp16 | 20.00 | — |")
    assert lines[3].startswith("| hadamard | 60.00 | 0.0% |")
    assert lines[4].startswith("| duquant-opt | 26.00 | 85.0% |")
