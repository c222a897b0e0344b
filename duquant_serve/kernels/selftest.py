"""Load-time self-test of a kernel on the device it is about to serve on.

Before `select.choose_kernel` hands out a kernel (other than `torch_ref`, which *is* the
reference), the kernel runs a random linear of the layer's own input width (up to MAX_N
outputs), block size, smoothing, bias and activation dtype at a decode, an odd and a
prefill-sized M, and its output is compared with `core.reference.w4a4_linear_ref`. A kernel
that errors, returns NaN/inf or misses by more than the output dtype's rounding is passed over,
with the reason in the log and in the error that lists every kernel's rejection. Why: a kernel
that is wrong on some GPU / driver / Triton combination would otherwise serve wrong tokens
silently; this costs milliseconds per distinct layer shape, once per process.

DUQUANT_KERNEL_SELFTEST=0 skips it.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch

from ..core.pack import pack_int4
from ..core.quant import quantize_per_channel
from ..core.reference import QuantizedLinear, w4a4_linear_ref
from ..core.transform import InputTransform, random_orthogonal
from .base import LayerSpec, LinearKernel

SELFTEST_MS = (1, 37, 300)  # decode, a ragged tile, prefill-sized (the M > 256 paths)
# Output channels tested: the layer's own K, block and options, but at most this many outputs
# (a multiple of every kernel's N alignment), so a 57344-wide gate_up costs no more than a
# small layer to build and check.
MAX_N = 512
# ‖y − ref‖ / ‖ref‖ above this fails. bf16 output rounding alone is ~3e-3; a broken kernel
# (wrong layout, missing barrier, bad epilogue) is off by 1e-1 or more.
MAX_REL_ERR = 2e-2

_results: dict[tuple, tuple[str | None, float]] = {}


def enabled() -> bool:
    return os.environ.get("DUQUANT_KERNEL_SELFTEST", "1") != "0"


def random_linear(spec: LayerSpec, device: torch.device, seed: int = 0) -> QuantizedLinear:
    """A random checkpoint linear of `spec`'s shape: orthogonal R1/R2, a random permutation,
    per-channel 4-bit weights, smoothing and bias where the spec has them."""
    g = torch.Generator().manual_seed(seed)
    k, n, b = spec.in_features, spec.out_features, spec.block_size
    w = torch.randn(n, k, generator=g) / math.sqrt(k)
    q, scale, zero = quantize_per_channel(w, spec.w_bits, 1.0)
    transform = InputTransform(
        random_orthogonal(b, g).float(), torch.randperm(k, generator=g),
        random_orthogonal(b, g).float(),
        torch.rand(k, generator=g) + 0.5 if spec.has_smooth else None)
    bias = torch.randn(n, generator=g) * 0.1 if spec.has_bias else None
    lin = QuantizedLinear(pack_int4(q), scale, zero, transform, bias, spec.w_bits, spec.a_bits,
                          0.9)
    return lin.to(device)


def _device(spec: LayerSpec) -> torch.device | None:
    """The device the layer will run on (the current one of its type), or None if absent."""
    if spec.device_type == "cpu":
        return torch.device("cpu")
    if spec.device_type == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return None


def self_test(kernel: type[LinearKernel], spec: LayerSpec) -> tuple[str | None, float]:
    """(None, worst relative error) if `kernel` reproduces the reference for `spec` on its
    device, else (why, worst error). Cached per kernel, spec and device."""
    device = _device(spec)
    if device is None:  # a spec for hardware this process does not have: nothing to run on
        return None, float("nan")
    key = (kernel.name, spec, str(device))
    if key not in _results:
        _results[key] = _run(kernel, spec, device)
    return _results[key]


def _run(kernel: type[LinearKernel], spec: LayerSpec, device: torch.device
         ) -> tuple[str | None, float]:
    worst = 0.0
    spec = dataclasses.replace(spec, out_features=min(spec.out_features, MAX_N))
    try:
        lin = random_linear(spec, device)
        p = kernel.prepare(spec, lin.qweight, lin.weight_scale, lin.weight_zero, lin.transform,
                           lin.bias, lin.act_clip_ratio, device=device)
        g = torch.Generator().manual_seed(1)
        for m in SELFTEST_MS:
            # Per-channel offsets as well as noise: real activations are not centred.
            x = torch.randn(m, spec.in_features, generator=g) * 2 + torch.randn(
                spec.in_features, generator=g)
            x = x.to(device=device, dtype=spec.act_dtype)
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
