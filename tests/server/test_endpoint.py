"""The /v1/duquant endpoint plugin's pieces without a server (with one: test_front_door.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from duquant_serve.core.config import DuQuantConfig
from duquant_serve.server import endpoint
from duquant_serve.vllm_plugin.runtime_info import RUNTIME_DIR_ENV


def test_quant_config_from_vllms_config_or_the_hf_config():
    qcfg = DuQuantConfig(tp_shards=2)
    from_vllm = SimpleNamespace(vllm_config=SimpleNamespace(quant_config=SimpleNamespace(qcfg=qcfg)))
    assert endpoint._quant_config(from_vllm) == qcfg.to_dict()
    from_hf = SimpleNamespace(model_config=SimpleNamespace(
        hf_config=SimpleNamespace(quantization_config=qcfg.to_dict())))
    assert endpoint._quant_config(from_hf)["tp_shards"] == 2
    other = SimpleNamespace(model_config=SimpleNamespace(
        hf_config=SimpleNamespace(quantization_config={"quant_method": "awq"})))
    assert endpoint._quant_config(other) is None
    assert endpoint._quant_config(SimpleNamespace()) is None


def test_kernel_report_says_why_it_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.delenv(RUNTIME_DIR_ENV, raising=False)
    r = endpoint.kernel_report()
    assert not r["available"] and RUNTIME_DIR_ENV in r["reason"]
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path))
    assert "no DuQuant layer recorded" in endpoint.kernel_report()["reason"]
    (tmp_path / "layers-1.jsonl").write_text(json.dumps({
        "pid": 1, "rank": 0, "name": "l", "kernel": "torch_ref", "in_features": 8,
        "out_features": 8, "block_size": 8, "groups": 1, "weight_bytes": 3}) + "\n")
    r = endpoint.kernel_report()
    assert r["available"] and r["counts"] == {"torch_ref": 1}
