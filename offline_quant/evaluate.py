"""`duquant eval`: WikiText-2 perplexity with the paper's protocol, for several methods in one run.

Protocol (GPTQ/OmniQuant/DuQuant): the text file is tokenized once as a whole, cut into
non-overlapping `seqlen` windows (remainder dropped), loss = mean token cross-entropy per
window, ppl = exp(mean over windows).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from duquant_serve.checkpoint import load_checkpoint
from duquant_serve.core.config import QUANT_METHOD, DuQuantConfig
from duquant_serve.core.reference import QuantizedLinear, QuantLinearModule

from .attention import enable_attention_fake_quant
from .calibration import calibration_windows, eval_text_path, read_text, tokenize_text
from .models import load_model
from .pipeline import METHODS, PipelineOptions, describe_device, quantize_model, resolve_device

FP_METHODS = ("fp16", "fp32", "bf16", "native")
ALL_METHODS = FP_METHODS + METHODS


class EvalError(ValueError):
    pass


def eval_windows(tokenizer, dataset: str | Path, seqlen: int, limit: int | None) -> torch.Tensor:
    ids = tokenize_text(tokenizer, read_text(eval_text_path(dataset)))
    n = ids.numel() // seqlen
    if n == 0:
        raise EvalError(f"dataset has {ids.numel()} tokens, fewer than one window of {seqlen}")
    if limit is not None:
        n = min(n, limit)
    return ids[: n * seqlen].view(n, seqlen)


@torch.no_grad()
def window_nlls(model, windows: torch.Tensor, progress: bool = False, desc: str = "ppl") -> list[float]:
    """Mean NLL of tokens 1.. of each window given its prefix (the paper's protocol)."""
    nlls = []
    dev = next(model.parameters()).device
    for w in tqdm(windows, desc=desc, disable=not progress):
        w = w.to(dev)
        logits = model(input_ids=w.unsqueeze(0), use_cache=False).logits[0, :-1].float()
        nlls.append(torch.nn.functional.cross_entropy(logits, w[1:]).double().item())
    return nlls


def perplexity(model, windows: torch.Tensor, progress: bool = True, desc: str = "ppl") -> float:
    """exp of the mean window NLL."""
    nlls = window_nlls(model, windows, progress, desc)
    return math.exp(sum(nlls) / len(nlls))


def is_duquant_checkpoint(target: str | Path) -> bool:
    """A directory whose config.json declares quant_method "duquant" (validity is checked on load)."""
    cfg = Path(target) / "config.json"
    if not cfg.is_file():
        return False
    try:
        qc = json.loads(cfg.read_text()).get("quantization_config") or {}
    except json.JSONDecodeError:
        return False
    return isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD


# (checkpoint linear, device, module name) → the torch module that computes it.
LinearFactory = Callable[[QuantizedLinear, torch.device, str], torch.nn.Module]


def reference_linear(q: QuantizedLinear, device: torch.device, name: str) -> torch.nn.Module:
    """The integer reference W4A4 linear (`w4a4_linear_ref`, unpacking the codes)."""
    return QuantLinearModule(q, "int")


def use_reference_mode(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Set every QuantLinearModule of `model` to compute the same codes in `mode` ("int",
    "exact" or "fake"; core.reference.QuantLinearModule), in place: the other computations of
    a checkpoint, for telling path numerics from quantization differences."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantLinearModule) and child.mode != mode:
                setattr(parent, name, QuantLinearModule(child.layer, mode))
    return model


def use_fake_quant(model: torch.nn.Module) -> torch.nn.Module:
    """fp32 fake quantization of the same codes (dequantize, float32 matmul), in place."""
    return use_reference_mode(model, "fake")


def load_checkpoint_model(path: str | Path, device: str | torch.device = "cpu",
                          linear: LinearFactory = reference_linear):
    """Checkpoint → transformers model on `device` whose linears run the stored integer codes,
    plus its tokenizer. Computes in float32. `linear` builds each linear's module: the integer
    reference by default; `duquant eval --kernels` passes the serving kernels'
    (duquant_serve.kernels.module.KernelLinear: this layer does not import the kernels)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    ck = load_checkpoint(path)
    cfg_dict = {k: v for k, v in ck.model_config.items() if k != "quantization_config"}
    cfg = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(
        {k: v.float() for k, v in ck.tensors.items()}, strict=False)
    device = torch.device(device)
    model.to(device)  # before the swap: the linear modules hold no registered tensors
    for name, q in ck.linears.items():
        parent, _, child = name.rpartition(".")
        q = q.to(device)
        setattr(model.get_submodule(parent), child, linear(q, device, name))
    model.tie_weights()
    model.eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok, ck


def evaluate(
    target: str,
    dataset: str,
    seqlen: int,
    methods: list[str],
    limit: int | None = None,
    qcfg: DuQuantConfig | Callable[[str], DuQuantConfig] | None = None,
    calib_source: str = "wikitext2",
    calib_nsamples: int = 16,
    calib_seqlen: int = 512,
    fake_quant_attention: bool = False,
    progress: bool = True,
    on_result=None,
    device: str = "cpu",
    linear: LinearFactory | None = None,
) -> dict:
    """→ {"target", "dataset", "seqlen", "windows", "tokens", "results": [{method, ppl, seconds}]}.

    `on_result(partial_summary)` is called after each method, so long runs can persist rows.
    `device` (resolve_device's spec) runs quantization and perplexity there; the loaded 16-bit
    model stays on the CPU and each method works on a copy. `linear`: how a checkpoint's linears
    are computed (load_checkpoint_model; None: the integer reference). A checkpoint's result
    counts its "linears" by kernel name ("reference" for the integer reference); a quantized
    method's row computes them "exact" (core.reference.exact_quant_linear). `qcfg`: one config for
    every method, or a function method → config (`duquant eval`: each method's default
    activation groups); a quantized method's row records its act_group_size."""
    dev = resolve_device(device)
    results: list[dict] = []
    windows = None

    def summary() -> dict:
        return {
            "target": str(target),
            "dataset": str(dataset),
            "seqlen": seqlen,
            "windows": 0 if windows is None else int(windows.shape[0]),
            "tokens": 0 if windows is None else int(windows.numel()),
            "fake_quant_attention": fake_quant_attention,
            "device": describe_device(dev),
            "results": list(results),
        }

    if is_duquant_checkpoint(target):
        t = time.perf_counter()
        model, tok, ck = load_checkpoint_model(target, dev, linear or reference_linear)
        windows = eval_windows(tok, dataset, seqlen, limit)
        if fake_quant_attention:
            enable_attention_fake_quant(model)
        ppl = perplexity(model, windows, progress, "checkpoint")
        names = dict(model.named_modules())
        used = Counter(getattr(names[n], "kernel", None) and names[n].kernel.name or "reference"
                       for n in ck.linears)
        results.append({"method": "checkpoint", "ppl": ppl, "linears": dict(used),
                        "seconds": round(time.perf_counter() - t, 2)})
        if on_result is not None:
            on_result(summary())
    else:
        if linear is not None:
            raise EvalError("--kernels evaluates a DuQuant checkpoint; the target is a 16-bit model")
        bad = [m for m in methods if m not in ALL_METHODS]
        if bad:
            raise EvalError(f"unknown method(s) {bad}; choose from {list(ALL_METHODS)}")
        fixed = qcfg or DuQuantConfig()
        config_for = qcfg if callable(qcfg) else (lambda method: fixed)
        base, tok = load_model(target)
        windows = eval_windows(tok, dataset, seqlen, limit)
        calib = None
        for method in methods:
            t = time.perf_counter()
            model = copy.deepcopy(base)
            if method not in FP_METHODS:
                if calib is None:
                    calib = calibration_windows(tok, calib_source, calib_nsamples, calib_seqlen,
                                                vocab_size=base.config.vocab_size)
                # Layers stay on the device (no offload): the whole model runs there next.
                cfg = config_for(method)
                quantize_model(model, calib, cfg, PipelineOptions(
                    method=method, progress=progress, device=str(dev), offload=False))
                # The row is the exact value of the quantized model (float64 dequantization,
                # rounded once): the integer reference's number up to rare near-tie roundings,
                # so its checkpoint reproduces it. fp32 fake quant, used while calibrating,
                # rounds every partial sum, which a W4A4 model amplifies to ~1% of 8-window
                # perplexity.
                use_reference_mode(model, "exact")
                if fake_quant_attention:
                    enable_attention_fake_quant(model)
            model.to(dev)  # the rest: embeddings, final norm, lm_head (and fp methods' layers)
            ppl = perplexity(model, windows, progress, method)
            results.append({"method": method, "ppl": ppl,
                            "seconds": round(time.perf_counter() - t, 2),
                            **({} if method in FP_METHODS
                               else {"act_group_size": cfg.act_group_size,
                                     "act_clip_ratio": cfg.act_clip_ratio,
                                     "linears": "exact"})})
            del model
            if on_result is not None:
                on_result(summary())
    return summary()
