"""`torch.library` custom ops of duquant (namespace `duquant`), each with its fake right below.

Every op's body *is* `duquant_serve.core.reference` (so CI and `torch.library.opcheck` work
with neither Triton nor the CUDA extension) and, where a fast path exists, a CUDA implementation
imports Triton / the extension lazily on first call. One op also has a CPU kernel of its own:
`epilogue`, fp32 in place like its CUDA one (tests hold it to the reference within rounding).

The CPU bodies of `prologue` and `epilogue` are also plain functions (`prologue_torch`,
`epilogue_fp32`): CPU serving's `cpu_int8` kernel calls them directly instead of through the
ops, so that vLLM's torch.compile (inductor on CPU) fuses their ~25 small elementwise and
reduction ops (an op boundary is opaque to inductor: behind it they run one by one, after a
Python dispatch of 7–11 µs here).
Fakes only allocate outputs: the operators check their inputs themselves.

Layouts (K = in_features, N = out_features, M = tokens):
    codes      int8 [M, K]     activation codes 0..2^a_bits-1 (int8 so int8 tensor cores take
                               them as is; values never exceed 15 for 4 bits)
    qweight    uint8 [N, K/2]  checkpoint layout (core/pack.py): byte j = code 2j | code 2j+1 << 4
    qweight_g  uint8 [N, K/2]  "grouped" layout (kernels/layout.py): in each 64-code group byte j
                               holds code j (low nibble) and code 32+j (high nibble)
    qweight_s4 uint8 [N, K/2]  checkpoint order, signed nibbles q − 8 (layout.to_signed_int4)
"""

from __future__ import annotations

import torch

from ..core.epilogue import rank2_rhs
from ..core.pack import unpack_int4
from ..core.quant import quantize_per_token, quantize_with_qparams
from ..core.reference import (
    epilogue_ref,
    gemm_epilogue_groups_ref,
    gemm_epilogue_ref,
    prologue_groups_ref,
    prologue_ref,
)
from ..core.transform import InputTransform
from .layout import unpack_int4_grouped, unpack_signed_int4

# ---------------------------------------------------------------------------------------------
# prologue: x → transform → per-token asymmetric codes
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("duquant::prologue", mutates_args=())
def prologue(
    x: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    perm: torch.Tensor,
    inv_perm: torch.Tensor,
    smooth: torch.Tensor | None,
    a_bits: int,
    clip_ratio: float,
    precision: str = "",
    phase3: str = "recompute",
    decode: str = "tiled",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] → (codes int8 [M, K], scale f32 [M], zero f32 [M], code_sum i32 [M]).

    Matches `core.reference.prologue_ref` (CPU: it is that function). `perm` is the reference
    gather order, `inv_perm` its inverse (int32), which the fused kernel scatters with.
    precision / phase3 / decode: the fused kernel's variant (knobs.py; "" precision: by M).
    """
    return prologue_torch(x, r1, r2, perm, smooth, a_bits, clip_ratio)


def prologue_torch(
    x: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    perm: torch.Tensor,
    smooth: torch.Tensor | None,
    a_bits: int,
    clip_ratio: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`prologue` in plain torch ops: `core.reference.prologue_ref`, codes as int8."""
    q, s, z, qs = prologue_ref(x, InputTransform(r1, perm, r2, smooth), a_bits, clip_ratio)
    return q.to(torch.int8), s, z, qs


def prologue_groups_torch(
    x: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    perm: torch.Tensor,
    smooth: torch.Tensor | None,
    a_bits: int,
    clip_ratio: float,
    groups: int,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """`core.reference.prologue_groups_ref` in plain torch ops: each group's codes int8
    [M, K/G] (its GEMM operand), scale / zero f32 and code_sum i32 [M, G].

    Each group's codes are computed from its own slice rather than sliced out of one [M, K]
    code tensor: under inductor (torch 2.13, CPU) `_int_mm` on a view of a larger buffer gave
    wrong sums at M = 1, while a buffer of its own is right at every M."""
    m, k = x.shape
    kg = k // groups
    xt = InputTransform(r1, perm, r2, smooth).apply(x.float())
    _, scale, zero = quantize_per_token(xt.reshape(m, groups, kg), a_bits, clip_ratio,
                                        check_finite=False)
    codes = [quantize_with_qparams(xt[:, i * kg:(i + 1) * kg], scale[:, i:i + 1],
                                   zero[:, i:i + 1], a_bits) for i in range(groups)]
    code_sum = torch.stack([c.sum(dim=-1, dtype=torch.int32) for c in codes], dim=-1)
    return [c.to(torch.int8) for c in codes], scale, zero, code_sum


@prologue.register_fake
def _(x, r1, r2, perm, inv_perm, smooth, a_bits, clip_ratio, precision="", phase3="recompute",
      decode="tiled"):
    m, k = x.shape
    return (
        x.new_empty((m, k), dtype=torch.int8),
        x.new_empty((m,), dtype=torch.float32),
        x.new_empty((m,), dtype=torch.float32),
        x.new_empty((m,), dtype=torch.int32),
    )


@prologue.register_kernel("cuda")
def _(x, r1, r2, perm, inv_perm, smooth, a_bits, clip_ratio, precision="", phase3="recompute",
      decode="tiled"):
    from .triton_prologue import fused_prologue

    return fused_prologue(x, r1, r2, inv_perm, smooth, a_bits, clip_ratio,
                          precision=precision or None, phase3=phase3, perm=perm, decode=decode)


# ---------------------------------------------------------------------------------------------
# w4a4_gemm: codes × grouped-packed weight codes → scale/zero-point epilogue (Triton)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("duquant::w4a4_gemm", mutates_args=())
def w4a4_gemm(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    code_sum: torch.Tensor,
    qweight_g: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero: torch.Tensor,
    weight_code_sum: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    split_k: bool = True,
    tuned_configs: str = "",
) -> torch.Tensor:
    """y [M, N] = sx·sw·(acc − zw·Σqx − zx·Σqw + K·zx·zw) + bias, acc = codes · unpack(qweight_g)ᵀ.

    Matches `core.reference.gemm_epilogue_ref`; qweight_g is in the grouped layout.
    split_k / tuned_configs: the Triton GEMM's switches (knobs.py).
    """
    qw = unpack_int4_grouped(qweight_g)
    return gemm_epilogue_ref(
        codes.to(torch.uint8), scale, zero, code_sum, qw, weight_scale, weight_zero,
        weight_code_sum, bias, out_dtype,
    )


@w4a4_gemm.register_fake
def _(codes, scale, zero, code_sum, qweight_g, weight_scale, weight_zero, weight_code_sum, bias,
      out_dtype, split_k=True, tuned_configs=""):
    return codes.new_empty((codes.shape[0], qweight_g.shape[0]), dtype=out_dtype)


@w4a4_gemm.register_kernel("cuda")
def _(codes, scale, zero, code_sum, qweight_g, weight_scale, weight_zero, weight_code_sum, bias,
      out_dtype, split_k=True, tuned_configs=""):
    from .triton_gemm import w4a4_gemm_triton

    return w4a4_gemm_triton(codes, scale, zero, code_sum, qweight_g, weight_scale, weight_zero,
                            weight_code_sum, bias, out_dtype, split_k=split_k,
                            tuned_configs=tuned_configs)


# ---------------------------------------------------------------------------------------------
# Activation groups: per-(token, group) prologue, block-scaled GEMM
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("duquant::prologue_groups", mutates_args=())
def prologue_groups(
    x: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    perm: torch.Tensor,
    smooth: torch.Tensor | None,
    a_bits: int,
    clip_ratio: float,
    groups: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] → (codes int8 [M, K], scale f32 [M, G], zero f32 [M, G], code_sum i32 [M, G]):
    `core.reference.prologue_groups_ref` on any device (torch ops; no fused kernel yet)."""
    q, s, z, qs = prologue_groups_ref(x, InputTransform(r1, perm, r2, smooth), a_bits,
                                      clip_ratio, groups)
    return q.to(torch.int8), s, z, qs


@prologue_groups.register_fake
def _(x, r1, r2, perm, smooth, a_bits, clip_ratio, groups):
    m, k = x.shape
    return (x.new_empty((m, k), dtype=torch.int8),
            x.new_empty((m, groups), dtype=torch.float32),
            x.new_empty((m, groups), dtype=torch.float32),
            x.new_empty((m, groups), dtype=torch.int32))


@torch.library.custom_op("duquant::w4a4_gemm_groups", mutates_args=())
def w4a4_gemm_groups(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    code_sum: torch.Tensor,
    qweight_g: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero: torch.Tensor,
    group_code_sum: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    tuned_configs: str = "",
) -> torch.Tensor:
    """Block-scaled W4A4 GEMM: per-(token, group) scale / zero / code_sum [M, G], grouped-layout
    weights, group_code_sum [G, N] → y [M, N] (core.reference.gemm_epilogue_groups_ref; CUDA:
    triton_gemm.w4a4_gemm_groups_triton)."""
    return gemm_epilogue_groups_ref(codes.to(torch.uint8), scale, zero, code_sum,
                                    unpack_int4_grouped(qweight_g), weight_scale, weight_zero,
                                    bias, out_dtype)


@w4a4_gemm_groups.register_fake
def _(codes, scale, zero, code_sum, qweight_g, weight_scale, weight_zero, group_code_sum, bias,
      out_dtype, tuned_configs=""):
    return codes.new_empty((codes.shape[0], qweight_g.shape[0]), dtype=out_dtype)


@w4a4_gemm_groups.register_kernel("cuda")
def _(codes, scale, zero, code_sum, qweight_g, weight_scale, weight_zero, group_code_sum, bias,
      out_dtype, tuned_configs=""):
    from .triton_gemm import w4a4_gemm_groups_triton

    return w4a4_gemm_groups_triton(codes, scale, zero, code_sum, qweight_g, weight_scale,
                                   weight_zero, group_code_sum, bias, out_dtype,
                                   tuned_configs=tuned_configs)


# ---------------------------------------------------------------------------------------------
# epilogue alone: int32 accumulator (from CUTLASS) → y
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("duquant::epilogue", mutates_args=())
def epilogue(
    acc: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    code_sum: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero: torch.Tensor,
    weight_code_sum: torch.Tensor,
    bias: torch.Tensor | None,
    k: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """acc int32 [M, N] → sx·sw·(acc − zw·Σqx − zx·Σqw + k·zx·zw) + bias (docs/epilogue.md)."""
    return epilogue_ref(acc, scale, zero, code_sum, weight_scale, weight_zero, weight_code_sum,
                        bias, k, out_dtype)


@epilogue.register_fake
def _(acc, scale, zero, code_sum, weight_scale, weight_zero, weight_code_sum, bias, k, out_dtype):
    return acc.new_empty(acc.shape, dtype=out_dtype)


@epilogue.register_kernel("cpu")
def _(acc, scale, zero, code_sum, weight_scale, weight_zero, weight_code_sum, bias, k, out_dtype):
    return epilogue_fp32(acc, scale, zero, code_sum, weight_scale,
                         epilogue_rhs(weight_zero, weight_code_sum, k), bias, out_dtype)


def epilogue_rhs(weight_zero: torch.Tensor, weight_code_sum: torch.Tensor, k: int) -> torch.Tensor:
    """[2, N] fp32 [zw; Σqw − k·zw] (core.epilogue.rank2_rhs): the weight side of the
    epilogue's rank-2 update, a constant of the layer (cpu_int8 keeps it from prepare).
    Integers, exact below 2^24."""
    return rank2_rhs(weight_zero, weight_code_sum, k, torch.float32)


def epilogue_fp32(
    acc: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    code_sum: torch.Tensor,
    weight_scale: torch.Tensor,
    rhs: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """`epilogue` in fp32 plain torch ops, `rhs` = `epilogue_rhs(...)`.

    fp32, like the CUDA kernel, in place on one [M, N] buffer: float64 temporaries of the
    reference's size made the CPU int8 linear slower than the 16-bit one (allocation and
    conversion passes dominated). The bracket acc − Σqx·zw − zx·(Σqw − k·zw) is a rank-2
    update, exact while its integers stay below 2^24 (docs/epilogue.md "Exactness"); then two
    roundings by the scales (relative error ~1e-7; the reference rounds once). Two addcmuls,
    not an addmm of [M, 2]·[2, N]: under inductor they fuse with the scaling into one loop (an
    addmm is an extern call between loops). Inductor makes each an fma, which changes nothing
    here: every product and sum is an integer below 2^24, so exact either way."""
    y = acc.float()
    y.addcmul_(code_sum.float().unsqueeze(1), rhs[0], value=-1)
    y.addcmul_(zero.float().unsqueeze(1), rhs[1], value=-1)
    y.mul_(scale.float().unsqueeze(1)).mul_(weight_scale.float().unsqueeze(0))
    if bias is not None:
        y.add_(bias.float().unsqueeze(0))
    return y.to(out_dtype)


def epilogue_groups_rhs(weight_zero: torch.Tensor, group_code_sum: torch.Tensor,
                        group_width: int) -> torch.Tensor:
    """[G, 2, N] fp32: `epilogue_rhs` of each activation group (its Σqw and width)."""
    return torch.stack([epilogue_rhs(weight_zero, cs, group_width) for cs in group_code_sum])


def epilogue_groups_fp32(
    accs: list[torch.Tensor],
    scale: torch.Tensor,
    zero: torch.Tensor,
    code_sum: torch.Tensor,
    weight_scale: torch.Tensor,
    rhs: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Block-scaled `epilogue_fp32`: accs, one int32 [M, N] per activation group (its GEMM),
    scale / zero / code_sum [M, G], rhs = `epilogue_groups_rhs` [G, 2, N] →
    sw·Σ_g sx_g·bracket_g + bias (core.reference.gemm_epilogue_groups_ref). Each bracket is
    an exact integer in fp32 as without groups; the groups are added in fp32, in order, and
    rounded once. A chain of [M, N] terms, not a reduction over a stacked [G, M, N]: inductor
    fuses the chain into one loop vectorized along N reading the G accumulators (the stacked
    reduction was slower: 5.0 vs 3.6 ms for qkv at 512 tokens, 28.8 vs 24.7 for gate_up).
    float64 here, the reference's precision, made the compiled linears 1.5-2x slower at 512
    tokens (gate_up 42.7 vs ~22 ms) and did not change the one served-vs-reference departure
    it was tried on (tests/server/test_multinode.py)."""
    y = None
    for g, acc in enumerate(accs):
        bracket = (acc.float() - code_sum[:, g:g + 1].float() * rhs[g, 0]
                   - zero[:, g:g + 1].float() * rhs[g, 1])
        term = scale[:, g:g + 1].float() * bracket
        y = term if y is None else y + term
    y = y * weight_scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


@epilogue.register_kernel("cuda")
def _(acc, scale, zero, code_sum, weight_scale, weight_zero, weight_code_sum, bias, k, out_dtype):
    from .triton_gemm import epilogue_triton

    return epilogue_triton(acc, scale, zero, code_sum, weight_scale, weight_zero,
                           weight_code_sum, bias, k, out_dtype)


# ---------------------------------------------------------------------------------------------
# CUTLASS integer GEMMs (cutlass_ext/): int32 out, epilogue separate
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("duquant::gemm_s8_sm90", mutates_args=())
def gemm_s8_sm90(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a int8 [M, K] · b int8 [N, K]ᵀ → int32 [M, N] (CUTLASS 3.x wgmma on sm_90a).

    CPU: float64 matmul of the small integer codes, exact for K·127² < 2^53.
    """
    return (a.double() @ b.double().t()).to(torch.int32)


@gemm_s8_sm90.register_fake
def _(a, b):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


@gemm_s8_sm90.register_kernel("cuda")
def _(a, b):
    from .cutlass import gemm_s8_sm90_cuda

    return gemm_s8_sm90_cuda(a, b)


@torch.library.custom_op("duquant::w4a4_gemm_sm90", mutates_args=())
def w4a4_gemm_sm90(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    code_sum: torch.Tensor,
    qweight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    packed: bool,
) -> torch.Tensor:
    """Fused CUTLASS sm_90a GEMM + EVT epilogue: y = sx·(u·acc − (v·Σqx + w·zx)) + bias
    (docs/epilogue.md), u, v, w fp32 [N] built at load. Weights: packed=True, qweight_s4 (signed
    nibbles q − 8, w4a4_sm90_packed.cu) with v = sw·(zw − 8); packed=False, int8 codes [N, K]
    (w4a4_sm90_evt.cu) with v = sw·zw; u = sw and w = sw·(Σqw − K·zw) either way.

    CPU: the kernel's arithmetic (its weight values, its v) in float64 on an exact accumulator;
    tests hold it to `core.reference.gemm_epilogue_ref`.
    """
    wq = unpack_signed_int4(qweight) if packed else qweight
    acc = codes.double() @ wq.double().t()
    y = scale.double()[:, None] * (
        u.double()[None, :] * acc
        - (v.double()[None, :] * code_sum.double()[:, None]
           + w.double()[None, :] * zero.double()[:, None]))
    if bias is not None:
        y = y + bias.double()[None, :]
    return y.to(out_dtype)


@w4a4_gemm_sm90.register_fake
def _(codes, scale, zero, code_sum, qweight, u, v, w, bias, out_dtype, packed):
    return codes.new_empty((codes.shape[0], qweight.shape[0]), dtype=out_dtype)


@w4a4_gemm_sm90.register_kernel("cuda")
def _(codes, scale, zero, code_sum, qweight, u, v, w, bias, out_dtype, packed):
    from .cutlass import w4a4_gemm_sm90_cuda

    return w4a4_gemm_sm90_cuda(codes, scale, zero, code_sum, qweight, u, v, w, bias, out_dtype,
                               packed)


@torch.library.custom_op("duquant::gemm_u4_sm80", mutates_args=())
def gemm_u4_sm80(a_packed: torch.Tensor, b_packed: torch.Tensor) -> torch.Tensor:
    """a uint8 [M, K/2] · b uint8 [N, K/2]ᵀ, both checkpoint-packed 4-bit → int32 [M, N]."""
    a = unpack_int4(a_packed).double()
    b = unpack_int4(b_packed).double()
    return (a @ b.t()).to(torch.int32)


@gemm_u4_sm80.register_fake
def _(a_packed, b_packed):
    return a_packed.new_empty((a_packed.shape[0], b_packed.shape[0]), dtype=torch.int32)


@gemm_u4_sm80.register_kernel("cuda")
def _(a_packed, b_packed):
    from .cutlass import gemm_u4_sm80_cuda

    return gemm_u4_sm80_cuda(a_packed, b_packed)


# ---------------------------------------------------------------------------------------------
# The whole reference linear as one op (the torch_ref kernel; any device)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("duquant::linear_ref", mutates_args=())
def linear_ref(
    x: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    perm: torch.Tensor,
    smooth: torch.Tensor | None,
    weight_codes: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero: torch.Tensor,
    weight_code_sum: torch.Tensor,
    bias: torch.Tensor | None,
    a_bits: int,
    clip_ratio: float,
    groups: int = 1,
) -> torch.Tensor:
    """x [M, K] → y [M, N] in x's dtype: `prologue_ref` then `gemm_epilogue_ref` (exact);
    with `groups` activation groups, their block-scaled forms.

    weight_codes: uint8 [N, K], unpacked once by the kernel's prepare (not per call)."""
    t = InputTransform(r1, perm, r2, smooth)
    if groups > 1:
        qx, sx, zx, sqx = prologue_groups_ref(x, t, a_bits, clip_ratio, groups)
        return gemm_epilogue_groups_ref(qx, sx, zx, sqx, weight_codes, weight_scale, weight_zero,
                                        bias, x.dtype)
    qx, sx, zx, sqx = prologue_ref(x, t, a_bits, clip_ratio)
    return gemm_epilogue_ref(qx, sx, zx, sqx, weight_codes, weight_scale, weight_zero, weight_code_sum,
                             bias, x.dtype)


@linear_ref.register_fake
def _(x, r1, r2, perm, smooth, weight_codes, weight_scale, weight_zero, weight_code_sum, bias,
      a_bits, clip_ratio, groups=1):
    return x.new_empty((x.shape[0], weight_codes.shape[0]))


# ---------------------------------------------------------------------------------------------
# pack_codes: int8 activation codes → checkpoint-packed 4-bit (operand A of the sm_80 GEMM)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("duquant::pack_codes", mutates_args=())
def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """codes int8 [M, K] in 0..15 → uint8 [M, K/2], the core/pack.py layout (low nibble = even
    k). Same bytes as `core.pack.pack_int4`, without its value check (a host sync per call)."""
    c = codes.view(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


@pack_codes.register_fake
def _(codes):
    return codes.new_empty((codes.shape[0], codes.shape[1] // 2), dtype=torch.uint8)
