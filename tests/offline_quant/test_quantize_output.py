"""What `duquant quantize` writes besides the quantized linears: the unquantized tensors' dtype
and the size report."""

import json

import pytest
import torch
from safetensors import safe_open

from duquant_serve.cli import main
from duquant_serve.testing.tiny import QUICK_QUANT_ARGS, make_tiny_model

QUICK = [*QUICK_QUANT_ARGS, "--method", "duquant"]


def _unquantized_dtypes(ckpt) -> set[str]:
    dtypes = set()
    for f in ckpt.glob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            for name in sf.keys():
                if name.endswith(("embed_tokens.weight", "norm.weight", "lm_head.weight")):
                    dtypes.add(str(sf.get_slice(name).get_dtype()))
    return dtypes


@pytest.mark.parametrize("source_dtype, flag, expect", [
    (torch.float32, [], "bfloat16"),  # a float32 source is stored as bfloat16, not float32
    (torch.float16, [], "float16"),  # a 16-bit source keeps its own dtype
    (torch.float32, ["--dtype", "float32"], "float32"),
])
def test_unquantized_tensors_default_to_16_bit(tmp_path, source_dtype, flag, expect):
    src = make_tiny_model(tmp_path / "src", "llama", dtype=source_dtype)
    out = tmp_path / "dq"
    assert main(["-q", "quantize", str(src), "--out", str(out), *QUICK, *flag]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == expect
    short = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[expect]
    assert _unquantized_dtypes(out) == {short}
    report = json.loads((out / "duquant_report.json").read_text())["size"]
    files = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert report["checkpoint_bytes"] == files
    assert report["unquantized_dtype"] == expect
    assert report["ratio_to_16bit"] == pytest.approx(files / report["bytes_16bit"], abs=1e-4)


def test_size_report_counts_the_16_bit_model(tmp_path, capsys):
    src = make_tiny_model(tmp_path / "src", "llama")
    from transformers import AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(src).parameters())
    out = tmp_path / "dq"
    assert main(["quantize", str(src), "--out", str(out), *QUICK]) == 0
    report = json.loads((out / "duquant_report.json").read_text())["size"]
    assert report["bytes_16bit"] == 2 * n
    printed = capsys.readouterr().out
    assert f"{report['ratio_to_16bit']:.2f}x the 16-bit model" in printed


def test_tp_shards_auto_is_the_largest_free_sharding():
    from types import SimpleNamespace

    from offline_quant.models import auto_tp_shards

    def cfg(hidden, heads, inter):
        return SimpleNamespace(hidden_size=hidden, num_attention_heads=heads, head_dim=None,
                               intermediate_size=inter)

    assert auto_tp_shards(cfg(8192, 64, 28672), 128) == 8  # LLaMA-2/3-70B: every TP size
    # LLaMA-2-7B: 11008 / 4 = 2752 would drop down_proj's block from 128 to 64
    assert auto_tp_shards(cfg(4096, 32, 11008), 128) == 2
    assert auto_tp_shards(cfg(576, 9, 1536), 128) == 1  # SmolLM2: 9 heads split no way
    assert auto_tp_shards(cfg(256, 4, 384), 128) == 1  # the tiny test model
    assert auto_tp_shards(cfg(256, 4, 384), 64) == 2


def test_tp_shards_option(tmp_path, capsys):
    src = make_tiny_model(tmp_path / "src", "llama")
    out = tmp_path / "dq"
    assert main(["-q", "quantize", str(src), "--out", str(out), *QUICK, "--block-size", "64"]) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["tp_shards"] == 2  # auto, resolved from the model
    with pytest.raises(SystemExit):
        main(["quantize", str(src), "--out", str(tmp_path / "x"), "--tp-shards", "many"])
    assert "must be an integer or 'auto'" in capsys.readouterr().err
