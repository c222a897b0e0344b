"""export_hf_model: a plain HF directory of the source model, cached, never clobbering."""

import json

import pytest
import torch

from duquant_serve.testing.tiny import make_tiny_model
from offline_quant.models import EXPORT_MARKER, export_hf_model


def test_export_roundtrip_and_cache(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    src = make_tiny_model(tmp_path / "src", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    out = export_hf_model(str(src), tmp_path / "exp")
    assert json.loads((out / EXPORT_MARKER).read_text())["dtype"] == "float32"
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    assert not list(tmp_path.glob(".exp.tmp-*"))
    want = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).state_dict()
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in got)

    before = (out / "model.safetensors").stat().st_mtime_ns
    assert export_hf_model(str(src), tmp_path / "exp") == out  # cached: not written again
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_export_refuses_foreign_directory(tmp_path):
    src = make_tiny_model(tmp_path / "src", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    with pytest.raises(FileExistsError, match="not an export"):
        export_hf_model(str(src), src)  # the source itself: no marker
    export_hf_model(str(src), tmp_path / "exp")
    with pytest.raises(FileExistsError, match="not an export"):
        export_hf_model(str(src), tmp_path / "exp", dtype=torch.bfloat16)
