"""Layer-by-layer quantization: DuQuant, its optimized variant, and the baselines of `duquant eval`.

For each decoder layer, in order:
  1. one 16-bit pass over the calibration inputs collects, per activation site, the per-channel
     |max|, the mean input over samples ([T, C], the reference's rotation calibration input), a
     token sample and, for GPTQ, XᵀX over every calibration token (`collect_site_stats`);
  2. smoothing factors are computed from the unmodified weights and folded (RMSNorm, v/up rows)
     or kept for online division (o_proj under GQA) (`smooth_layer`);
  3. each site gets its transform (R1 → zigzag → R2 for DuQuant) (`site_transform`); the
     optimized method instead learns smoothing and R1/R2 per site, starting from steps 2-3
     (`learn_layer_transforms`, learned_transforms.py);
  4. every linear of the site is quantized in the transformed basis (round-to-nearest with a
     fixed clip, LWC, or a per-row clip search + GPTQ, gptq.py) and replaced by a fake-quant
     module (`quantize_site`);
  5. the quantized layer produces the next layer's inputs (errors propagate as in the paper).

A method (`METHOD_TABLE`) is one row of choices for steps 2-4; `quantize_model` runs them.

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
from duquant_serve.core.pack import pack_weight_codes
from duquant_serve.core.quant import fake_quantize_per_token
from duquant_serve.core.reference import QuantizedLinear, QuantLinearModule, quantize_linear
from duquant_serve.core.topology import Site
from duquant_serve.core.transform import (
    InputTransform,
    build_input_transform,
    hadamard_transform,
    identity_transform,
    input_layout,
    smoothing_factors,
)

from .gptq import gptq_quantize, search_clip
from .learned_transforms import DEFAULT_LR, refine_smoothing_and_rotations
from .lwc import learn_clip_factors
from .models import check_supported, layer_sites

log = logging.getLogger(__name__)

SMOOTHQUANT_ALPHA = 0.5


@dataclass(frozen=True)
class Method:
    """One quantization method: what each pipeline step does.

    smoothing: "none", "config" (the checkpoint's smooth_alpha) or "smoothquant" (α 0.5);
    transform: "identity", "hadamard" (block Hadamard, QuaRot-RTN style) or "duquant";
    weights: "rtn" (fixed clip ratio), "lwc" (learned per-row clip) or "gptq" (per-row clip
    search, then GPTQ on the transformed weights); learned: smoothing and R1/R2 refined
    together on each site's W4A4 output error, starting from α-smoothing and the greedy
    rotations (learned_transforms.py)."""

    name: str
    smoothing: str
    transform: str
    weights: str
    learned: bool = False


# Quantized methods `duquant eval` can compare in one run (fp16 is the unquantized model).
METHOD_TABLE = {m.name: m for m in (
    Method("rtn", "none", "identity", "rtn"),
    Method("smoothquant", "smoothquant", "identity", "rtn"),
    Method("hadamard", "none", "hadamard", "rtn"),
    Method("hadamard-gptq", "none", "hadamard", "gptq"),
    Method("duquant", "config", "duquant", "rtn"),
    Method("duquant-lwc", "config", "duquant", "lwc"),
    Method("duquant-gptq", "config", "duquant", "gptq"),
    Method("duquant-opt", "config", "duquant", "gptq", learned=True),
)}
METHODS = tuple(METHOD_TABLE)  # == core.config.METHODS (a test keeps them equal)

# Activation groups of the DuQuant methods when none are asked for: at 4-bit activations a
# per-token range per 128 channels (SmolLM2: one per 64-channel rotation block) closed 85.7% of
# the gap against 82.8% without (3 seeds), at no quantization cost; served by one block-scaled
# GEMM per linear (kernels: cpu_int8, triton_groups). At 6 and 8 bits they cost instead
# (duquant-opt, SmolLM2, one machine: W4A8 21.57 with, 21.29 without; W6A6 19.73 against
# 19.50; benchmarks/results/accuracy/README.md), so wider activations get one range per input. The
# baselines keep the published per-token ranges, so the gap they define is the papers' one.
DEFAULT_ACT_GROUP_SIZE = 128
GROUPED_MAX_A_BITS = 4


def default_act_group_size(method: str, a_bits: int = 4) -> int:
    """`DuQuantConfig.act_group_size` for `method` at `a_bits`-bit activations when the user
    gives none."""
    if method not in METHOD_TABLE:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    grouped = METHOD_TABLE[method].transform == "duquant" and a_bits <= GROUPED_MAX_A_BITS
    return DEFAULT_ACT_GROUP_SIZE if grouped else 0


# The per-token activation range's multiplier when none is asked for. With one range per input
# (hundreds of channels) the extremes are rare and clipping 10% pays (the paper's 0.9); over a
# 64/128-channel group the maximum sits nearer the bulk, so clipping costs more than it saves
# (Gaussian toy: 4-bit error least near 0.95–1.0 for 64 values, 0.8–0.85 for 576). SmolLM2
# duquant-opt with groups, 1.0 against 0.9, three seeds: validation −0.003 nats per window,
# test 23.74 against 23.90 on average (benchmarks/results/accuracy/README.md).
DEFAULT_ACT_CLIP = 0.9
GROUPED_ACT_CLIP = 1.0


def default_act_clip_ratio(act_group_size: int) -> float:
    """`DuQuantConfig.act_clip_ratio` for activations grouped by `act_group_size` (0: one range
    per input) when the user gives none."""
    return GROUPED_ACT_CLIP if act_group_size else DEFAULT_ACT_CLIP


def activation_quant_fields(method: str, a_bits: int = 4, act_group_size: int | None = None,
                            act_clip_ratio: float | None = None) -> dict[str, int | float]:
    """The `DuQuantConfig` activation fields of `method` at `a_bits`: each one given wins, each
    None takes its default (the clip's follows the resolved groups). The one place the CLI and
    the accuracy scripts resolve them."""
    groups = default_act_group_size(method, a_bits) if act_group_size is None else act_group_size
    clip = default_act_clip_ratio(groups) if act_clip_ratio is None else act_clip_ratio
    return {"act_group_size": groups, "act_clip_ratio": clip}


@dataclass
class PipelineOptions:
    method: str = "duquant"
    lwc_epochs: int = 20
    lwc_lr: float = 1e-2
    lwc_tokens: int = 512  # token sample per site: LWC / learned-transform set, outlier report
    lwc_batch: int = 64  # tokens per LWC step
    gptq_damp: float = 0.01  # GPTQ: fraction of mean(diag H) added to the diagonal
    clip_grid: int = 40  # clip search: candidate factors in [clip_min, 1]
    clip_min: float = 0.5
    learn_steps: int = 30  # Adam steps per site of the learned smoothing + rotations
    learn_lr: float = DEFAULT_LR
    # The learned loss's matrix products: "auto" (bfloat16 where the device computes it
    # natively: CUDA, CPUs with AVX-512 BF16 or AMX; else float32), "float32", "bfloat16".
    learn_dtype: str = "auto"
    # Greedy steps of the learned method's starting rotations (recorded as the checkpoint's
    # rotation_steps): 64 measured as accurate as 256 there, at a quarter of the search time.
    learn_start_steps: int = 64
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

    def __init__(self, max_tokens: int, stride: int = 1, hessian: bool = False) -> None:
        self.stride = stride
        self.absmax: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.count = 0
        self.sample: list[torch.Tensor] = []
        self.sample_tokens = 0
        self.max_tokens = max_tokens
        self.want_hessian = hessian
        self.xtx: torch.Tensor | None = None  # Σ xᵀx over every calibration token, float64

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()  # [B, T, C]
        am = x.abs().amax(dim=(0, 1))
        self.absmax = am if self.absmax is None else torch.maximum(self.absmax, am)
        s = x.sum(dim=0)
        self.sum = s if self.sum is None else self.sum + s
        self.count += x.shape[0]
        flat = x.reshape(-1, x.shape[-1])
        if self.want_hessian:
            # float32 products per batch (a few thousand tokens), float64 across batches.
            part = (flat.t() @ flat).double()
            self.xtx = part if self.xtx is None else self.xtx + part
        if self.sample_tokens < self.max_tokens:
            # Every stride-th token, so the sample spans all calibration sequences rather than
            # the first one only.
            take = flat[:: self.stride][: self.max_tokens - self.sample_tokens]
            self.sample.append(take.clone())
            self.sample_tokens += take.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count

    @property
    def tokens(self) -> torch.Tensor:
        return torch.cat(self.sample)


def collect_site_stats(layer, sites, inps, kwargs, batch, max_tokens,
                       hessian: bool = False) -> dict[str, _SiteStats]:
    """Step 1: statistics of every site's input while `layer` runs on `inps` (16-bit)."""
    stride = max(1, inps.shape[0] * inps.shape[1] // max_tokens)
    stats = {s.name: _SiteStats(max_tokens, stride, hessian) for s in sites}
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


def _is_online(site: Site, sv: torch.Tensor | None) -> bool:
    """Smoothing that no neighbouring weight can absorb: divided at run time (o_proj, GQA)."""
    return sv is not None and site.norm is None and site.fold_rows_of is None


def _fold(layer, site: Site, sv: torch.Tensor) -> None:
    """Fold a site's smoothing into its neighbours: × into its linears' columns, ÷ into the
    RMSNorm weight (column-parallel sites) or the rows of the linear that produces the input."""
    for name in site.linears:
        lin = layer.get_submodule(name)
        lin.weight.mul_(sv.to(lin.weight).unsqueeze(0))
    if site.norm is not None:
        norm = layer.get_submodule(site.norm)
        norm.weight.div_(sv.to(norm.weight))
    else:
        prev = layer.get_submodule(site.fold_rows_of)
        prev.weight.div_(sv.to(prev.weight).unsqueeze(1))
        if prev.bias is not None:
            prev.bias.div_(sv.to(prev.bias))


def smooth_layer(layer, sites, stats, alpha: float | None) -> dict[str, torch.Tensor | None]:
    """Step 2: smoothing factors of every site (None: no smoothing) from the unmodified
    weights, then all folds (the reference's order) → {site: factors or None}."""
    smooth: dict[str, torch.Tensor | None] = {}
    for s in sites:
        if alpha is None:
            smooth[s.name] = None
            continue
        w = layer.get_submodule(s.stats_from).weight
        smooth[s.name] = smoothing_factors(stats[s.name].absmax, w.abs().amax(dim=0), alpha)
    for s in sites:
        sv = smooth[s.name]
        if sv is not None and not _is_online(s, sv):
            _fold(layer, s, sv)
    return smooth


def learn_layer_transforms(layer, sites, stats, alpha: float, cfg: DuQuantConfig,
                           opts: PipelineOptions, gen: torch.Generator, reports: dict
                           ) -> tuple[dict[str, torch.Tensor], dict[str, InputTransform]]:
    """Steps 2-3 learned: per site, α-smoothing and the greedy transform as the start, then
    smoothing and R1/R2 refined together on the site's W4A4 output error
    (learned_transforms.refine_smoothing_and_rotations), and folded at once. Sites go last to first:
    a site's smoothing folds into the rows of the linear feeding it (up_proj, v_proj), which
    belongs to an earlier site, so that site must start from the folded weights."""
    smooth, transforms = {}, {}
    for s in reversed(sites):
        st = stats[s.name]
        groups, block = input_layout(cfg, st.absmax.numel(), s.row_parallel)
        w_stats = layer.get_submodule(s.stats_from).weight.detach().abs().amax(dim=0)
        s0 = smoothing_factors(st.absmax, w_stats, alpha)
        tr0 = build_input_transform(st.mean / s0, block, cfg.rotation_steps, gen, cfg.permutation,
                                    groups, cfg.channel_select)
        weight = torch.cat([layer.get_submodule(n).weight.detach().float() for n in s.linears])
        with torch.enable_grad():
            sv, tr, reports[s.name] = refine_smoothing_and_rotations(
                tr0, st.tokens, weight, s0, cfg.a_bits, cfg.w_bits, cfg.act_clip_ratio, groups,
                opts.learn_steps, opts.learn_lr, learn_matmul_dtype(opts.learn_dtype, st.tokens.device))
        if _is_online(s, sv):
            tr = InputTransform(tr.r1, tr.perm, tr.r2, sv)
        else:
            _fold(layer, s, sv)
        smooth[s.name], transforms[s.name] = sv, tr
    return smooth, transforms


def learn_matmul_dtype(spec: str, device: torch.device) -> torch.dtype:
    """PipelineOptions.learn_dtype → the dtype of the learned loss's matrix products. Same
    accuracy either way on SmolLM2 (validation 17.08 vs 17.04, benchmarks/results/accuracy)."""
    if spec == "auto":
        native = device.type == "cuda" or (
            device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported()
                                      or torch.cpu._is_amx_tile_supported()))
        return torch.bfloat16 if native else torch.float32
    if spec not in ("float32", "bfloat16"):
        raise ValueError(f"learn_dtype {spec!r}: use auto, float32 or bfloat16")
    return getattr(torch, spec)


def site_transform(method: Method, st: _SiteStats, sv: torch.Tensor | None, online: bool,
                   block: int, groups: int, cfg: DuQuantConfig, gen: torch.Generator,
                   dev: torch.device) -> InputTransform:
    """Step 3: the input transform of one site (smoothing `sv` already folded unless online)."""
    width = st.absmax.numel()
    if method.transform == "duquant":
        mean = st.mean if sv is None else st.mean / sv
        return build_input_transform(
            mean, block, cfg.rotation_steps, gen, cfg.permutation, groups,
            cfg.channel_select, smooth=sv if online else None)
    if method.transform == "hadamard":
        return hadamard_transform(width, block).to(dev)
    tr = identity_transform(width, block).to(dev)
    if online:
        tr = InputTransform(tr.r1, tr.perm, tr.r2, sv, is_identity=True)
    return tr


def transformed_hessian(st: _SiteStats, sv: torch.Tensor | None, online: bool,
                        tr: InputTransform) -> torch.Tensor:
    """XᵀX of the inputs the quantized linear sees, x' = T(x / s): Mᵀ·H·M for the linear map M
    of the folded smoothing and the transform (applied to H's rows, then to its columns)."""
    h = st.xtx
    if sv is not None and not online:
        inv = 1.0 / sv.double().to(h.device)
        h = h * inv.unsqueeze(0) * inv.unsqueeze(1)
    half = tr.apply(h).t().contiguous()
    return tr.apply(half).t().contiguous()


def quantize_site(method: Method, site: Site, layer, tr: InputTransform, arriving: torch.Tensor,
                  hessian: torch.Tensor | None, groups: int, cfg: DuQuantConfig,
                  opts: PipelineOptions, timings: dict[str, float]) -> dict[str, QuantizedLinear]:
    """Step 4: every linear of `site` quantized in the transformed basis → {name: linear}."""
    out = {}
    for name in site.linears:
        lin = layer.get_submodule(name)
        with torch.no_grad():
            w_t = tr.apply_to_weight(lin.weight.float())
        t = time.perf_counter()
        if method.weights == "gptq":
            with torch.no_grad():
                factor = search_clip(w_t, cfg.w_bits, torch.diagonal(hessian), opts.clip_grid,
                                     opts.clip_min)
                codes, scale, zero = gptq_quantize(w_t, hessian, cfg.w_bits, factor,
                                                   damp=opts.gptq_damp)
            q = QuantizedLinear(
                qweight=pack_weight_codes(codes, cfg.w_bits), weight_scale=scale,
                weight_zero=zero, transform=tr,
                bias=None if lin.bias is None else lin.bias.detach().clone(),
                w_bits=cfg.w_bits, a_bits=cfg.a_bits, act_clip_ratio=cfg.act_clip_ratio,
                act_groups=groups, shards=cfg.input_shards(site.row_parallel))
            timings["gptq"] += time.perf_counter() - t
        else:
            lo_f = hi_f = None
            if method.weights == "lwc":
                with torch.no_grad():
                    x_t = tr.apply(arriving)
                    x_q = fake_quantize_per_token(x_t, cfg.a_bits, cfg.act_clip_ratio, groups)
                    # The 16-bit linear on the quantized model's inputs. (Targets from the
                    # 16-bit model's own activations, OmniQuant-style, measured worse here:
                    # benchmarks/results/accuracy/README.md.)
                    target = arriving @ lin.weight.float().t()
                with torch.enable_grad():
                    lo_f, hi_f = learn_clip_factors(
                        w_t, x_q, target, cfg.w_bits, cfg.weight_clip_ratio,
                        opts.lwc_epochs, opts.lwc_lr, opts.lwc_batch)
                timings["lwc"] += time.perf_counter() - t
            t = time.perf_counter()
            q = quantize_linear(
                w_t, tr, lin.bias, cfg.w_bits, cfg.a_bits, cfg.weight_clip_ratio,
                cfg.act_clip_ratio, lo_factor=lo_f, hi_factor=hi_f, act_groups=groups,
                shards=cfg.input_shards(site.row_parallel))
            timings["weight_quantization"] += time.perf_counter() - t
        out[name] = q
    return out


def _install(layer, name: str, q: QuantizedLinear) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(layer.get_submodule(parent_name), child, QuantLinearModule(q, "fake"))


def quantize_layer(layer, sites, inps: torch.Tensor, kwargs: dict, method: Method,
                   alpha: float | None, cfg: DuQuantConfig, opts: PipelineOptions,
                   gen: torch.Generator, dev: torch.device, timings: dict[str, float]
                   ) -> tuple[dict[str, QuantizedLinear], dict]:
    """Steps 1-4 on one decoder layer whose inputs are `inps`: its linears are replaced by
    fake-quant modules → ({name relative to the layer: linear}, {site: report})."""
    t = time.perf_counter()
    with torch.no_grad():
        stats = collect_site_stats(layer, sites, inps, kwargs, opts.batch_size,
                                   opts.lwc_tokens, hessian=method.weights == "gptq")
    timings["calibration_forward"] += time.perf_counter() - t

    t = time.perf_counter()
    learned: dict[str, InputTransform] = {}
    learn_reports: dict[str, dict] = {}
    with torch.no_grad():
        if method.learned:
            smooth, learned = learn_layer_transforms(layer, sites, stats, alpha, cfg, opts,
                                                     gen, learn_reports)
        else:
            smooth = smooth_layer(layer, sites, stats, alpha)
    timings["learned_transforms" if method.learned else "smoothing"] += \
        time.perf_counter() - t

    site_reports: dict[str, dict] = {}
    linears: dict[str, QuantizedLinear] = {}
    for s in sites:
        st, sv = stats[s.name], smooth[s.name]
        online = _is_online(s, sv)
        groups, block = input_layout(cfg, st.absmax.numel(), s.row_parallel)
        arriving = st.tokens if (sv is None or online) else st.tokens / sv
        t = time.perf_counter()
        tr = learned.get(s.name) or site_transform(method, st, sv, online, block, groups, cfg,
                                                   gen, dev)
        timings["rotation_permutation"] += time.perf_counter() - t
        with torch.no_grad():
            site_reports[s.name] = {
                "block_size": block,
                "act_groups": groups,
                "smoothing": None if sv is None else ("online" if online else "folded"),
                "before": _outlier_stats(st.tokens),
                "after": _outlier_stats(tr.apply(arriving)),
            }
            if s.name in learn_reports:
                site_reports[s.name]["learned"] = learn_reports[s.name]
            hessian = (transformed_hessian(st, sv, online, tr)
                       if method.weights == "gptq" else None)
        for name, q in quantize_site(method, s, layer, tr, arriving, hessian, groups, cfg,
                                     opts, timings).items():
            linears[name] = q
            _install(layer, name, q)
    return linears, site_reports


def quantize_model(
    model: torch.nn.Module,
    calib_ids: torch.Tensor,
    cfg: DuQuantConfig,
    opts: PipelineOptions | None = None,
) -> QuantizeResult:
    """Quantize `model` in place (its linears become fake-quant modules) → result."""
    opts = opts or PipelineOptions()
    check_supported(model.config)
    if opts.method not in METHOD_TABLE:
        raise ValueError(f"unknown method {opts.method!r}; choose from {METHODS}")
    method = METHOD_TABLE[opts.method]
    alpha = {"none": None, "config": cfg.smooth_alpha,
             "smoothquant": SMOOTHQUANT_ALPHA}[method.smoothing]
    cfg = replace(cfg, method=method.name, lwc=method.weights == "lwc")
    if method.learned:
        cfg = replace(cfg, rotation_steps=opts.learn_start_steps)
    gen = torch.Generator().manual_seed(cfg.seed)  # CPU: the same draws on any device
    home = next(model.parameters()).device
    dev = resolve_device(opts.device) if opts.device is not None else home
    sites = layer_sites(model.config)
    timings = {"calibration_forward": 0.0, "smoothing": 0.0, "rotation_permutation": 0.0,
               "weight_quantization": 0.0, "lwc": 0.0, "gptq": 0.0, "learned_transforms": 0.0}
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
        layer_linears, site_reports = quantize_layer(layer, sites, inps, kwargs, method, alpha,
                                                     cfg, opts, gen, dev, timings)
        linears.update({f"model.layers.{li}.{n}": q for n, q in layer_linears.items()})
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
                _install(layer, name, linears[full])
            layer.to(home)

    report = {
        "method": opts.method,
        "learned_matmul_dtype": (str(learn_matmul_dtype(opts.learn_dtype, dev)).removeprefix("torch.")
                                 if method.learned else None),
        "seconds_per_stage": {k: round(v, 3) for k, v in timings.items()},
        "layers": layer_reports,
    }
    return QuantizeResult(model=model, linears=linears, config=cfg, report=report)
