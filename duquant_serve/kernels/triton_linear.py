"""The Triton kernel: fused prologue, W4A4 GEMM with the scale/zero-point epilogue."""

from __future__ import annotations

import torch

from ..core.pack import unpack_int4
from . import ops  # noqa: F401  (registers torch.ops.duquant.*)
from .base import LayerSpec, LinearKernel, PreparedLinear
from .gpu_common import common_gpu_checks, prologue, triton_missing
from .knobs import KernelKnobs
from .layout import pack_int4_grouped


class TritonKernel(LinearKernel):
    """Fused Triton prologue + Triton int8-tensor-core GEMM reading packed 4-bit weights
    (grouped layout, layout.py) with the zero-point epilogue fused. sm_80 and newer."""

    name = "triton"

    @classmethod
    def tuned_counts(cls, spec: LayerSpec, device: torch.device,
                     knobs: KernelKnobs | None = None) -> tuple[int, ...]:
        # The GEMM's tuned tile table (kernels/tuned.py) for this GPU, if it holds the shape.
        from . import triton_gemm, tuned

        name = triton_gemm._device_name(torch.device(device))
        if name is None:
            return ()
        return tuned.counts("triton_gemm", name, spec.out_features, spec.in_features,
                            knobs.tuned_configs if knobs else "")

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        why = common_gpu_checks(spec) or triton_missing()
        if why:
            return False, why
        if spec.capability < (8, 0):
            return False, f"int8 tensor-core dot needs sm_80+, device is sm_{spec.capability}"
        if spec.in_features % 64:
            return False, f"in_features {spec.in_features} % 64 != 0 (grouped 4-bit layout)"
        return True, None

    @classmethod
    def weight_layout(cls, qweight: torch.Tensor) -> torch.Tensor:
        return pack_int4_grouped(unpack_int4(qweight))

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        q, s, z, qs = prologue(p, x2)
        y = torch.ops.duquant.w4a4_gemm(q, s, z, qs, p.qweight, p.weight_scale, p.weight_zero,
                                        p.weight_code_sum, p.bias, x.dtype, p.knobs.split_k,
                                        p.knobs.tuned_configs)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class TritonGroupsKernel(TritonKernel):
    """Activation groups (LayerSpec.act_groups > 1) in one block-scaled Triton GEMM: each
    group's int32 sum folded into an fp32 accumulator with its own per-token scale and zero
    point inside the K loop (triton_gemm.w4a4_gemm_groups_triton), after a per-(token, group)
    prologue in torch ops (ops.prologue_groups; not fused yet). Never run on a GPU so far, so
    select offers it only with DUQUANT_ENABLE_UNVALIDATED=1; until then the GPU kernels serve
    such layers one group at a time."""

    name = "triton_groups"
    native_act_groups = True
    validated_on_gpu = False

    @classmethod
    def tuned_counts(cls, spec: LayerSpec, device: torch.device,
                     knobs: KernelKnobs | None = None) -> tuple[int, ...]:
        return ()

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        if spec.act_groups == 1:
            return False, "for layers with activation groups only (the triton kernel runs the rest)"
        ok, why = super().can_implement(spec)
        if not ok:
            return ok, why
        if spec.group_width % 64:
            return False, f"activation groups of {spec.group_width} channels, not a multiple of 64"
        return True, None

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        q, s, z, qs = torch.ops.duquant.prologue_groups(x2, p.r1, p.r2, p.perm, p.smooth,
                                                        p.spec.a_bits, p.act_clip_ratio,
                                                        p.spec.act_groups)
        y = torch.ops.duquant.w4a4_gemm_groups(q, s, z, qs, p.qweight, p.weight_scale,
                                               p.weight_zero, p.group_code_sum, p.bias, x.dtype,
                                               p.knobs.tuned_configs)
        return y.reshape(*x.shape[:-1], y.shape[-1])
