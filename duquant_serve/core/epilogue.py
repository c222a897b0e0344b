"""The W4A4 epilogue's per-output-channel constants, built in one place.

docs/epilogue.md derives the algebra once:

    y[m, n] = s_x[m]·s_w[n]·(acc[m, n] − z_w[n]·Sx[m] − z_x[m]·c[n]) + bias[n],   c = Sw − K·z_w

Every integer path reads its weight-side constants from here: the reference and `cpu_int8`
take the bracket as one rank-2 update against `rank2_rhs` ([z_w; c]); the CUTLASS sm_90a
kernels broadcast s_w distributed into the bracket (`distributed`: u, v, w); the Triton GEMM
computes c from the same three vectors in registers (no precomputed constant, one fewer load).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def weight_correction(weight_zero: torch.Tensor, weight_code_sum: torch.Tensor, k: int,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """c[n] = Sw[n] − K·z_w[n]: the K·z_x·z_w term folded into the z_x term. An integer,
    exact in fp32 while below 2^24 (docs/epilogue.md "Exactness")."""
    zw = weight_zero.to(dtype)
    return weight_code_sum.to(dtype) - k * zw


def rank2_rhs(weight_zero: torch.Tensor, weight_code_sum: torch.Tensor, k: int,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[2, N] = [z_w; c]: the bracket is acc − [Sx, z_x]·rank2_rhs."""
    return torch.stack((weight_zero.to(dtype),
                        weight_correction(weight_zero, weight_code_sum, k, dtype)))


@dataclass(frozen=True)
class DistributedConstants:
    """s_w distributed into the bracket, so every per-channel factor is one broadcast vector:
    y = s_x·(u·acc − (v·Sx + w·z_x)) + bias."""

    u: torch.Tensor  # s_w
    v: torch.Tensor  # s_w·(z_w − shift)
    w: torch.Tensor  # s_w·c


def distributed(weight_scale: torch.Tensor, weight_zero: torch.Tensor,
                weight_code_sum: torch.Tensor, k: int, shift: int = 0) -> DistributedConstants:
    """u, v, w in float64, rounded once to fp32. `shift`: weight codes stored as q_w − shift
    (the CUTLASS packed kernel's signed nibbles, shift 8) make acc' = acc − shift·Sx, which
    only moves v."""
    sw = weight_scale.double()
    zw = weight_zero.double()
    c = weight_correction(weight_zero, weight_code_sum, k)
    return DistributedConstants(u=sw.float(), v=(sw * (zw - shift)).float(), w=(sw * c).float())
