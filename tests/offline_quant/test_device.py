"""`--device`: where calibration and quantization run, one decoder layer at a time.

The CPU machine has no second device, so the cross-device moves themselves are checked on a
GPU (benchmarks/quantize/bench_quantize.py --compare). Here: the device spec's errors, that they
come before the model loads, and the offload bookkeeping, which a 'cpu:0' target runs (a
device that compares unequal to the model's 'cpu' while the tensors stay put)."""

from __future__ import annotations

import pytest
import torch

from duquant_serve.cli import main
from duquant_serve.core.config import DuQuantConfig
from duquant_serve.core.reference import QuantizedLinear
from duquant_serve.testing.tiny import make_tiny_model
from offline_quant.models import load_model
from offline_quant.pipeline import DeviceError, PipelineOptions, quantize_model, resolve_device

NO_CUDA = not torch.cuda.is_available()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu", "", "cuda:x"):
        with pytest.raises(DeviceError, match="use auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


@pytest.mark.skipif(not NO_CUDA, reason="checks the error a machine without CUDA gives")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_gpu_is_a_clear_error(spec):
    with pytest.raises(DeviceError, match="no CUDA GPU is visible"):
        resolve_device(spec)


@pytest.mark.parametrize("cmd", ["quantize", "eval"])
def test_bad_device_fails_before_the_model_loads(tmp_path, capsys, cmd):
    # The model path does not exist: reaching the loader would give a different error.
    missing = str(tmp_path / "no-such-model")
    args = (["quantize", missing, "--out", str(tmp_path / "out")] if cmd == "quantize" else
            ["eval", missing, "--dataset", str(tmp_path / "none.txt")])
    assert main(["-q", *args, "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "--device 'tpu'" in err and "no-such-model" not in err
    assert not (tmp_path / "out").exists()


def _quantize(src, device):
    model, _ = load_model(str(src))
    ids = torch.randint(3, 259, (4, 48), generator=torch.Generator().manual_seed(0))
    cfg = DuQuantConfig(block_size=32, rotation_steps=8)
    return quantize_model(model, ids, cfg, PipelineOptions(progress=False, device=device))


def test_offload_bookkeeping_keeps_every_result(tmp_path, monkeypatch):
    src = make_tiny_model(tmp_path / "m", "llama", hidden=128, heads=2, kv_heads=1,
                          intermediate=192)
    here = _quantize(src, None)
    rehomed = []
    to = QuantizedLinear.to
    monkeypatch.setattr(QuantizedLinear, "to", lambda self, d: rehomed.append(d) or to(self, d))
    moved = _quantize(src, "cpu:0")  # runs the offload branch: linears re-homed, modules rebuilt
    assert len(rehomed) == len(moved.linears) == 2 * 7  # every linear of both layers, once
    assert here.linears.keys() == moved.linears.keys()
    for name, a in here.linears.items():
        b = moved.linears[name]
        assert torch.equal(a.qweight, b.qweight), name
        assert torch.equal(a.weight_scale, b.weight_scale), name
        assert a.transform.first_difference(b.transform) is None, name
        # The layer's module runs the re-homed linear, not the one made on the device.
        module = moved.model.get_submodule(name)
        assert module.layer is b, name
    ids = torch.randint(3, 259, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(here.model(input_ids=ids).logits, moved.model(input_ids=ids).logits)


def test_checkpoint_eval_through_the_serving_kernels(tiny_checkpoint, wikitext_valid, tmp_path):
    # The same checkpoint through the integer reference and through the kernel choose_kernel
    # picks here (cpu_int8, or cpu_fp32_gemm with the same integers): the same model up to the
    # epilogue's fp32 rounding, which moves the next layer's inputs across a few 4-bit
    # rounding boundaries. On these 192 tokens that has measured below 0.2% and 0.26% (two
    # draws of the tiny checkpoint).
    import json

    from offline_quant.evaluate import EvalError, evaluate

    _, out = tiny_checkpoint
    kw = dict(dataset=wikitext_valid, seqlen=64, limit=3, progress=False)
    ref = evaluate(str(out), methods=[], **kw)["results"][0]
    assert main(["-q", "eval", str(out), "--dataset", wikitext_valid, "--seqlen", "64",
                 "--limit", "3", "--kernels", "--json", str(tmp_path / "k.json")]) == 0
    fast = json.loads((tmp_path / "k.json").read_text())["results"][0]
    from duquant_serve.kernels.base import LayerSpec
    from duquant_serve.kernels.select import choose_kernel

    cpu_kernel = choose_kernel(LayerSpec(64, 64, 64, act_dtype=torch.float32,
                                         device_type="cpu")).name
    assert set(fast["linears"]) == {cpu_kernel} and set(ref["linears"]) == {"reference"}
    assert sum(fast["linears"].values()) == ref["linears"]["reference"] > 0
    assert abs(fast["ppl"] - ref["ppl"]) / ref["ppl"] < 5e-3
    src, _ = tiny_checkpoint
    with pytest.raises(EvalError, match="--kernels evaluates a DuQuant checkpoint"):
        from duquant_serve.kernels.module import KernelLinear

        evaluate(str(src), methods=["fp16"], linear=KernelLinear, **kw)
