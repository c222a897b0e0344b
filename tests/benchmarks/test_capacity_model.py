"""The capacity model's arithmetic against known figures."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "capacity"))

import capacity_model as cm  # noqa: E402


def test_parameter_counts_match_the_published_models():
    assert cm.MODELS["llama2-7b"].params() == pytest.approx(6.738e9, rel=1e-3)
    assert cm.MODELS["llama2-70b"].params() == pytest.approx(68.98e9, rel=1e-3)
    assert cm.MODELS["llama3-70b"].params() == pytest.approx(70.55e9, rel=1e-3)


def test_w4a4_weights_a_quarter_plus_the_16_bit_embeddings():
    m = cm.MODELS["llama2-70b"]
    bf16, w4 = cm.weight_bytes(m, "bf16"), cm.weight_bytes(m, "w4a4")
    emb = 2 * m.embedding_params()
    linear_weights = m.layers * sum(o * k for o, k in m.linears())
    # 4-bit codes + 16-bit embeddings, and a little for scales, zeros and transforms
    assert 0.5 * linear_weights + emb < w4 < 0.5 * linear_weights + emb + 0.01 * bf16
    assert cm.weight_bytes(m, "w4a4", int8_weights=True) > w4 + 0.49 * linear_weights


def test_kv_cache_per_token():
    assert cm.kv_bytes_per_token(cm.MODELS["llama2-70b"], "bf16") == 2 * 80 * 8 * 128 * 2
    assert cm.kv_bytes_per_token(cm.MODELS["llama2-7b"], "fp8") == 2 * 32 * 32 * 128


def test_smallest_layout_fits_and_is_minimal():
    gib = cm.GIB
    lay = cm.smallest_layout(130 * gib, 20 * gib, 79.1, 0.9, 4.0)
    assert lay["gpus"] == 4 and lay["tp"] == 4 and lay["pp"] == 1
    assert cm.smallest_layout(30 * gib, 5 * gib, 79.1, 0.9, 4.0)["gpus"] == 1
    # more than 8 GPUs: pipeline stages across nodes
    lay = cm.smallest_layout(700 * gib, 20 * gib, 79.1, 0.9, 4.0)
    assert lay["tp"] == 8 and lay["pp"] >= 2 and lay["nodes"] == lay["pp"]
    assert cm.smallest_layout(10_000 * gib, 0, 79.1, 0.9, 4.0) is None


def test_decode_ratio_falls_as_kv_dominates():
    m = cm.MODELS["llama2-70b"]
    w4, bf = cm.weight_bytes(m, "w4a4"), cm.weight_bytes(m, "bf16")
    kv = cm.kv_bytes_per_token(m, "bf16")
    r1, r64 = cm.decode_ratio(w4, bf, kv, 1, 4096), cm.decode_ratio(w4, bf, kv, 64, 4096)
    assert bf / w4 > r1 > r64 > 1


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert cm.main(["--models", "llama2-7b", "--json", str(out)]) == 0
    assert "llama2-7b" in capsys.readouterr().out and out.stat().st_size > 0
    with pytest.raises(SystemExit):
        cm.main(["--batch", "0"])
