"""Layer-by-layer DuQuant quantization (and the baselines `duquant eval` compares with).

For each decoder layer, in order:
  1. one 16-bit pass over the calibration inputs collects, per activation site, the per-channel
     |max|, the mean input over samples ([T, C], the reference's rotation calibration input) and
     a token sample (for LWC and the outlier report);
  2. smoothing factors are computed from the unmodified weights and folded (RMSNorm, v/up rows)
     or kept for online division (o_proj under GQA);
  3. each site gets its transform (R1 → zigzag → R2 for DuQuant) and every linear of the site
     is quantized in the transformed basis and replaced by a fake-quant module;
  4. the quantized layer produces the next layer's inputs (errors propagate as in the paper).

`PipelineOptions.device` runs all of that on another device (a GPU) one layer at a time: the
model stays where it was loaded, each decoder layer visits the device while it is calibrated,
quantized and run, and the calibration activations stay on the device. With `offload` the
layer and its quantized linears then go back (what `duquant quantize` needs to write a model
larger than the GPU); without it they stay (what `duquant eval` needs to run the model there).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import torch
from tqdm import tqdm

from duquant_serve.core.config import DuQuantConfig
from duquant_serve.core.quant import fake_quantize_per_token
from duquant_serve.core.reference import QuantizedLinear, QuantLinearModule, quantize_linear
from duquant_serve.core.transform import (
    InputTransform,
    build_input_transform,
    choose_block_size,
    hadamard_transform,
    identity_transform,
    smoothing_factors,
)

from .lwc import learn_clip_factors
from .models import check_supported, layer_sites

log = logging.getLogger(__name__)

# Quantized methods `duquant eval` can compare in one run (fp16 is the unquantized model).
METHODS = ("rtn", "smoothquant", "hadamard", "duquant", "duquant-lwc")
SMOOTHQUANT_ALPHA = 0.5


@dataclass
class PipelineOptions:
    method: str = "duquant"
    lwc_epochs: int = 20
    lwc_lr: float = 1e-2
    lwc_tokens: int = 512  # token sample per site: LWC training set and outlier report
    lwc_batch: int = 64  # tokens per LWC step
    batch_size: int = 4
    progress: bool = True
    device: str | None = None  # resolve_device's spec; None: where the model is
    offload: bool = True  # with `device`: return each finished layer to the model's device


@dataclass
class QuantizeResult:
    model: torch.nn.Module
    linears: dict[str, QuantizedLinear]
    config: DuQuantConfig
    report: dict = field(default_factory=dict)


class DeviceError(ValueError):
    """--device names no usable device."""


def resolve_device(spec: str) -> torch.device:
    """'auto' (the first CUDA GPU if one is visible, else the CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: no CUDA GPU is visible to torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA "
                              "device(s) are visible")
    return dev


def describe_device(dev: torch.device) -> str:
    """'cpu', or 'cuda:0 (NVIDIA H100 80GB HBM3)': for logs and reports."""
    if dev.type != "cuda":
        return str(dev)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


class _StopForward(Exception):
    pass


def _capture_layer0_inputs(model, ids: torch.Tensor, batch: int):
    """Run the embedding stage only → (hidden [n, T, C], layer kwargs)."""
    layers = model.model.layers
    inps: list[torch.Tensor] = []
    kwargs_box: dict = {}

    def hook(_mod, args, kwargs):
        inps.append((args[0] if args else kwargs["hidden_states"]).detach())
        kwargs_box.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    h = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, ids.shape[0], batch):
            try:
                model(input_ids=ids[i : i + batch], use_cache=False)
            except _StopForward:
                pass
    finally:
        h.remove()
    kwargs_box["use_cache"] = False
    kwargs_box.pop("past_key_values", None)
    kwargs_box.pop("past_key_value", None)
    return torch.cat(inps), kwargs_box


def _to_device(obj, device: torch.device):
    """Tensors in (nested tuples/lists/dicts of) layer kwargs → device."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _run_layer(layer, inps: torch.Tensor, kwargs: dict, batch: int) -> torch.Tensor:
    outs = []
    for i in range(0, inps.shape[0], batch):
        o = layer(inps[i : i + batch], **kwargs)
        outs.append(o[0] if isinstance(o, tuple) else o)
    return torch.cat(outs)


class _SiteStats:
    """Running statistics of one site's input."""

    def __init__(self, max_tokens: int, stride: int = 1) -> None:
        self.stride = stride
        self.absmax: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.count = 0
        self.sample: list[torch.Tensor] = []
        self.sample_tokens = 0
        self.max_tokens = max_tokens

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()  # [B, T, C]
        am = x.abs().amax(dim=(0, 1))
        self.absmax = am if self.absmax is None else torch.maximum(self.absmax, am)
        s = x.sum(dim=0)
        self.sum = s if self.sum is None else self.sum + s
        self.count += x.shape[0]
        if self.sample_tokens < self.max_tokens:
            # Every stride-th token, so the sample spans all calibration sequences rather than
            # the first one only.
            flat = x.reshape(-1, x.shape[-1])[:: self.stride]
            take = flat[: self.max_tokens - self.sample_tokens]
            self.sample.append(take.clone())
            self.sample_tokens += take.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count

    @property
    def tokens(self) -> torch.Tensor:
        return torch.cat(self.sample)


def _collect_stats(layer, sites, inps, kwargs, batch, max_tokens) -> dict[str, _SiteStats]:
    """Statistics of every site's input while `layer` runs on `inps`."""
    stride = max(1, inps.shape[0] * inps.shape[1] // max_tokens)
    stats = {s.name: _SiteStats(max_tokens, stride) for s in sites}
    hooks = []
    for s in sites:
        mod = layer.get_submodule(s.stats_from)
        hooks.append(mod.register_forward_pre_hook(
            lambda _m, args, st=stats[s.name]: st.update(args[0])))
    try:
        _run_layer(layer, inps, kwargs, batch)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _outlier_stats(x: torch.Tensor) -> dict[str, float]:
    """x [S, C] → numbers that show how hard per-token 4-bit quantization of x is."""
    cmax = x.abs().amax(dim=0)
    return {
        "max_abs": float(cmax.max()),
        "channel_max_over_median": float(cmax.max() / cmax.median().clamp(min=1e-12)),
        "token_range_mean": float((x.amax(dim=1) - x.amin(dim=1)).mean()),
        "a4_rel_mse": float((fake_quantize_per_token(x, 4, 0.9) - x).pow(2).mean()
                             / x.pow(2).mean().clamp(min=1e-30)),
    }


def _method_settings(method: str, cfg: DuQuantConfig) -> tuple[float | None, str, bool]:
    """→ (smoothing alpha or None, transform kind, lwc)."""
    if method == "rtn":
        return None, "identity", False
    if method == "smoothquant":
        return SMOOTHQUANT_ALPHA, "identity", False
    if method == "hadamard":
        return None, "hadamard", False
    if method == "duquant":
        return cfg.smooth_alpha, "duquant", cfg.lwc
    if method == "duquant-lwc":
        # Same smoothing as `duquant` so the eval rows differ only by LWC. (The paper uses
        # α = 0.5 with LWC on LLaMA; on SmolLM2 that alone cost more than LWC gained.)
        return cfg.smooth_alpha, "duquant", True
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def quantize_model(
    model: torch.nn.Module,
    calib_ids: torch.Tensor,
    cfg: DuQuantConfig,
    opts: PipelineOptions | None = None,
) -> QuantizeResult:
    """Quantize `model` in place (its linears become fake-quant modules) → result."""
    opts = opts or PipelineOptions()
    check_supported(model.config)
    alpha, kind, lwc = _method_settings(opts.method, cfg)
    if opts.method == "duquant-lwc":
        cfg = replace(cfg, lwc=True)
    gen = torch.Generator().manual_seed(cfg.seed)  # CPU: the same draws on any device
    home = next(model.parameters()).device
    dev = resolve_device(opts.device) if opts.device is not None else home
    sites = layer_sites(model.config)
    timings = {"calibration_forward": 0.0, "smoothing": 0.0, "rotation_permutation": 0.0,
               "weight_quantization": 0.0, "lwc": 0.0}
    layer_reports = []
    linears: dict[str, QuantizedLinear] = {}

    t0 = time.perf_counter()
    with torch.no_grad():
        inps, kwargs = _capture_layer0_inputs(model, calib_ids.to(home), opts.batch_size)
        inps, kwargs = inps.to(dev), _to_device(kwargs, dev)
    timings["calibration_forward"] += time.perf_counter() - t0

    layers = model.model.layers
    bar = tqdm(range(len(layers)), desc=f"{opts.method} layers", disable=not opts.progress)
    for li in bar:
        layer = layers[li].to(dev)
        t = time.perf_counter()
        with torch.no_grad():
            stats = _collect_stats(layer, sites, inps, kwargs, opts.batch_size, opts.lwc_tokens)
        timings["calibration_forward"] += time.perf_counter() - t

        # Smoothing: all factors from the unmodified weights, then all folds (reference order).
        t = time.perf_counter()
        smooth: dict[str, torch.Tensor | None] = {}
        with torch.no_grad():
            for s in sites:
                if alpha is None:
                    smooth[s.name] = None
                    continue
                w = layer.get_submodule(s.stats_from).weight
                smooth[s.name] = smoothing_factors(stats[s.name].absmax, w.abs().amax(dim=0), alpha)
            for s in sites:
                sv = smooth[s.name]
                if sv is None:
                    continue
                online = s.norm is None and s.fold_rows_of is None
                if not online:
                    for name in s.linears:
                        lin = layer.get_submodule(name)
                        lin.weight.mul_(sv.to(lin.weight).unsqueeze(0))
                if s.norm is not None:
                    norm = layer.get_submodule(s.norm)
                    norm.weight.div_(sv.to(norm.weight))
                elif s.fold_rows_of is not None:
                    prev = layer.get_submodule(s.fold_rows_of)
                    prev.weight.div_(sv.to(prev.weight).unsqueeze(1))
                    if prev.bias is not None:
                        prev.bias.div_(sv.to(prev.bias))
        timings["smoothing"] += time.perf_counter() - t

        site_reports = {}
        for s in sites:
            st = stats[s.name]
            sv = smooth[s.name]
            online = sv is not None and s.norm is None and s.fold_rows_of is None
            width = st.absmax.numel()
            shards = cfg.tp_shards if s.row_parallel else 1
            block = choose_block_size(width, cfg.block_size, shards)
            arriving = st.tokens if (sv is None or online) else st.tokens / sv
            t = time.perf_counter()
            if kind == "duquant":
                mean = st.mean if sv is None else st.mean / sv
                tr = build_input_transform(
                    mean, block, cfg.rotation_steps, gen, cfg.permutation, shards,
                    cfg.channel_select, smooth=sv if online else None)
            elif kind == "hadamard":
                tr = hadamard_transform(width, block).to(dev)
            else:
                tr = identity_transform(width, block).to(dev)
                if online:
                    tr = InputTransform(tr.r1, tr.perm, tr.r2, sv, is_identity=True)
            timings["rotation_permutation"] += time.perf_counter() - t
            with torch.no_grad():
                site_reports[s.name] = {
                    "block_size": block,
                    "smoothing": None if sv is None else ("online" if online else "folded"),
                    "before": _outlier_stats(st.tokens),
                    "after": _outlier_stats(tr.apply(arriving)),
                }
            for name in s.linears:
                full = f"model.layers.{li}.{name}"
                lin = layer.get_submodule(name)
                lo_f = hi_f = None
                with torch.no_grad():
                    w_t = tr.apply_to_weight(lin.weight.float())
                if lwc:
                    t = time.perf_counter()
                    with torch.no_grad():
                        x_t = tr.apply(arriving)
                        x_q = fake_quantize_per_token(x_t, cfg.a_bits, cfg.act_clip_ratio, shards)
                        # The 16-bit linear on the quantized model's inputs. (Targets from the
                        # 16-bit model's own activations, OmniQuant-style, measured worse here:
                        # benchmarks/accuracy/README.md.)
                        target = arriving @ lin.weight.float().t()
                    with torch.enable_grad():
                        lo_f, hi_f = learn_clip_factors(
                            w_t, x_q, target, cfg.w_bits, cfg.weight_clip_ratio,
                            opts.lwc_epochs, opts.lwc_lr, opts.lwc_batch)
                    timings["lwc"] += time.perf_counter() - t
                t = time.perf_counter()
                q = quantize_linear(
                    w_t, tr, lin.bias, cfg.w_bits, cfg.a_bits, cfg.weight_clip_ratio,
                    cfg.act_clip_ratio, lo_factor=lo_f, hi_factor=hi_f, act_groups=shards)
                linears[full] = q
                parent_name, _, child = name.rpartition(".")
                setattr(layer.get_submodule(parent_name), child, QuantLinearModule(q, "fake"))
                timings["weight_quantization"] += time.perf_counter() - t
        layer_reports.append({"layer": li, "sites": site_reports})

        t = time.perf_counter()
        with torch.no_grad():
            inps = _run_layer(layer, inps, kwargs, opts.batch_size)
        timings["calibration_forward"] += time.perf_counter() - t
        if not torch.isfinite(inps).all():
            raise FloatingPointError(f"layer {li} produced non-finite activations after quantization")
        if opts.offload and dev != home:
            for name in (n for s in sites for n in s.linears):
                full = f"model.layers.{li}.{name}"
                linears[full] = linears[full].to(home)
                parent_name, _, child = name.rpartition(".")
                setattr(layer.get_submodule(parent_name), child,
                        QuantLinearModule(linears[full], "fake"))
            layer.to(home)

    report = {
        "method": opts.method,
        "seconds_per_stage": {k: round(v, 3) for k, v in timings.items()},
        "layers": layer_reports,
    }
    return QuantizeResult(model=model, linears=linears, config=cfg, report=report)
