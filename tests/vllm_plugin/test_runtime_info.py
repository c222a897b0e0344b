"""runtime_info: the engine-side record of each layer's kernel and its merge on the server side."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from duquant_serve.vllm_plugin import runtime_info as ri


def _spec(k: int = 256, n: int = 512, b: int = 128, groups: int = 1):
    return SimpleNamespace(in_features=k, out_features=n, block_size=b, act_groups=groups)


def _prepared(nbytes: int, spec=None):
    return SimpleNamespace(resident_bytes=lambda: nbytes, spec=spec or _spec())


def test_no_directory_records_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv(ri.RUNTIME_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    ri.record_layer("a", "torch_ref", _spec(), _prepared(10))
    assert list(tmp_path.iterdir()) == []


def test_record_appends_one_line_per_layer(monkeypatch, tmp_path):
    monkeypatch.setenv(ri.RUNTIME_DIR_ENV, str(tmp_path))
    ri.record_layer("m.qkv_proj", "torch_ref", _spec(), _prepared(100))
    # Two row-parallel shards of 128 inputs on this rank, one prepared linear each; the first
    # holds three activation groups, the second one (a kernel without native groups would
    # list one prepared linear per group instead).
    ri.record_layer("m.o_proj", "torch_ref", _spec(128, 256, 64),
                    [_prepared(30, _spec(128, 256, 64, 3)), _prepared(40, _spec(128, 256, 64))])
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("layers-") and files[0].suffix == ".jsonl"
    first, second = (json.loads(line) for line in files[0].read_text().splitlines())
    assert first == {"pid": os.getpid(), "rank": 0, "name": "m.qkv_proj", "kernel": "torch_ref",
                     "in_features": 256, "out_features": 512, "block_size": 128, "groups": 1,
                     "weight_bytes": 100}
    # the rank's width is both shards together, its groups all of theirs
    assert second["in_features"] == 256 and second["groups"] == 4
    assert second["weight_bytes"] == 70


def test_report_merges_ranks(tmp_path):
    def write(pid, rank, layers):
        (tmp_path / f"layers-{pid}.jsonl").write_text("".join(
            json.dumps({"pid": pid, "rank": rank, "name": name, **e}) + "\n"
            for name, e in layers.items()))

    def entry(kernel, nbytes):
        return {"kernel": kernel, "in_features": 8, "out_features": 8, "block_size": 8,
                "groups": 1, "weight_bytes": nbytes}

    write(11, 1, {"l0": entry("triton", 5), "l1": entry("triton", 7)})
    write(10, 0, {"l0": entry("cutlass", 5), "l1": entry("triton", 7)})
    with open(tmp_path / "layers-10.jsonl", "a") as f:
        f.write('{"pid": 10, "rank": 0, "na')  # a line still being appended is skipped
    r = ri.read_kernel_report(tmp_path)
    assert r["layers"] == {"l0": "cutlass", "l1": "triton"}  # rank 0 wins
    assert r["counts"] == {"cutlass": 1, "triton": 1}
    assert r["weight_bytes"] == {"cutlass": 5, "triton": 19}  # summed over ranks
    assert set(r["ranks"]) == {"0", "1"}
    assert r["ranks"]["1"]["l0"] == entry("triton", 5)


def test_remove_records_keeps_other_files(tmp_path):
    (tmp_path / "layers-1.jsonl").write_text("{}\n")
    (tmp_path / "mine.txt").write_text("x")
    ri.remove_records(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    (tmp_path / "mine.txt").unlink()
    ri.remove_records(tmp_path)
    assert not tmp_path.exists()
