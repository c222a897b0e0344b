"""Random quantized linears and activations, built with duquant_serve.core (no math here).

One source for the kernel tests (tests/kernels/kernel_cases.py), the GPU and CPU benchmarks and
the load-time kernel self-test (kernels/selftest.py).
"""

from __future__ import annotations

import math

import torch

from ..core.pack import pack_int4
from ..core.quant import quantize_per_channel
from ..core.reference import QuantizedLinear
from ..core.transform import InputTransform, random_orthogonal


def random_transform(k: int, b: int, smooth: bool, g: torch.Generator,
                     groups: int = 1) -> InputTransform:
    """Orthogonal R1/R2 (column-major out of QR: kernels must cope), a random permutation
    (inside each of `groups` contiguous groups, as checkpoints keep it), smoothing factors in
    [0.5, 1.5) where asked."""
    kg = k // groups
    return InputTransform(
        random_orthogonal(b, g).float(),
        torch.cat([torch.randperm(kg, generator=g) + i * kg for i in range(groups)]),
        random_orthogonal(b, g).float(),
        (torch.rand(k, generator=g) + 0.5) if smooth else None,
    )


def random_linear(n: int, k: int, b: int, smooth: bool, bias: bool, g: torch.Generator,
                  clip: float = 0.9, groups: int = 1, shards: int = 1) -> QuantizedLinear:
    """A W4A4 checkpoint linear [n, k] with rotation block b: per-channel 4-bit weights;
    `groups` activation groups over `shards` row-parallel shards (QuantizedLinear)."""
    w = torch.randn(n, k, generator=g) / math.sqrt(k)
    q, s, z = quantize_per_channel(w, 4, 1.0)
    return QuantizedLinear(
        qweight=pack_int4(q), weight_scale=s, weight_zero=z,
        transform=random_transform(k, b, smooth, g, groups),
        bias=(torch.randn(n, generator=g) * 0.1) if bias else None,
        w_bits=4, a_bits=4, act_clip_ratio=clip, act_groups=groups, shards=shards,
    )


def random_activations(m: int, k: int, g: torch.Generator,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[m, k] with per-channel offsets and three outlier channels (×20): realistic, never 0."""
    x = torch.randn(m, k, generator=g) + torch.randn(k, generator=g)
    x[:, torch.randint(0, k, (3,), generator=g)] *= 20
    return x.to(dtype)
