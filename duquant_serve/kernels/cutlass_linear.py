"""The CUTLASS kernels: sm_90a (packed 4-bit or int8 weights) and sm_80 (u4 x u4)."""

from __future__ import annotations

import dataclasses

import torch

from ..core.epilogue import distributed
from ..core.pack import unpack_int4
from . import ops  # noqa: F401  (registers torch.ops.duquant.*)
from .base import LayerSpec, LinearKernel, PreparedLinear
from .gpu_common import common_gpu_checks, cutlass_missing, prologue, triton_missing
from .layout import SIGNED_OFFSET, to_signed_int4


class CutlassSm90Kernel(LinearKernel):
    """sm_90a: Triton prologue → one CUTLASS 3.x kernel (cutlass_ext/csrc/w4a4_sm90_packed.cu):
    weights stay packed 4-bit in GPU memory, the mixed-input mainloop widens them to int8 in
    registers for the int8 wgmma, and the zero-point / scale epilogue is an epilogue visitor
    tree. Codes are stored as signed nibbles q − 8 (layout.to_signed_int4), so v = sw·(zw − 8).
    """

    name = "cutlass_sm90"
    validated_on_gpu = False
    packed = True  # weights as 4-bit signed nibbles; False: one int8 code per byte

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        why = common_gpu_checks(spec) or triton_missing()
        if why:
            return False, why
        if spec.capability[0] != 9:
            return False, f"built for sm_90a (Hopper), device is sm_{spec.capability}"
        if spec.act_dtype not in (torch.bfloat16, torch.float16):
            return False, f"fused epilogue writes bf16/fp16, activations are {spec.act_dtype}"
        k_multiple = 32 if cls.packed else 16  # 16-byte TMA rows of weight codes
        if spec.in_features % k_multiple or spec.out_features % 8:
            return False, f"needs K % {k_multiple} == 0 and N % 8 == 0 (TMA alignment)"
        why = cutlass_missing("sm90a")
        return (False, why) if why else (True, None)

    @classmethod
    def weight_layout(cls, qweight: torch.Tensor) -> torch.Tensor:
        return to_signed_int4(qweight) if cls.packed else unpack_int4(qweight).to(torch.int8)

    @classmethod
    def finish_prepare(cls, p: PreparedLinear) -> PreparedLinear:
        # The per-channel vectors the epilogue broadcasts (core.epilogue.distributed).
        c = distributed(p.weight_scale.cpu(), p.weight_zero.cpu(), p.weight_code_sum.cpu(),
                        p.spec.in_features, SIGNED_OFFSET if cls.packed else 0)
        dev = p.qweight.device
        return dataclasses.replace(p, epilogue_u=c.u.to(dev), epilogue_v=c.v.to(dev),
                                   epilogue_w=c.w.to(dev))

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        q, s, z, qs = prologue(p, x2)
        y = torch.ops.duquant.w4a4_gemm_sm90(q, s, z, qs, p.qweight, p.epilogue_u, p.epilogue_v,
                                             p.epilogue_w, p.bias, x.dtype, cls.packed)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class CutlassSm90Int8WeightKernel(CutlassSm90Kernel):
    """sm_90a with weight codes one per int8 byte (cutlass_ext/csrc/w4a4_sm90_evt.cu): both
    wgmma operands straight from shared memory, no widening, 2× the weight bytes of
    `cutlass_sm90`. Ranked after it: the comparator that measures what the in-register widening
    costs, and the fallback should the packed kernel fail validation."""

    name = "cutlass_sm90_int8w"
    validated_on_gpu = False  # its own flag: validating one sm_90 kernel says nothing of the other
    packed = False


class CutlassSm80Kernel(LinearKernel):
    """sm_80/86/89: Triton prologue → pack codes → CUTLASS 2.x u4×u4 mma.sync → Triton
    epilogue. Weights stay in the checkpoint's packed layout. Compiled (SASS: IMMA.16864.U4.U4),
    never run: no Ampere GPU was available."""

    name = "cutlass_sm80"
    validated_on_gpu = False

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        why = common_gpu_checks(spec) or triton_missing()
        if why:
            return False, why
        if not (8, 0) <= spec.capability < (9, 0):
            return False, f"int4 mma.sync path is for sm_80..sm_89, device is sm_{spec.capability}"
        if spec.in_features % 32 or spec.out_features % 4:
            return False, "needs K % 32 == 0 and N % 4 == 0 (128-bit alignment of 4-bit rows)"
        why = cutlass_missing("sm80")
        return (False, why) if why else (True, None)

    # prepare: the base class's (weights stay in the checkpoint's packed layout).

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        q, s, z, qs = prologue(p, x2)
        qp = torch.ops.duquant.pack_codes(q)
        acc = torch.ops.duquant.gemm_u4_sm80(qp, p.qweight)
        y = torch.ops.duquant.epilogue(acc, s, z, qs, p.weight_scale, p.weight_zero,
                                       p.weight_code_sum, p.bias, p.spec.in_features, x.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])
