"""benchmarks/accuracy/error_split.py: the switchable linears reproduce the 16-bit model with
both quantizers off, and the script writes every row.

transformers (which imports triton) is imported inside the tests, not at collection: the
kernel tests' conftest must set TRITON_INTERPRET before triton is first imported."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import torch

from duquant_serve.core.config import DuQuantConfig
from duquant_serve.testing.tiny import make_tiny_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "error_split.py"


def test_both_quantizers_off_is_the_16bit_model(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from offline_quant.pipeline import PipelineOptions

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import error_split

    src = make_tiny_model(tmp_path / "m", "llama", hidden=128, heads=2, kv_heads=1, intermediate=192)
    model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    ref_model = copy.deepcopy(model)
    calib = torch.randint(0, model.config.vocab_size, (4, 32))
    ids = torch.randint(0, model.config.vocab_size, (1, 48))
    linears = error_split.quantize_keeping_float_weights(
        model, calib, DuQuantConfig(), PipelineOptions(method="duquant", progress=False))
    switches = error_split.install_switches(model, linears)
    assert {sw.kind for sw in switches} == {"qkv", "o", "gate_up", "down"}
    with torch.no_grad():
        ref = ref_model(ids).logits
        quant = model(ids).logits
        for sw in switches:
            sw.quantize_acts = sw.quantize_weights = False
        off = model(ids).logits
    # Smoothing folds and orthogonal transforms are exact: only the quantizers change outputs.
    assert (off - ref).abs().max() < 1e-3 * ref.abs().max()
    assert (quant - ref).abs().max() > 10 * (off - ref).abs().max()


def test_script_writes_every_row(tmp_path):
    src = make_tiny_model(tmp_path / "m", "llama")
    out = tmp_path / "split.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", str(src), "--method", "duquant",
                        "--limit", "1", "--seqlen", "64", "--nsamples", "2",
                        "--calib-seqlen", "32", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    kinds = ("down", "gate_up", "o", "qkv")
    assert set(res["rows"]) == {"w4a4", "w4a16", "w16a4", *(f"a16_{k}" for k in kinds),
                                *(f"w16_{k}" for k in kinds)}
    assert res["fp16"] > 1 and all(row["ppl"] > 1 for row in res["rows"].values())
    assert res["rows"]["w4a16"]["ppl"] != res["rows"]["w4a4"]["ppl"]
