"""Fused DuQuant prologue in Triton: smooth → R1 → permute → R2 → per-token asymmetric codes.

    x' = ((x / smooth) · BlockDiag(R1)) [perm] · BlockDiag(R2)
    lo, hi = clip·min(x'), clip·max(x');  s = clamp((hi − lo)/(2^a − 1), 1e-5, 1e4)
    z = round(−lo/s);  q = clamp(round(x'/s) + z, 0, 2^a − 1);  Σq        (round: half-to-even)

Must match `duquant_serve.core.reference.prologue_ref` (tests/kernels/test_triton_prologue.py):
codes may differ only where summation order or operand precision moves x'/s across a rounding
boundary, by 1.

Structure (one program per tile of BLOCK_M tokens, persistent over tiles):
  phase 1  for each chunk of blocks: load x, divide by smooth, one tensor-core dot with R1 that
           treats (token, block) pairs as rows — [BLOCK_M·CHUNK, b] · [b, b] — then *scatter* the
           result through inv_perm into the program's own fp32 scratch rows. The scratch is sized
           by the number of programs, not by M (L2-sized for narrow inputs; at K=14336 and 16
           tokens per program, one program per SM already needs 121 MB: see docs/kernels.md).
  barrier  (the gather crosses blocks, so every chunk must be written before any is read)
  phase 2  per chunk: contiguous scratch load, dot with R2, running per-token min / max
  phase 3  per chunk: same load + dot again (one more dot instead of an L2 round trip of x',
           8 B per element; which is cheaper was not measured), quantize, store codes (int8),
           accumulate Σq.
R1/R2 dots and precision (benchmarks/kernels/prologue_precision.py emulates each on CPU):
  "tf32x3"  three TF32 passes ≈ fp32: ~1e-6 of codes differ from the reference (by 1)
  "tf32"    one pass, 3× cheaper: 5e-4 .. 2.5e-3 of codes differ, always by 1. Such a code sits
            within TF32 rounding of a .5 boundary, where either neighbour is an equally good
            quantization, so model quality does not move; only bit-exactness does.
  "bf16"    not offered: codes move by up to 2.
Default: tf32x3 up to 256 tokens (latency-bound, the extra passes are free), tf32 above, where
the prologue's 3·2·M·K·b tensor-core FLOPs start to rival the GEMM's (docs/kernels.md).
Override with DUQUANT_PROLOGUE_PRECISION=tf32x3|tf32|ieee.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _round_half_even(v, USE_LIBDEVICE: tl.constexpr):
    # libdevice.rint is one instruction on GPU but the interpreter lacks it; the 1.5·2^23 trick
    # rounds half-to-even for |v| < 2^22 (larger values only reach clamped code/zero ranges).
    if USE_LIBDEVICE:
        return libdevice.rint(v)
    else:
        r = (v + 12582912.0) - 12582912.0
        return tl.where(tl.abs(v) < 4194304.0, r, v)


@triton.jit
def _prologue_kernel(
    x_ptr, stride_xm,
    smooth_ptr, r1_ptr, r2_ptr, inv_perm_ptr,
    scratch_ptr,
    q_ptr, stride_qm,
    scale_ptr, zero_ptr, sum_ptr,
    M, C, clip_ratio,
    QMAX: tl.constexpr,
    B: tl.constexpr,
    NBLK: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    NS: tl.constexpr,
    HAS_SMOOTH: tl.constexpr,
    PRECISION: tl.constexpr,
    USE_LIBDEVICE: tl.constexpr,
):
    """Codes, scale, zero, Σq of x' = ((x/smooth)·BlockDiag(R1))[perm]·BlockDiag(R2) per token
    (formula in the module docstring). Must match core.reference.prologue_ref."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    ROWS: tl.constexpr = BLOCK_M * CHUNK
    ri = tl.arange(0, ROWS)
    tok = ri // CHUNK  # token of each dot row
    blk = ri % CHUNK  # block (within the chunk) of each dot row
    c = tl.arange(0, B)
    cs = tl.arange(0, NS)
    # R is used in column slices [B, NS] loaded inside the loops: a whole [B, B] fp32 tile held
    # across the loops pins B² floats in registers (B=128: 255 regs with spills and >227 KB of
    # shared memory for sm_90, seen with ptxas). Slices come from L1/L2 each time.
    # r1/r2 arrive transposed (Rᵀ row-major), so element (k, n) of R is at n·B + k: the [B, NS]
    # tile is K-contiguous, the operand order sm_90 wgmma needs for tf32 (else Triton falls back
    # to mma.sync with the whole operand replicated in every warp's registers).
    r_off = cs[None, :] * B + c[:, None]  # [B, NS] offsets of slice 0
    # This program's scratch rows: [BLOCK_M, C] fp32, reused for every tile it owns.
    scr = scratch_ptr + pid.to(tl.int64) * BLOCK_M * C
    num_tiles = tl.cdiv(M, BLOCK_M)
    for tile in range(pid, num_tiles, nprog):
        m = tile * BLOCK_M + tok  # [ROWS]
        m_ok = m < M
        # ---- phase 1: R1 per block, scatter through inv_perm --------------------------------
        for b0 in range(0, NBLK, CHUNK):
            ok_r = m_ok & ((b0 + blk) < NBLK)  # [ROWS]
            col = (b0 + blk)[:, None] * B + c[None, :]  # [ROWS, B]
            x = tl.load(x_ptr + m.to(tl.int64)[:, None] * stride_xm + col, mask=ok_r[:, None],
                        other=0.0)
            x = x.to(tl.float32)
            if HAS_SMOOTH:
                sm = tl.load(smooth_ptr + col, mask=ok_r[:, None], other=1.0)
                x = tl.math.div_rn(x, sm)
            for j in tl.static_range(B // NS):
                y = tl.dot(x, tl.load(r1_ptr + r_off + j * NS * B), input_precision=PRECISION)
                scol = (b0 + blk)[:, None] * B + (j * NS + cs)[None, :]  # [ROWS, NS]
                dest = tl.load(inv_perm_ptr + scol, mask=ok_r[:, None], other=0)
                tl.store(scr + tok[:, None] * C + dest, y, mask=ok_r[:, None])
        tl.debug_barrier()
        # ---- phase 2: R2 per block, per-token min / max --------------------------------------
        lo = tl.full([BLOCK_M], float("inf"), tl.float32)
        hi = tl.full([BLOCK_M], float("-inf"), tl.float32)
        for b0 in range(0, NBLK, CHUNK):
            ok_r = m_ok & ((b0 + blk) < NBLK)
            col = (b0 + blk)[:, None] * B + c[None, :]
            z = tl.load(scr + tok[:, None] * C + col, mask=ok_r[:, None], other=0.0,
                        cache_modifier=".cg")
            for j in tl.static_range(B // NS):
                w = tl.dot(z, tl.load(r2_ptr + r_off + j * NS * B), input_precision=PRECISION)
                wlo = tl.min(tl.where(ok_r[:, None], w, float("inf")), axis=1)  # [ROWS]
                whi = tl.max(tl.where(ok_r[:, None], w, float("-inf")), axis=1)
                lo = tl.minimum(lo, tl.min(tl.reshape(wlo, [BLOCK_M, CHUNK]), axis=1))
                hi = tl.maximum(hi, tl.max(tl.reshape(whi, [BLOCK_M, CHUNK]), axis=1))
        lo = lo * clip_ratio
        hi = hi * clip_ratio
        scale = tl.math.div_rn(hi - lo, QMAX * 1.0)
        scale = tl.minimum(tl.maximum(scale, 1e-5), 1e4)
        zero = _round_half_even(tl.math.div_rn(-lo, scale), USE_LIBDEVICE)
        zero = tl.minimum(tl.maximum(zero, -1e4), 1e4)
        # Broadcast per-token scale/zero to the dot rows.
        scale_r = tl.reshape(tl.broadcast_to(scale[:, None], [BLOCK_M, CHUNK]), [ROWS])
        zero_r = tl.reshape(tl.broadcast_to(zero[:, None], [BLOCK_M, CHUNK]), [ROWS])
        # ---- phase 3: recompute R2, quantize, store codes and Σq ----------------------------
        qsum = tl.zeros([BLOCK_M], tl.int32)
        for b0 in range(0, NBLK, CHUNK):
            ok_r = m_ok & ((b0 + blk) < NBLK)
            col = (b0 + blk)[:, None] * B + c[None, :]
            z = tl.load(scr + tok[:, None] * C + col, mask=ok_r[:, None], other=0.0,
                        cache_modifier=".cg")
            for j in tl.static_range(B // NS):
                w = tl.dot(z, tl.load(r2_ptr + r_off + j * NS * B), input_precision=PRECISION)
                q = _round_half_even(tl.math.div_rn(w, scale_r[:, None]), USE_LIBDEVICE)
                q = q + zero_r[:, None]
                q = tl.minimum(tl.maximum(q, 0.0), QMAX * 1.0)
                qi = tl.where(ok_r[:, None], q.to(tl.int32), 0)
                scol = (b0 + blk)[:, None] * B + (j * NS + cs)[None, :]
                tl.store(q_ptr + m.to(tl.int64)[:, None] * stride_qm + scol, qi.to(tl.int8),
                         mask=ok_r[:, None])
                qsum += tl.sum(tl.reshape(tl.sum(qi, axis=1), [BLOCK_M, CHUNK]), axis=1)
        tl.debug_barrier()  # phase 3 of this tile reads scratch that phase 1 of the next rewrites
        mt = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        mt_ok = mt < M
        tl.store(scale_ptr + mt, scale, mask=mt_ok)
        tl.store(zero_ptr + mt, zero, mask=mt_ok)
        tl.store(sum_ptr + mt, qsum, mask=mt_ok)


def _config(m: int, c: int, b: int) -> tuple[int, int, int]:
    """(BLOCK_M, CHUNK, num_warps). Dot rows BLOCK_M·CHUNK = 64 where possible: a warpgroup's
    wgmma M tile on sm_90 (Triton falls back to mma.sync below 64 rows; never below 16). One
    token per program at decode sizes, so M tokens spread over M programs."""
    nblk = c // b
    if m <= 16:
        block_m = 1
        chunk = max(16, min(64, triton.next_power_of_2(nblk)))
    else:
        block_m = 4 if m <= 256 else 16
        chunk = 64 // block_m
    return block_m, chunk, 4


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


_scratch_cache: dict[tuple[torch.device, int], torch.Tensor] = {}


def _scratch(device: torch.device, numel: int) -> torch.Tensor:
    # One reusable buffer per device (grown, never shrunk): no allocation per call, and its
    # contents never matter across calls (every element read is written first in the same call).
    key = (device, 0)
    buf = _scratch_cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=torch.float32, device=device)
        _scratch_cache[key] = buf
    return buf


def fused_prologue(
    x: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    inv_perm: torch.Tensor,
    smooth: torch.Tensor | None,
    a_bits: int,
    clip_ratio: float,
    precision: str | None = None,
    max_programs: int | None = None,
    ns: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, C] (bf16/fp16/fp32) → codes int8 [M, C], scale f32 [M], zero f32 [M], Σq i32 [M].

    inv_perm: int32 [C] with inv_perm[perm[i]] = i. Launcher of `_prologue_kernel`.
    """
    if x.dim() != 2:
        raise ValueError(f"fused_prologue expects [M, C], got {tuple(x.shape)}")
    m, c = x.shape
    b = r1.shape[0]
    if c % b or b & (b - 1) or b < 16:
        raise ValueError(f"block size {b} must be a power of two >= 16 dividing C={c}")
    if x.stride(1) != 1:
        x = x.contiguous()
    # The kernel indexes R row-major and perm/smooth densely (QR results are column-major).
    r1t, r2t = r1.float().t().contiguous(), r2.float().t().contiguous()
    inv_perm = inv_perm.to(torch.int32).contiguous()
    if smooth is not None:
        smooth = smooth.float().contiguous()
    if precision is None:
        precision = os.environ.get("DUQUANT_PROLOGUE_PRECISION") or (
            "ieee" if _INTERPRET else "tf32x3" if m <= 256 else "tf32")
    if precision not in ("tf32x3", "tf32", "ieee"):
        raise ValueError(f"prologue precision {precision!r} not in tf32x3, tf32, ieee")
    block_m, chunk, num_warps = _config(m, c, b)
    tiles = triton.cdiv(max(m, 1), block_m)
    if max_programs is None:
        if x.is_cuda:
            sms = _sm_count(x.device.index if x.device.index is not None else 0)
            # At least one program per SM; more only while the scratch stays ~16 MiB (L2 is 50 MB
            # on H100). Wide inputs exceed that at one per SM (docs/kernels.md).
            cap = max(sms, (16 << 20) // (block_m * c * 4))
            max_programs = min(cap, 8 * sms)
        else:
            max_programs = 4
    nprog = max(1, min(tiles, max_programs))
    codes = torch.empty((m, c), dtype=torch.int8, device=x.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    zero = torch.empty((m,), dtype=torch.float32, device=x.device)
    qsum = torch.empty((m,), dtype=torch.int32, device=x.device)
    if m == 0:
        return codes, scale, zero, qsum
    scratch = _scratch(x.device, nprog * block_m * c)
    smooth_arg = smooth if smooth is not None else r1  # never read when HAS_SMOOTH is False
    _prologue_kernel[(nprog,)](
        x, x.stride(0), smooth_arg, r1t, r2t, inv_perm, scratch,
        codes, codes.stride(0), scale, zero, qsum,
        m, c, float(clip_ratio),
        QMAX=(1 << a_bits) - 1, B=b, NBLK=c // b, CHUNK=chunk, BLOCK_M=block_m, NS=min(b, ns),
        HAS_SMOOTH=smooth is not None, PRECISION=precision,
        USE_LIBDEVICE=not _INTERPRET, num_warps=num_warps,
        num_stages=1,  # the loops are short and dependent; deeper pipelines only cost smem
    )
    return codes, scale, zero, qsum
