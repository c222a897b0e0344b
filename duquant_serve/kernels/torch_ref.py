"""The torch reference kernel: core.reference as one custom op, on any device."""

from __future__ import annotations

import torch

from ..core.pack import unpack_int4
from . import ops  # noqa: F401  (registers torch.ops.duquant.*)
from .base import LayerSpec, LinearKernel, PreparedLinear, rotations_row_major


class TorchRefKernel(LinearKernel):
    """`core.reference` as one custom op: any device, exact, slow. The reference every kernel is
    tested against, and the CPU fallback where `torch._int_mm` does not run (cpu_int8)."""

    name = "torch_ref"
    is_reference = True
    native_act_groups = True

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        if spec.w_bits != 4 or spec.a_bits != 4:
            return False, f"only W4A4 (got W{spec.w_bits}A{spec.a_bits})"
        if spec.in_features % 2:
            return False, f"in_features {spec.in_features} is odd (4-bit packing)"
        return True, None

    @classmethod
    def weight_layout(cls, qweight: torch.Tensor) -> torch.Tensor:
        return unpack_int4(qweight)  # unpacked once here, not per call

    @classmethod
    def finish_prepare(cls, p: PreparedLinear) -> PreparedLinear:
        return rotations_row_major(p)

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.ops.duquant.linear_ref(
            x2, p.r1, p.r2, p.perm, p.smooth, p.qweight, p.weight_scale, p.weight_zero,
            p.weight_code_sum, p.bias, p.spec.a_bits, p.act_clip_ratio, p.spec.act_groups)
        return y.reshape(*x.shape[:-1], y.shape[-1])
