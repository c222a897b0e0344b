"""Tuned tile-config tables (duquant_serve/kernels/tuned.py) and the Triton GEMM reading them."""

from __future__ import annotations

import json

import pytest
import torch

from duquant_serve.core.reference import gemm_epilogue_ref
from duquant_serve.kernels import triton_gemm, tuned
from duquant_serve.kernels.layout import pack_int4_grouped
from duquant_serve.kernels.tuned import TunedConfigError, lookup, parse_table, table_name

DEVICE = "NVIDIA Test GPU 80GB"


def cfg(bm=16, bn=32, bk=256, gm=1, warps=4, stages=4, split=1):
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=warps,
                num_stages=stages, SPLIT_K=split)


def write_table(d, entries, device=DEVICE, **over):
    data = {"kernel": "triton_gemm", "device": device, "entries": entries, **over}
    path = d / table_name("triton_gemm", device)
    path.write_text(json.dumps(data))
    return path


def test_table_name_is_a_plain_file_name():
    assert table_name("triton_gemm", "NVIDIA H100 80GB HBM3") == \
        "triton_gemm__NVIDIA_H100_80GB_HBM3.json"


def test_lookup_serves_each_count_from_the_next_tuned_one(tmp_path, monkeypatch):
    a, b, c = cfg(bn=16), cfg(64, 64, 64, 4), cfg(128, 128, 64, 8, 8, 3)
    write_table(tmp_path, [dict(n=4096, k=4096, m=m, config=x)
                           for m, x in ((16, a), (1024, c), (64, b))])  # any order
    d = str(tmp_path)
    assert lookup("triton_gemm", DEVICE, 4096, 4096, 1, d) == a
    assert lookup("triton_gemm", DEVICE, 4096, 4096, 16, d) == a
    assert lookup("triton_gemm", DEVICE, 4096, 4096, 17, d) == b
    assert lookup("triton_gemm", DEVICE, 4096, 4096, 65, d) == c
    assert lookup("triton_gemm", DEVICE, 4096, 4096, 100_000, d) == c  # above all: the largest
    assert tuned.counts("triton_gemm", DEVICE, 4096, 4096, d) == (16, 64, 1024)
    assert tuned.counts("triton_gemm", DEVICE, 4096, 11008, d) == ()
    # A shape, device or kernel the table does not hold: no tuned config.
    assert lookup("triton_gemm", DEVICE, 4096, 11008, 16, d) is None
    assert lookup("triton_gemm", "Other GPU", 4096, 4096, 16, d) is None
    assert lookup("triton_gemm", DEVICE, 4096, 4096, 16) is None  # shipped tables only


@pytest.mark.parametrize("mutate,match", [
    (lambda t: t.update(kernel="cutlass"), "not a 'triton_gemm' table"),
    (lambda t: t.update(entries=[]), "non-empty list"),
    (lambda t: t["entries"][0].pop("m"), "positive integers"),
    (lambda t: t["entries"][0].update(n=-1), "positive integers"),
    (lambda t: t["entries"][0]["config"].pop("GROUP_M"), "exactly"),
    (lambda t: t["entries"][0]["config"].update(BLOCK_K=32), "BLOCK_K=32 is not a power of two >= 64"),
    (lambda t: t["entries"][0]["config"].update(BLOCK_N=48), "BLOCK_N=48"),
    (lambda t: t["entries"][0]["config"].update(num_warps=3), "num_warps=3"),
    (lambda t: t["entries"][0]["config"].update(num_stages=True), "num_stages=True"),
    (lambda t: t["entries"][0]["config"].update(SPLIT_K=0), "SPLIT_K=0 is not between 1 and 8"),
    (lambda t: t["entries"][0]["config"].update(
        SPLIT_K=triton_gemm.SPLIT_K_MAX + 1), "SPLIT_K=9"),
    (lambda t: t["entries"].append(dict(t["entries"][0])), "second entry"),
    (lambda t: t.update(device="NVIDIA A100"), "tuned on 'NVIDIA A100'"),
])
def test_bad_tables_are_refused_naming_the_file(tmp_path, monkeypatch, mutate, match):
    t = {"kernel": "triton_gemm", "device": DEVICE,
         "entries": [dict(n=64, k=128, m=16, config=cfg())]}
    mutate(t)
    path = tmp_path / table_name("triton_gemm", DEVICE)
    path.write_text(json.dumps(t))
    with pytest.raises(TunedConfigError, match=match) as e:
        lookup("triton_gemm", DEVICE, 64, 128, 16, str(tmp_path))
    assert str(path) in str(e.value)


def test_unreadable_table_is_refused(tmp_path, monkeypatch):
    path = tmp_path / table_name("triton_gemm", DEVICE)
    path.write_text('{"kernel": "triton_gemm", "entries": [')
    with pytest.raises(TunedConfigError, match="unreadable"):
        lookup("triton_gemm", DEVICE, 64, 128, 16, str(tmp_path))


def test_user_directory_comes_before_shipped_tables(tmp_path, monkeypatch):
    shipped, mine = tmp_path / "shipped", tmp_path / "mine"
    shipped.mkdir()
    mine.mkdir()
    write_table(shipped, [dict(n=64, k=128, m=16, config=cfg(bn=16))])
    write_table(mine, [dict(n=64, k=128, m=16, config=cfg(bn=64))])
    monkeypatch.setattr(tuned, "SHIPPED_DIR", shipped)
    assert lookup("triton_gemm", DEVICE, 64, 128, 3)["BLOCK_N"] == 16
    assert lookup("triton_gemm", DEVICE, 64, 128, 3, str(mine))["BLOCK_N"] == 64


def test_shipped_tables_parse():
    # Every table committed with the package is one the kernel accepts.
    for path in sorted(tuned.SHIPPED_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        kernel = path.name.split("__")[0]
        assert parse_table(data, str(path), kernel)
        assert path.name == table_name(kernel, data["device"])


def test_triton_gemm_runs_the_tuned_config(tmp_path, monkeypatch):
    # A config the static choice never makes (16×16 tiles, 128-code K tiles, K split in two)
    # serves M = 5 on the fake device: _gemm_config returns it, and the kernel computes the
    # right answer with it.
    g = torch.Generator().manual_seed(3)
    n, k, m = 40, 384, 5
    odd = cfg(16, 16, 128, 1, 4, 2, split=2)
    write_table(tmp_path, [dict(n=n, k=k, m=16, config=odd)])
    d = str(tmp_path)
    assert triton_gemm._gemm_config(m, n, k, DEVICE, None, d) == odd
    assert triton_gemm._gemm_config(m, n, k, None, None, d) != odd  # off CUDA: the static choice
    assert triton_gemm._gemm_config(m, n, k, DEVICE) != odd  # the shipped tables only
    used = []
    real = triton_gemm._gemm_config
    monkeypatch.setattr(triton_gemm, "_gemm_config", lambda *a: used.append(real(*a)) or used[-1])
    monkeypatch.setattr(triton_gemm, "_device_name", lambda device: DEVICE)
    qx = torch.randint(0, 16, (m, k), generator=g, dtype=torch.int8)
    qw = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    sx, zx = torch.rand(m, generator=g) + 0.1, torch.randint(0, 16, (m,), generator=g).float()
    sw, zw = torch.rand(n, generator=g) + 0.1, torch.randint(0, 16, (n,), generator=g).float()
    sqx, sqw = qx.sum(-1, dtype=torch.int32), qw.sum(-1, dtype=torch.int32)
    y = triton_gemm.w4a4_gemm_triton(qx, sx, zx, sqx, pack_int4_grouped(qw), sw, zw, sqw, None,
                                     torch.float32, tuned_configs=d)
    assert used == [odd]
    ref = gemm_epilogue_ref(qx, sx, zx, sqx, qw, sw, zw, sqw, None, torch.float32)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("made,running,warns", [
    ("2.1.0", "3.6.0", True),  # another minor version: used, with a warning to re-tune
    ("3.6.0", "3.6.1", False),  # the same minor version: quiet
])
def test_table_from_another_triton(tmp_path, monkeypatch, caplog, made, running, warns):
    write_table(tmp_path, [dict(n=64, k=128, m=16, config=cfg())], triton=made)
    monkeypatch.setattr(tuned, "triton_version", lambda: running)
    with caplog.at_level("WARNING", logger="duquant_serve.kernels.tuned"):
        assert lookup("triton_gemm", DEVICE, 64, 128, 1, str(tmp_path)) == cfg()
    assert (f"tuned under Triton {made}, this process runs {running}" in caplog.text) == warns
