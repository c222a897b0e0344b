"""benchmarks/harness.py: summaries stay short, raw rows go beside them."""

from __future__ import annotations

import json

from benchmarks.harness import machine_info, write_report
from benchmarks.models import MODELS, block_for
from benchmarks.serve.bench_serve import split_raw


def test_raw_rows_beside_the_summary(tmp_path):
    result = {"models": [{"label": "16-bit", "runs": [
        {"workload": "decode", "concurrency": 4, "summary": {"tpot_ms": {"p50": 40.0}},
         "per_request": {"ttft_s": [0.1, 0.2], "itl_s": [[0.04], [0.05]]}}]}]}
    path = write_report(tmp_path / "r.json", *split_raw(result))
    summary = json.loads(path.read_text())
    assert "per_request" not in summary["models"][0]["runs"][0]
    assert summary["raw_rows"] == "r.raw.jsonl"
    rows = [json.loads(line) for line in (tmp_path / "r.raw.jsonl").read_text().splitlines()]
    assert rows == [{"model": "16-bit", "workload": "decode", "concurrency": 4,
                     "ttft_s": [0.1, 0.2], "itl_s": [[0.04], [0.05]]}]
    # Without raw rows: the summary alone.
    write_report(tmp_path / "s.json", {"a": 1})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 1}
    assert not (tmp_path / "s.raw.jsonl").exists()


def test_model_table_and_block_rule():
    assert MODELS["llama2-7b"].params() == 6_738_415_616
    assert MODELS["smollm2-135m"].site_linears() == {
        "qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
    assert block_for(576) == 64 and block_for(11008) == 128 and block_for(1472) == 64
    assert machine_info()["cpu_count"] >= 1
