"""Random test layers built with duquant_serve.core (no math re-implemented here)."""

from __future__ import annotations

import math

import torch

from duquant_serve.core.pack import pack_int4
from duquant_serve.core.quant import quantize_per_channel
from duquant_serve.core.reference import QuantizedLinear
from duquant_serve.core.transform import InputTransform, random_orthogonal


def make_transform(k: int, b: int, smooth: bool, g: torch.Generator) -> InputTransform:
    return InputTransform(
        random_orthogonal(b, g).float(),  # column-major out of QR: kernels must cope
        torch.randperm(k, generator=g),
        random_orthogonal(b, g).float(),
        (torch.rand(k, generator=g) + 0.5) if smooth else None,
    )


def make_layer(n: int, k: int, b: int, smooth: bool, bias: bool, g: torch.Generator,
               clip: float = 0.9) -> QuantizedLinear:
    w = torch.randn(n, k, generator=g) / math.sqrt(k)
    q, s, z = quantize_per_channel(w, 4, 1.0)
    return QuantizedLinear(
        qweight=pack_int4(q), weight_scale=s, weight_zero=z,
        transform=make_transform(k, b, smooth, g),
        bias=(torch.randn(n, generator=g) * 0.1) if bias else None,
        w_bits=4, a_bits=4, act_clip_ratio=clip,
    )


def make_x(m: int, k: int, g: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    # Per-channel offsets + outlier channels: realistic, never zeros.
    x = torch.randn(m, k, generator=g) + torch.randn(k, generator=g)
    x[:, torch.randint(0, k, (3,), generator=g)] *= 20
    return x.to(dtype)


def inverse_perm(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return inv.to(torch.int32)
