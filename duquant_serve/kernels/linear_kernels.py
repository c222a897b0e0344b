"""The W4A4 linear kernels: CUTLASS (sm_90a packed / int8 weights, sm_80), Triton, CPU int8, torch ref.

Each `apply` is a straight line of `torch.ops.duquant.*` calls (ops.py), or on CPU (`cpu_int8`)
of the plain torch functions behind them: no data-dependent Python, no printing, so
torch.compile traces it and vLLM can capture it in CUDA graphs.
Availability checks (`can_implement`) import Triton / load the extension lazily.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import torch

from ..core.pack import unpack_int4
from ..core.transform import InputTransform
from . import ops  # also registers torch.ops.duquant.*
from .base import LayerSpec, LinearKernel, PreparedLinear, prepare_common
from .layout import SIGNED_OFFSET, pack_int4_grouped, to_signed_int4

_ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _common_gpu_checks(spec: LayerSpec) -> str | None:
    if spec.device_type != "cuda":
        return f"needs a CUDA device, layer is on {spec.device_type!r}"
    if spec.capability is None:
        return "no CUDA capability known for the device"
    if spec.w_bits != 4 or spec.a_bits != 4:
        return f"only W4A4 (got W{spec.w_bits}A{spec.a_bits})"
    if spec.act_dtype not in _ACT_DTYPES:
        return f"activation dtype {spec.act_dtype} not in {_ACT_DTYPES}"
    if spec.block_size < 16:
        return f"rotation block {spec.block_size} < 16 (tensor-core dot minimum)"
    return None


def _unvalidated(kernel: type[LinearKernel]) -> str | None:
    """Paths never executed on a GPU are opt-in (a silent wrong answer is worse than a slower
    path). Flip `validated_on_gpu` once benchmarks/gpu_session.py passes on real hardware."""
    if getattr(kernel, "validated_on_gpu", False) or os.environ.get(
            "DUQUANT_ENABLE_UNVALIDATED") == "1":
        return None
    return ("compiled but never run on a GPU (set DUQUANT_ENABLE_UNVALIDATED=1 to use; "
            "benchmarks/gpu_session.py --mode check validates it)")


def _triton_missing() -> str | None:
    return None if importlib.util.find_spec("triton") else "triton is not installed"


def _cutlass_missing(arch: str) -> str | None:
    """Why libduquant_ext.so cannot serve `arch` ("sm90a", "sm80"), or None."""
    from .cutlass import built_archs, load_error

    if load_error():
        return load_error()
    if arch not in built_archs():
        return f"libduquant_ext.so was built without {arch}"
    return None


def _prologue(p: PreparedLinear, x2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Codes, scale, zero and Σq of x2 [M, K] (the fused Triton prologue on CUDA)."""
    return torch.ops.duquant.prologue(x2, p.r1, p.r2, p.perm, p.inv_perm, p.smooth,
                                      p.spec.a_bits, p.act_clip_ratio)


def _rotations_row_major(p: PreparedLinear) -> PreparedLinear:
    """R1/R2 row-major for kernels whose prologue is the reference: `block_rotate` makes them
    contiguous on every call otherwise (prepare_common stores them column-major, the layout the
    Triton prologue reads). Same values, so the same codes; ~15 µs less per linear per call."""
    return dataclasses.replace(p, r1=p.r1.contiguous(), r2=p.r2.contiguous())


class TorchRefKernel(LinearKernel):
    """`core.reference` as one custom op: any device, exact, slow. The reference every kernel is
    tested against, and the CPU fallback where `torch._int_mm` does not run (cpu_int8)."""

    name = "torch_ref"
    is_reference = True

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        if spec.w_bits != 4 or spec.a_bits != 4:
            return False, f"only W4A4 (got W{spec.w_bits}A{spec.a_bits})"
        if spec.in_features % 2:
            return False, f"in_features {spec.in_features} is odd (4-bit packing)"
        return True, None

    @classmethod
    def prepare(cls, spec: LayerSpec, qweight: torch.Tensor, weight_scale: torch.Tensor,
                weight_zero: torch.Tensor, transform: InputTransform, bias: torch.Tensor | None,
                act_clip_ratio: float, device: torch.device | str | None = None
                ) -> PreparedLinear:
        # Unpacked once here, not per call.
        return _rotations_row_major(prepare_common(
            spec, qweight, weight_scale, weight_zero, transform, bias, act_clip_ratio, device,
            unpack_int4(qweight.cpu())))

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.ops.duquant.linear_ref(
            x2, p.r1, p.r2, p.perm, p.smooth, p.qweight, p.weight_scale, p.weight_zero,
            p.weight_code_sum, p.bias, p.spec.a_bits, p.act_clip_ratio)
        return y.reshape(*x.shape[:-1], y.shape[-1])


@functools.cache
def _int_mm_cpu_missing() -> str | None:
    """Why `torch._int_mm` cannot serve on this CPU build, or None (probed once, with an
    answer checked: a build that computes it wrongly must not be chosen)."""
    try:
        a = torch.arange(24, dtype=torch.int8).reshape(2, 12) % 16
        w = torch.arange(36, dtype=torch.int8).reshape(3, 12) % 16
        got = torch._int_mm(a, w.t())
    except (AttributeError, NotImplementedError, RuntimeError) as e:
        return f"torch._int_mm does not run on CPU in this torch build ({e})"
    if got.dtype != torch.int32 or not torch.equal(got.long(), a.long() @ w.long().t()):
        return "torch._int_mm gave a wrong answer on CPU"
    return None


class CpuInt8Kernel(LinearKernel):
    """CPU serving: the reference prologue (the same codes as torch_ref), an int8 GEMM on the
    codes (`torch._int_mm`: oneDNN, VNNI/AMX where the CPU has them; exact int32) and the fp32
    epilogue (ops.py), within an output ulp of torch_ref. Weights are held unpacked, int8
    [N, K] (twice the packed bytes), so nothing is converted per call.

    `apply` calls the ops' plain torch bodies (`ops.prologue_torch`, `ops.epilogue_fp32`), not
    the ops: under vLLM's torch.compile, inductor then fuses the smoothing, gather, min/max,
    quantization and epilogue arithmetic around the three GEMMs into a few C++ loops; behind an
    op boundary those ~25 small ops ran one by one. Same functions, so the same codes and
    outputs (checked compiled and eager). benchmarks/kernels/bench_cpu_linear.py times it against the
    16-bit linear."""

    name = "cpu_int8"

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        if spec.device_type != "cpu":
            return False, f"CPU only, layer is on {spec.device_type!r}"
        if spec.w_bits != 4 or spec.a_bits != 4:
            return False, f"only W4A4 (got W{spec.w_bits}A{spec.a_bits})"
        if spec.in_features % 2:
            return False, f"in_features {spec.in_features} is odd (4-bit packing)"
        if spec.in_features * 15 * 15 >= 2**31:
            return False, f"in_features {spec.in_features} could overflow the int32 accumulator"
        why = _int_mm_cpu_missing()
        return why is None, why

    @classmethod
    def prepare(cls, spec: LayerSpec, qweight: torch.Tensor, weight_scale: torch.Tensor,
                weight_zero: torch.Tensor, transform: InputTransform, bias: torch.Tensor | None,
                act_clip_ratio: float, device: torch.device | str | None = None
                ) -> PreparedLinear:
        codes = unpack_int4(qweight.cpu()).to(torch.int8)  # 0..15: int8 holds them as they are
        p = _rotations_row_major(prepare_common(
            spec, qweight, weight_scale, weight_zero, transform, bias, act_clip_ratio, device,
            codes))
        return dataclasses.replace(p, epilogue_rhs=ops.epilogue_rhs(
            p.weight_zero, p.weight_code_sum, spec.in_features))

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        codes, scale, zero, code_sum = ops.prologue_torch(
            x2, p.r1, p.r2, p.perm, p.smooth, p.spec.a_bits, p.act_clip_ratio)
        acc = torch._int_mm(codes, p.qweight.t())  # [N, K] row-major read as [K, N]: no copy
        y = ops.epilogue_fp32(acc, scale, zero, code_sum, p.weight_scale,
                              p.epilogue_rhs, p.bias, x.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class TritonKernel(LinearKernel):
    """Fused Triton prologue + Triton int8-tensor-core GEMM reading packed 4-bit weights
    (grouped layout, layout.py) with the zero-point epilogue fused. sm_80 and newer."""

    name = "triton"

    @classmethod
    def tuned_counts(cls, spec: LayerSpec, device: torch.device) -> tuple[int, ...]:
        # The GEMM's tuned tile table (kernels/tuned.py) for this GPU, if it holds the shape.
        from . import triton_gemm, tuned

        name = triton_gemm._device_name(torch.device(device))
        if name is None:
            return ()
        return tuned.counts("triton_gemm", name, spec.out_features, spec.in_features)

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        why = _common_gpu_checks(spec) or _triton_missing()
        if why:
            return False, why
        if spec.capability < (8, 0):
            return False, f"int8 tensor-core dot needs sm_80+, device is sm_{spec.capability}"
        if spec.in_features % 64:
            return False, f"in_features {spec.in_features} % 64 != 0 (grouped 4-bit layout)"
        return True, None

    @classmethod
    def prepare(cls, spec: LayerSpec, qweight: torch.Tensor, weight_scale: torch.Tensor,
                weight_zero: torch.Tensor, transform: InputTransform, bias: torch.Tensor | None,
                act_clip_ratio: float, device: torch.device | str | None = None
                ) -> PreparedLinear:
        grouped = pack_int4_grouped(unpack_int4(qweight.cpu()))
        return prepare_common(spec, qweight, weight_scale, weight_zero, transform, bias,
                              act_clip_ratio, device, grouped)

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        q, s, z, qs = _prologue(p, x2)
        y = torch.ops.duquant.w4a4_gemm(q, s, z, qs, p.qweight, p.weight_scale, p.weight_zero,
                                        p.weight_code_sum, p.bias, x.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])


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
        why = _common_gpu_checks(spec) or _triton_missing()
        if why:
            return False, why
        if spec.capability[0] != 9:
            return False, f"built for sm_90a (Hopper), device is sm_{spec.capability}"
        if spec.act_dtype not in (torch.bfloat16, torch.float16):
            return False, f"fused epilogue writes bf16/fp16, activations are {spec.act_dtype}"
        k_multiple = 32 if cls.packed else 16  # 16-byte TMA rows of weight codes
        if spec.in_features % k_multiple or spec.out_features % 8:
            return False, f"needs K % {k_multiple} == 0 and N % 8 == 0 (TMA alignment)"
        why = _unvalidated(cls) or _cutlass_missing("sm90a")
        return (False, why) if why else (True, None)

    @classmethod
    def prepare(cls, spec: LayerSpec, qweight: torch.Tensor, weight_scale: torch.Tensor,
                weight_zero: torch.Tensor, transform: InputTransform, bias: torch.Tensor | None,
                act_clip_ratio: float, device: torch.device | str | None = None
                ) -> PreparedLinear:
        weights = (to_signed_int4(qweight.cpu()) if cls.packed
                   else unpack_int4(qweight.cpu()).to(torch.int8))
        p = prepare_common(spec, qweight, weight_scale, weight_zero, transform, bias,
                           act_clip_ratio, device, weights)
        # The per-channel vectors the epilogue broadcasts, in float64, rounded once to fp32:
        # u = sw, v = sw·(zw − shift), w = sw·(Σqw − K·zw) (EPILOGUE.md).
        sw, zw = p.weight_scale.double().cpu(), p.weight_zero.double().cpu()
        sqw = p.weight_code_sum.double().cpu()
        shift = SIGNED_OFFSET if cls.packed else 0
        dev = p.qweight.device
        return dataclasses.replace(
            p, epilogue_u=sw.float().to(dev), epilogue_v=(sw * (zw - shift)).float().to(dev),
            epilogue_w=(sw * (sqw - spec.in_features * zw)).float().to(dev))

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        q, s, z, qs = _prologue(p, x2)
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
        why = _common_gpu_checks(spec) or _triton_missing()
        if why:
            return False, why
        if not (8, 0) <= spec.capability < (9, 0):
            return False, f"int4 mma.sync path is for sm_80..sm_89, device is sm_{spec.capability}"
        if spec.in_features % 32 or spec.out_features % 4:
            return False, "needs K % 32 == 0 and N % 4 == 0 (128-bit alignment of 4-bit rows)"
        why = _unvalidated(cls) or _cutlass_missing("sm80")
        return (False, why) if why else (True, None)

    # prepare: the base class's (weights stay in the checkpoint's packed layout).

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        q, s, z, qs = _prologue(p, x2)
        qp = torch.ops.duquant.pack_codes(q)
        acc = torch.ops.duquant.gemm_u4_sm80(qp, p.qweight)
        y = torch.ops.duquant.epilogue(acc, s, z, qs, p.weight_scale, p.weight_zero,
                                       p.weight_code_sum, p.bias, p.spec.in_features, x.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])
