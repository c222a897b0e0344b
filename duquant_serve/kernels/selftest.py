"""Load-time self-test of a kernel on the device it is about to serve on.

Before `select.choose_kernel` hands out a kernel (other than `torch_ref`, which *is* the
reference), the kernel runs a random linear of the layer's own input width (up to MAX_N
outputs), block size, smoothing, bias and activation dtype at a decode, an odd and a
prefill-sized M, and its output is compared with `core.reference.w4a4_linear_ref`. A kernel
that errors, returns NaN/inf or misses by more than the output dtype's rounding is passed over,
with the reason in the log and in the error that lists every kernel's rejection. Why: a kernel
that is wrong on some GPU / driver / Triton combination would otherwise serve wrong tokens
silently. It runs once per distinct layer shape and process: on the 2-core CPU, 16–240 ms per
shape for cpu_int8 (SmolLM2 to LLaMA-2 widths; the reference at M = 300 dominates), plus ~1 s
of one-time initialisation at the first.

DUQUANT_KERNEL_SELFTEST=0 skips it (knobs.py).
"""

from __future__ import annotations

import dataclasses

import torch

from ..core.reference import w4a4_linear_ref
from .base import LayerSpec, LinearKernel
from .knobs import KernelKnobs
from .random_cases import random_activations, random_linear

SELFTEST_MS = (1, 37, 300)  # decode, a ragged tile, prefill-sized (the M > 256 paths)
# Output channels tested: the layer's own K, block and options, but at most this many outputs
# (a multiple of every kernel's N alignment), so a 57344-wide gate_up costs no more than a
# small layer to build and check — unless the kernel runs code tuned for the layer's exact
# shape (`LinearKernel.tuned_counts`), which is then tested at full width and at each tuned
# token count.
MAX_N = 512
# ‖y − ref‖ / ‖ref‖ above this fails. bf16 output rounding alone is ~3e-3; a broken kernel
# (wrong layout, missing barrier, bad epilogue) is off by 1e-1 or more.
MAX_REL_ERR = 2e-2

_results: dict[tuple, tuple[str | None, float]] = {}


def _device(spec: LayerSpec) -> torch.device | None:
    """The device the layer will run on (the current one of its type), or None if absent."""
    if spec.device_type == "cpu":
        return torch.device("cpu")
    if spec.device_type == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return None


def self_test(kernel: type[LinearKernel], spec: LayerSpec, knobs: KernelKnobs | None = None
              ) -> tuple[str | None, float]:
    """(None, worst relative error) if `kernel` reproduces the reference for `spec` on its
    device under the switches `knobs` (default: the environment's), else (why, worst error).
    Cached per kernel, spec, device and switches."""
    knobs = KernelKnobs.from_env() if knobs is None else knobs
    device = _device(spec)
    if device is None:  # a spec for hardware this process does not have: nothing to run on
        return None, float("nan")
    key = (kernel.name, spec, str(device), knobs)
    if key not in _results:
        _results[key] = _run(kernel, spec, device, knobs)
    return _results[key]


def _run(kernel: type[LinearKernel], spec: LayerSpec, device: torch.device, knobs: KernelKnobs
         ) -> tuple[str | None, float]:
    worst = 0.0
    tuned = kernel.tuned_counts(spec, device, knobs)
    if not tuned:
        spec = dataclasses.replace(spec, out_features=min(spec.out_features, MAX_N))
    g = torch.Generator().manual_seed(0)
    try:
        lin = random_linear(spec.out_features, spec.in_features, spec.block_size,
                            spec.has_smooth, spec.has_bias, g, groups=spec.act_groups).to(device)
        p = kernel.prepare(spec, lin.qweight, lin.weight_scale, lin.weight_zero, lin.transform,
                           lin.bias, lin.act_clip_ratio, device=device, knobs=knobs)
        for m in sorted(set(SELFTEST_MS) | set(tuned)):
            x = random_activations(m, spec.in_features, g, spec.act_dtype).to(device)
            y = kernel.apply(p, x).float()
            ref = w4a4_linear_ref(x.float(), lin)
            if not torch.isfinite(y).all():
                return f"self-test: non-finite output at M={m}", float("nan")
            rel = float((y - ref).norm() / ref.norm().clamp_min(1e-30))
            worst = max(worst, rel)
            if rel > MAX_REL_ERR:
                return (f"self-test: output differs from core.reference at M={m} "
                        f"(relative error {rel:.2e} > {MAX_REL_ERR:.0e})"), worst
    except Exception as e:  # any failure to run means it must not serve
        return f"self-test: raised {type(e).__name__}: {e}"[:400], worst
    return None, worst
