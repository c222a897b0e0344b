"""Random test layers: duquant_serve.kernels.random_cases under the names the kernel tests use."""

from __future__ import annotations

import torch

from duquant_serve.kernels.random_cases import random_activations as make_x  # noqa: F401
from duquant_serve.kernels.random_cases import random_linear as make_layer  # noqa: F401
from duquant_serve.kernels.random_cases import random_transform as make_transform  # noqa: F401


def inverse_perm(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return inv.to(torch.int32)
