"""The CPU serving kernels: reference prologue, an exact integer GEMM on the codes, fp32
epilogue. `cpu_int8` runs the GEMM as `torch._int_mm`; `cpu_fp32_gemm`, for CPUs where that
has no fast path, as an fp32 GEMM on the same codes, which returns the same integers."""

from __future__ import annotations

import dataclasses
import functools
import time

import torch

from ..core.pack import unpack_int4
from . import ops
from .base import LayerSpec, LinearKernel, PreparedLinear, rotations_row_major


@functools.cache
def int_mm_cpu_missing() -> str | None:
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


# A product of two 4-bit codes is at most 15·15, so every partial sum of a K-long dot product
# is an integer ≤ K·225: below 2^24 float32 holds each one exactly, and an fp32 GEMM on the
# codes returns torch._int_mm's int32 values whatever its summation order.
FP32_EXACT_MAX_K = (2**24 - 1) // (15 * 15)

# torch._int_mm counts as slow where it takes this many times an fp32 GEMM's time.
INT_MM_SLOW_RATIO = 4.0


def _best_seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up: oneDNN builds its kernel on the first call
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@functools.cache
def int_mm_cpu_slow() -> str | None:
    """Why `torch._int_mm` should not serve on this CPU although it runs, or None: timed once
    per process against an fp32 GEMM of the same shape (64 × 512 × 512). On a CPU with AVX2
    only (no AVX-512 VNNI / AMX) this torch build's int8 GEMM measured 1.4 GOP/s against 92
    for fp32 (one thread, 2048 × 576 × 1536): a scalar loop."""
    g = torch.Generator().manual_seed(0)  # not the global RNG: serving may depend on it
    a = torch.randint(0, 16, (64, 512), dtype=torch.int8, generator=g)
    w = torch.randint(0, 16, (512, 512), dtype=torch.int8, generator=g)
    af, wf = a.float(), w.float()
    t_int = _best_seconds(lambda: torch._int_mm(a, w))
    t_f32 = _best_seconds(lambda: af @ wf)
    if t_int > INT_MM_SLOW_RATIO * t_f32:
        return (f"torch._int_mm is {t_int / t_f32:.0f}x slower than an fp32 GEMM on this CPU "
                f"({t_int * 1e3:.2f} vs {t_f32 * 1e3:.2f} ms at 64x512x512: no native int8 "
                "path); cpu_fp32_gemm computes the same integers faster (DUQUANT_KERNEL="
                "cpu_int8 still forces it: 4x less weight memory)")
    return None


def _cpu_w4a4_refusal(spec: LayerSpec) -> str | None:
    """Why a CPU kernel on 4-bit codes cannot run `spec`, or None."""
    if spec.device_type != "cpu":
        return f"CPU only, layer is on {spec.device_type!r}"
    if spec.w_bits != 4 or spec.a_bits != 4:
        return f"only W4A4 (got W{spec.w_bits}A{spec.a_bits})"
    if spec.in_features % 2:
        return f"in_features {spec.in_features} is odd (4-bit packing)"
    return None


class CpuInt8Kernel(LinearKernel):
    """CPU serving: the reference prologue (the same codes as torch_ref), an int8 GEMM on the
    codes (`torch._int_mm`: oneDNN, VNNI/AMX where the CPU has them; exact int32) and the fp32
    epilogue (ops.py), within an output ulp of torch_ref. Weights are held unpacked, int8
    [N, K] (twice the packed bytes), so nothing is converted per call.

    `apply` calls the ops' plain torch bodies (`ops.prologue_torch`, `ops.epilogue_fp32`), not
    the ops: under vLLM's torch.compile, inductor then fuses the smoothing, gather, min/max,
    quantization and epilogue arithmetic around the three GEMMs into a few C++ loops; behind an
    op boundary those ~25 small ops ran one by one. They sit in a nested compile region
    (`_linear`), compiled once and reused by every layer (docs/kernels.md). Same functions, so
    the same codes and outputs (checked compiled and eager).
    benchmarks/kernels/bench_cpu_linear.py times it against the 16-bit linear.

    Activation groups (spec.act_groups = G > 1): one prologue with per-(token, group) ranges,
    one int8 GEMM per group on [G, N, K/G] weights, and one block-scaled epilogue summing the
    groups in fp32 (`_linear_groups`, `ops.epilogue_groups_fp32`)."""

    name = "cpu_int8"
    native_act_groups = True

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        why = _cpu_w4a4_refusal(spec)
        if why is None and spec.in_features * 15 * 15 >= 2**31:
            why = f"in_features {spec.in_features} could overflow the int32 accumulator"
        why = why or int_mm_cpu_missing()
        return why is None, why

    @classmethod
    def declines(cls, spec: LayerSpec) -> str | None:
        return int_mm_cpu_slow()

    @classmethod
    def weight_layout(cls, qweight: torch.Tensor) -> torch.Tensor:
        return unpack_int4(qweight).to(torch.int8)  # 0..15: int8 holds them as they are

    @classmethod
    def finish_prepare(cls, p: PreparedLinear) -> PreparedLinear:
        p = rotations_row_major(p)
        g = p.spec.act_groups
        if g == 1:
            return dataclasses.replace(p, epilogue_rhs=ops.epilogue_rhs(
                p.weight_zero, p.weight_code_sum, p.spec.in_features))
        n = p.spec.out_features
        # [G, N, K/G]: each group's GEMM operand contiguous.
        return dataclasses.replace(
            p, qweight=p.qweight.reshape(n, g, -1).transpose(0, 1).contiguous(),
            epilogue_rhs=ops.epilogue_groups_rhs(p.weight_zero, p.group_code_sum,
                                                 p.spec.group_width))

    @classmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if p.spec.act_groups > 1:
            y = _linear_groups(x2, p.r1, p.r2, p.perm, p.smooth, p.qweight, p.weight_scale,
                               p.epilogue_rhs, p.bias, p.spec.a_bits, p.act_clip_ratio)
        else:
            y = _linear(x2, p.r1, p.r2, p.perm, p.smooth, p.qweight, p.weight_scale,
                        p.epilogue_rhs, p.bias, p.spec.a_bits, p.act_clip_ratio)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class CpuFp32GemmKernel(CpuInt8Kernel):
    """`cpu_int8` with its integer GEMM computed as an fp32 GEMM on the codes, for CPUs where
    `torch._int_mm` has no fast path (`int_mm_cpu_slow`). Exact: every partial sum is an
    integer below 2^24 (FP32_EXACT_MAX_K), so the accumulator holds the very int32 values
    `_int_mm` returns and the outputs are cpu_int8's bit for bit. The weights are held as
    fp32 codes [N, K] ([G, N, K/G] with groups): 4 bytes per weight, 4× cpu_int8's int8
    codes and 8× the packed checkpoint, the price of running at the CPU's fp32 GEMM speed."""

    name = "cpu_fp32_gemm"

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        why = _cpu_w4a4_refusal(spec)
        if why is None and spec.in_features > FP32_EXACT_MAX_K:
            why = (f"in_features {spec.in_features} > {FP32_EXACT_MAX_K}: fp32 partial sums of "
                   "the code products would no longer be exact")
        return why is None, why

    @classmethod
    def declines(cls, spec: LayerSpec) -> str | None:
        return None  # the kernel cpu_int8 declines in favour of

    @classmethod
    def weight_layout(cls, qweight: torch.Tensor) -> torch.Tensor:
        return unpack_int4(qweight).float()


def _codes_mm(codes: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """codes int8 [M, K] · weight [N, K]ᵀ, exact: int32 from `torch._int_mm` for int8 weights
    (cpu_int8; [N, K] row-major read as [K, N], no copy), the same integers in fp32 for fp32
    weights (cpu_fp32_gemm)."""
    if weight.dtype == torch.int8:
        return torch._int_mm(codes, weight.t())
    return codes.float() @ weight.t()


# A nested compile region: under torch.compile, the ~50 traced ops of a linear are compiled
# once per distinct signature (a handful per model: shapes, smoothing or not) and reused by
# every layer, instead of inductor lowering all 120 linears of SmolLM2 one by one. Inside the
# region inductor still fuses them into a few C++ loops. Eager: a plain call.
@torch.compiler.nested_compile_region
def _linear(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, perm: torch.Tensor,
            smooth: torch.Tensor | None, qweight: torch.Tensor, weight_scale: torch.Tensor,
            epilogue_rhs: torch.Tensor, bias: torch.Tensor | None, a_bits: int,
            clip_ratio: float) -> torch.Tensor:
    codes, scale, zero, code_sum = ops.prologue_torch(x, r1, r2, perm, smooth, a_bits, clip_ratio)
    acc = _codes_mm(codes, qweight)
    return ops.epilogue_fp32(acc, scale, zero, code_sum, weight_scale, epilogue_rhs, bias,
                             x.dtype)


@torch.compiler.nested_compile_region
def _linear_groups(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, perm: torch.Tensor,
                   smooth: torch.Tensor | None, qweight: torch.Tensor,
                   weight_scale: torch.Tensor, epilogue_rhs: torch.Tensor,
                   bias: torch.Tensor | None, a_bits: int, clip_ratio: float) -> torch.Tensor:
    """`_linear` with activation groups: qweight [G, N, K/G], epilogue_rhs [G, 2, N]."""
    codes, scale, zero, code_sum = ops.prologue_groups_torch(
        x, r1, r2, perm, smooth, a_bits, clip_ratio, qweight.shape[0])
    accs = [_codes_mm(c, qweight[g]) for g, c in enumerate(codes)]
    return ops.epilogue_groups_fp32(accs, scale, zero, code_sum, weight_scale, epilogue_rhs, bias,
                                    x.dtype)
