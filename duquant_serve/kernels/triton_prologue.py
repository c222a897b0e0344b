"""Fused DuQuant prologue in Triton: smooth → R1 → permute → R2 → per-token asymmetric codes.

    x' = ((x / smooth) · BlockDiag(R1)) [perm] · BlockDiag(R2)
    lo, hi = clip·min(x'), clip·max(x');  s = clamp((hi − lo)/(2^a − 1), 1e-5, 1e4)
    z = round(−lo/s);  q = clamp(round(x'/s) + z, 0, 2^a − 1);  Σq        (round: half-to-even)

Must match `duquant_serve.core.reference.prologue_ref` (tests/kernels/test_triton_prologue.py):
codes may differ only where summation order or operand precision moves x'/s across a rounding
boundary, by 1.

Structure (one program per tile of BLOCK_M tokens — 1, 2 or 4, as many as keep every SM busy:
`_config` — persistent over tiles):
  phase 1  for each chunk of blocks: x / smooth times R1 on the tensor cores, treating (token,
           block) pairs as rows — [BLOCK_M·CHUNK, b] · [b, b], computed NS output columns at a
           time, each as a loop over K slices of KC (so only [rows, KC] and [KC, NS] operands
           are live: ≤ 40 B of spill, 8–32 KB of shared memory) — then *scatter* the result through
           inv_perm into the program's own fp32 scratch rows. The scratch is sized by the
           number of programs, not by M (one program per SM at K = 14336: 132·4·14336·4 B =
           30 MB, inside H100's 50 MB L2).
  barrier  (the gather crosses blocks, so every chunk must be written before any is read)
  phase 2  per chunk: contiguous scratch load, dot with R2, running per-token min / max
  phase 3  per chunk: the same load and dot again ("recompute", the default), quantize, store
           codes (int8), accumulate Σq.
  "reload" (DUQUANT_PROLOGUE_PHASE3) has phase 2 write its result back over its input in the
  scratch (after a barrier: [ROWS, b] at once, not NS columns) and phase 3 load it: one dot
  with R2 per element (2·b tensor-core FLOPs, 3× in tf32x3; a third of the prologue's) traded
  for one 4-byte store to L2-resident scratch (phase 3 loads the same bytes either way), at the
  cost of a [ROWS, b] accumulator. Which is faster depends on whether the prologue is bound by
  tensor cores or by L2 and was not measured: the GPU session times both
  (benchmarks/gpu_session.py). Spills (ptxas, per thread, sm_80/89/90, Triton 3.9 and 3.6):
  at most 40 B in any variant (docs/kernels.md).
R1/R2 dots and precision (benchmarks/kernels/prologue_precision.py emulates each on CPU):
  "tf32x3"  three TF32 passes ≈ fp32: ~1e-6 of codes differ from the reference (by 1)
  "tf32"    one pass, 3× cheaper: 5e-4 .. 2.5e-3 of codes differ, always by 1. Such a code sits
            within TF32 rounding of a .5 boundary, where either neighbour is an equally good
            quantization, so model quality does not move; only bit-exactness does.
  "fp16"    one pass on fp16 operands, each (token, block) row first divided by a power of two
            just above its max |value| (exact; undone after the dot): the same 11-bit
            significands as TF32, hence the same code differences in emulation, at twice the
            TF32 tensor-core rate (H100: 989 vs 495 dense TFLOP/s). Costs one more read of each
            row block (its max) per dot phase. Untimed: the GPU session times it beside tf32.
  "bf16"    not offered: codes move by up to 2.
Default: tf32x3 up to 256 tokens (latency-bound, the extra passes are free), tf32 above, where
the prologue's 3·2·M·K·b tensor-core FLOPs (2·2·M·K·b with "reload") start to rival the
GEMM's (docs/kernels.md).
Override with DUQUANT_PROLOGUE_PRECISION=tf32x3|tf32|fp16|ieee.

Opt-in for decode (DUQUANT_PROLOGUE_DECODE=split, ≤ SPLIT_MAX_M tokens): `_prologue_split_kernel`,
one program per (token, output block) in fp32 on the CUDA cores, the token's last program
quantizing its row (docs/kernels.md; untimed, so not the default).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from duquant_serve.kernels import device_state

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
def _scale_zero(lo, hi, clip_ratio, QMAX: tl.constexpr, USE_LIBDEVICE: tl.constexpr):
    """Per-token scale and zero point from the running min / max (module docstring)."""
    lo = lo * clip_ratio
    hi = hi * clip_ratio
    scale = tl.math.div_rn(hi - lo, QMAX * 1.0)
    scale = tl.minimum(tl.maximum(scale, 1e-5), 1e4)
    zero = _round_half_even(tl.math.div_rn(-lo, scale), USE_LIBDEVICE)
    zero = tl.minimum(tl.maximum(zero, -1e4), 1e4)
    return scale, zero


@triton.jit
def _codes(w, scale, zero, QMAX: tl.constexpr, USE_LIBDEVICE: tl.constexpr):
    """clamp(round(w / scale) + zero, 0, QMAX) as int32."""
    q = _round_half_even(tl.math.div_rn(w, scale), USE_LIBDEVICE) + zero
    return tl.minimum(tl.maximum(q, 0.0), QMAX * 1.0).to(tl.int32)


@triton.jit
def _load_slice(src, src_ok, k_base, smooth_ptr, k0, HAS_SMOOTH: tl.constexpr, KC: tl.constexpr):
    """[ROWS, KC] fp32 values k0 .. k0 + KC of each row (src / smooth)."""
    ck = tl.arange(0, KC)
    v = tl.load(src + (k0 + ck)[None, :], mask=src_ok, other=0.0).to(tl.float32)
    if HAS_SMOOTH:
        v = tl.math.div_rn(v, tl.load(smooth_ptr + k_base + (k0 + ck)[None, :], mask=src_ok,
                                      other=1.0))
    return v


@triton.jit
def _row_pow2_scale(src, src_ok, k_base, smooth_ptr, HAS_SMOOTH: tl.constexpr, B: tl.constexpr,
                    KC: tl.constexpr):
    """(s, 1/s) per row, [ROWS, 1]: the power of two just above the row's max |value| (1 for a
    zero row), built from the exponent bits so that scaling by it is exact. The "fp16"
    precision divides each row by s before rounding it to fp16 — no overflow, full relative
    precision — and multiplies the dot by s after: a per-row factor commutes with the rotation."""
    amax = tl.zeros([src.shape[0], 1], tl.float32)
    for k0 in range(0, B, KC):
        v = _load_slice(src, src_ok, k_base, smooth_ptr, k0, HAS_SMOOTH, KC)
        amax = tl.maximum(amax, tl.max(tl.abs(v), axis=1, keep_dims=True))
    # biased exponent E of amax: amax < 2^(E − 126) = s; clamped so that 1/s stays normal.
    e = tl.minimum(((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) + 1, 253)
    e = tl.where(amax > 0, e, 127)
    return (e << 23).to(tl.float32, bitcast=True), ((254 - e) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _rotate_slice(src, src_ok, k_base, smooth_ptr, r_ptr, j, inv_s,
                  HAS_SMOOTH: tl.constexpr, B: tl.constexpr, NS: tl.constexpr,
                  KC: tl.constexpr, PRECISION: tl.constexpr):
    """Columns [j·NS, (j+1)·NS) of (src / smooth) · R for ROWS rows of B values each: src is the
    [ROWS, 1] pointer to each row's first value, k_base its [ROWS, 1] column in x (for smooth).
    The dot runs over K in slices of KC so that only [ROWS, KC] and [KC, NS] operands are live
    (a whole [ROWS, B] row block and [B, NS] slice of R, split hi/lo for tf32x3, spilled).
    "fp16": rows pre-scaled by inv_s (`_row_pow2_scale`; the caller multiplies the result back),
    operands rounded to fp16, fp32 accumulation."""
    ck = tl.arange(0, KC)
    cs = tl.arange(0, NS)
    acc = tl.zeros([src.shape[0], NS], tl.float32)
    for k0 in range(0, B, KC):
        v = _load_slice(src, src_ok, k_base, smooth_ptr, k0, HAS_SMOOTH, KC)
        # r arrives transposed (Rᵀ row-major): element (k, n) of R is at n·B + k, so the
        # [KC, NS] tile is K-contiguous, the operand order sm_90 wgmma needs for tf32.
        r = tl.load(r_ptr + (j * NS + cs)[None, :] * B + (k0 + ck)[:, None])
        if PRECISION == "fp16":
            acc = tl.dot((v * inv_s).to(tl.float16), r.to(tl.float16), acc)
        else:
            acc = tl.dot(v, r, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _rotate_scale(src, src_ok, k_base, smooth_ptr, HAS_SMOOTH: tl.constexpr, B: tl.constexpr,
                  KC: tl.constexpr, PRECISION: tl.constexpr):
    """(s, 1/s) of `_row_pow2_scale` under "fp16"; (1, 1), nothing computed, otherwise."""
    if PRECISION == "fp16":
        return _row_pow2_scale(src, src_ok, k_base, smooth_ptr, HAS_SMOOTH, B, KC)
    else:
        return 1.0, 1.0


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
    KC: tl.constexpr,
    HAS_SMOOTH: tl.constexpr,
    PRECISION: tl.constexpr,
    RELOAD: tl.constexpr,
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
    cs = tl.arange(0, NS)
    # This program's scratch rows: [BLOCK_M, C] fp32, reused for every tile it owns.
    scr = scratch_ptr + pid.to(tl.int64) * BLOCK_M * C
    num_tiles = tl.cdiv(M, BLOCK_M)
    for tile in range(pid, num_tiles, nprog):
        m = tile * BLOCK_M + tok  # [ROWS]
        m_ok = m < M
        x_row = x_ptr + m.to(tl.int64)[:, None] * stride_xm  # [ROWS, 1]
        s_row = scr + tok[:, None] * C  # [ROWS, 1]
        # ---- phase 1: R1 per block, scatter through inv_perm --------------------------------
        for b0 in range(0, NBLK, CHUNK):
            ok_r = (m_ok & ((b0 + blk) < NBLK))[:, None]  # [ROWS, 1]
            k_base = (b0 + blk)[:, None] * B
            sc, inv = _rotate_scale(x_row + k_base, ok_r, k_base, smooth_ptr, HAS_SMOOTH, B, KC,
                                    PRECISION)
            for j in tl.static_range(B // NS):
                y = _rotate_slice(x_row + k_base, ok_r, k_base, smooth_ptr, r1_ptr, j, inv,
                                  HAS_SMOOTH, B, NS, KC, PRECISION) * sc
                dest = tl.load(inv_perm_ptr + k_base + (j * NS + cs)[None, :], mask=ok_r,
                               other=0)
                tl.store(s_row + dest, y, mask=ok_r)
        tl.debug_barrier()
        # ---- phase 2: R2 per block, per-token min / max --------------------------------------
        lo = tl.full([BLOCK_M], float("inf"), tl.float32)
        hi = tl.full([BLOCK_M], float("-inf"), tl.float32)
        for b0 in range(0, NBLK, CHUNK):
            ok_r = (m_ok & ((b0 + blk) < NBLK))[:, None]
            k_base = (b0 + blk)[:, None] * B
            # RELOAD: the whole block's R2 output at once ([ROWS, B], not NS columns), written
            # back over its input once every warp has read that input (the barrier), for phase
            # 3 to load instead of recomputing.
            sc, inv = _rotate_scale(s_row + k_base, ok_r, k_base, smooth_ptr, False, B, KC,
                                    PRECISION)
            for j in tl.static_range(1 if RELOAD else B // NS):
                w = _rotate_slice(s_row + k_base, ok_r, k_base, smooth_ptr, r2_ptr, j, inv,
                                  False, B, B if RELOAD else NS, KC, PRECISION) * sc
                wlo = tl.min(tl.where(ok_r, w, float("inf")), axis=1)  # [ROWS]
                whi = tl.max(tl.where(ok_r, w, float("-inf")), axis=1)
                lo = tl.minimum(lo, tl.min(tl.reshape(wlo, [BLOCK_M, CHUNK]), axis=1))
                hi = tl.maximum(hi, tl.max(tl.reshape(whi, [BLOCK_M, CHUNK]), axis=1))
                if RELOAD:
                    tl.debug_barrier()
                    tl.store(s_row + k_base + tl.arange(0, B)[None, :], w, mask=ok_r)
        if RELOAD:
            tl.debug_barrier()  # phase 3 loads what other warps stored
        scale, zero = _scale_zero(lo, hi, clip_ratio, QMAX, USE_LIBDEVICE)
        # Broadcast per-token scale/zero to the dot rows.
        scale_r = tl.reshape(tl.broadcast_to(scale[:, None], [BLOCK_M, CHUNK]), [ROWS])
        zero_r = tl.reshape(tl.broadcast_to(zero[:, None], [BLOCK_M, CHUNK]), [ROWS])
        # ---- phase 3: R2 output (reloaded or recomputed), quantize, store codes and Σq -------
        qsum = tl.zeros([BLOCK_M], tl.int32)
        for b0 in range(0, NBLK, CHUNK):
            ok_r = (m_ok & ((b0 + blk) < NBLK))[:, None]
            k_base = (b0 + blk)[:, None] * B
            if not RELOAD:
                sc, inv = _rotate_scale(s_row + k_base, ok_r, k_base, smooth_ptr, False, B, KC,
                                        PRECISION)
            for j in tl.static_range(B // NS):
                if RELOAD:
                    w = tl.load(s_row + k_base + (j * NS + cs)[None, :], mask=ok_r, other=0.0)
                else:
                    w = _rotate_slice(s_row + k_base, ok_r, k_base, smooth_ptr, r2_ptr, j, inv,
                                      False, B, NS, KC, PRECISION) * sc
                qi = tl.where(ok_r, _codes(w, scale_r[:, None], zero_r[:, None], QMAX,
                                           USE_LIBDEVICE), 0)
                tl.store(q_ptr + m.to(tl.int64)[:, None] * stride_qm + k_base
                         + (j * NS + cs)[None, :], qi.to(tl.int8), mask=ok_r)
                qsum += tl.sum(tl.reshape(tl.sum(qi, axis=1), [BLOCK_M, CHUNK]), axis=1)
        tl.debug_barrier()  # phase 3 of this tile reads scratch that phase 1 of the next rewrites
        mt = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        mt_ok = mt < M
        tl.store(scale_ptr + mt, scale, mask=mt_ok)
        tl.store(zero_ptr + mt, zero, mask=mt_ok)
        tl.store(sum_ptr + mt, qsum, mask=mt_ok)


@triton.jit
def _prologue_split_kernel(
    x_ptr, stride_xm,
    smooth_ptr, r1t_ptr, r2t_ptr, perm_ptr,
    scratch_ptr, part_ptr, count_ptr,
    q_ptr, stride_qm,
    scale_ptr, zero_ptr, sum_ptr,
    C, clip_ratio,
    QMAX: tl.constexpr,
    B: tl.constexpr,
    NBLK: tl.constexpr,
    NBLK_P2: tl.constexpr,
    KD: tl.constexpr,
    QC: tl.constexpr,
    HAS_SMOOTH: tl.constexpr,
    USE_LIBDEVICE: tl.constexpr,
):
    """Decode prologue: the same codes as `_prologue_kernel`, one program per (token, output
    block) instead of one per token, so a token's work spreads over NBLK SMs. Program (t, j)
    gathers the b values of x·BlockDiag(R1) that the permutation sends to output block j (each
    a length-b fp32 dot of its source block of x with one column of R1, on the CUDA cores),
    applies R2, stores the block's b values to scratch row t and its min / max. The last
    program of token t to finish (an acq_rel counter) reduces the min / max and quantizes the
    whole row. Must match core.reference.prologue_ref."""
    t = tl.program_id(0)
    j = tl.program_id(1)
    i = tl.arange(0, B)
    kd = tl.arange(0, KD)
    # Output i of block j is element perm[j·b + i] of x·BlockDiag(R1): column src % b of R1
    # applied to source block src // b of x.
    src = tl.load(perm_ptr + j * B + i).to(tl.int32)
    x_blk = (src // B) * B  # [B] first column of each source block
    x_row = x_ptr + t.to(tl.int64) * stride_xm
    y = tl.zeros([B], tl.float32)
    for k0 in range(0, B, KD):
        cols = x_blk[:, None] + k0 + kd[None, :]  # [B, KD]
        v = tl.load(x_row + cols).to(tl.float32)
        if HAS_SMOOTH:
            v = tl.math.div_rn(v, tl.load(smooth_ptr + cols))
        # R1ᵀ row-major: column src % b of R1 is a contiguous row.
        r = tl.load(r1t_ptr + (src % B)[:, None] * B + k0 + kd[None, :])
        y += tl.sum(v * r, axis=1)
    # R2: w[n] = Σ_i y[i]·R2[i, n], R2[i, n] at n·b + i in R2ᵀ row-major.
    s_row = scratch_ptr + t.to(tl.int64) * C + j * B
    lo = tl.full([KD], float("inf"), tl.float32)
    hi = tl.full([KD], float("-inf"), tl.float32)
    for n0 in range(0, B, KD):
        w = tl.sum(y[:, None] * tl.load(r2t_ptr + (n0 + kd)[None, :] * B + i[:, None]), axis=0)
        tl.store(s_row + n0 + kd, w)
        lo = tl.minimum(lo, w)
        hi = tl.maximum(hi, w)
    part = part_ptr + (t * NBLK + j) * 2
    tl.store(part, tl.min(lo, axis=0))
    tl.store(part + 1, tl.max(hi, axis=0))
    # Every thread's stores happen before the (single-thread) release of the counter.
    tl.debug_barrier()
    arrived = tl.atomic_add(count_ptr + t, 1, sem="acq_rel")
    if arrived == NBLK - 1:
        tl.debug_barrier()
        tl.store(count_ptr + t, 0)  # ready for the next launch (kernels on a stream are ordered)
        pb = tl.arange(0, NBLK_P2)
        parts = part_ptr + (t * NBLK + pb) * 2
        # .cg: read at L2, where the other programs' stores are, never a stale L1 line.
        plo = tl.load(parts, mask=pb < NBLK, other=float("inf"), cache_modifier=".cg")
        phi = tl.load(parts + 1, mask=pb < NBLK, other=float("-inf"), cache_modifier=".cg")
        scale, zero = _scale_zero(tl.min(plo, axis=0), tl.max(phi, axis=0), clip_ratio, QMAX,
                                  USE_LIBDEVICE)
        qc = tl.arange(0, QC)
        row = scratch_ptr + t.to(tl.int64) * C
        qsum = tl.zeros([QC], tl.int32)
        for c0 in range(0, C, QC):
            ok = c0 + qc < C
            w = tl.load(row + c0 + qc, mask=ok, other=0.0, cache_modifier=".cg")
            q = tl.where(ok, _codes(w, scale, zero, QMAX, USE_LIBDEVICE), 0)
            tl.store(q_ptr + t.to(tl.int64) * stride_qm + c0 + qc, q.to(tl.int8), mask=ok)
            qsum += q
        tl.store(scale_ptr + t, scale)
        tl.store(zero_ptr + t, zero)
        tl.store(sum_ptr + t, tl.sum(qsum, axis=0))


# R1/R2 dot precisions (module docstring).
PRECISIONS = ("tf32x3", "tf32", "fp16", "ieee")
# Columns of R per dot (NS) and the K slice each dot reads (KC): what bounds the live operands.
NS, KC = 64, 32


TOKEN_TILES = (1, 2, 4)  # tokens per program the tiled kernel is compiled for


def _config(m: int, c: int, b: int, sms: int | None = None,
            tokens: int | None = None) -> tuple[int, int, int]:
    """(BLOCK_M, CHUNK, num_warps) for M tokens of width C on a GPU of `sms` SMs; `tokens`
    forces the tokens per program (TOKEN_TILES; the GPU session times each).

    One token per program: its blocks are the dot rows (16..64), and M tokens spread over M
    programs. Several per program (2 × 32 or 4 × 16 blocks): 64 dot rows at any width from
    K = 32·b (2 tokens) or 16·b (4), a warpgroup's wgmma M tile on sm_90 (Triton uses mma.sync
    below 64 rows), and each R1/R2 slice loaded from L2 serves more tokens. So one token per
    program up to 16 tokens and wherever several would leave SMs idle (below 2·sms tokens), 2
    below 4·sms, then 4; off CUDA (no SM count) 4 above 16. A static rule from SM counts, not
    a timed one (benchmarks/gpu_session.py times every tile).
    Static facts of these configs (Triton AOT + ptxas, tests/kernels/aot_compile.py): 8–32 KB
    of shared memory on sm_80/89/90, at most 40 B of spill per thread."""
    if tokens is None:
        if m <= 16:
            tokens = 1
        elif sms is None:
            tokens = 4
        else:
            tokens = 1 if m < 2 * sms else 2 if m < 4 * sms else 4
    if tokens not in TOKEN_TILES:
        raise ValueError(f"prologue tokens per program {tokens} not in {TOKEN_TILES}")
    # Up to 64 dot rows, never more blocks per token than it has (rounded up to a power of two,
    # at least 16: a narrow input pads rather than shrink the tile below an MMA's).
    chunk = max(16, min(64 // tokens, triton.next_power_of_2(c // b)))
    # 64 rows: 8 warps (two warpgroups of wgmma) halve each thread's share of the [64, NS]
    # tiles (on 4, one token of 64 blocks spilled up to 216 B under tf32x3 reload on sm_80).
    return tokens, chunk, 8 if tokens * chunk == 64 else 4


# Scratch is allocated per call: the caching allocator makes that a lookup, a CUDA graph
# captures it from the graph's own pool, and each stream gets its own block. (A grow-only
# buffer shared across calls would leave graphs captured before a regrowth pointing at freed
# memory, and would race between streams.)

# The split decode prologue serves up to SPLIT_MAX_M tokens, one arrival counter per token
# (device_state.arrival_counters: the one state kept across calls).
SPLIT_MAX_M = device_state.COUNTER_SLOTS[device_state.SPLIT_PROLOGUE]


def split_counters(device: torch.device | str) -> torch.Tensor:
    """The split decode prologue's per-token arrival counters on `device` (made at load)."""
    return device_state.arrival_counters(device_state.SPLIT_PROLOGUE, device)


def _split_prologue(x, r1t, r2t, perm, smooth, a_bits, clip_ratio, out):
    m, c = x.shape
    b = r1t.shape[0]
    nblk = c // b
    # fp32 scratch [M, C]; block min/max [M, C/b, 2].
    scratch = torch.empty(m * c, dtype=torch.float32, device=x.device)
    parts = torch.empty(m * nblk * 2, dtype=torch.float32, device=x.device)
    count = split_counters(x.device)
    codes, scale, zero, qsum = out
    _prologue_split_kernel[(m, nblk)](
        x, x.stride(0), smooth if smooth is not None else r1t, r1t, r2t, perm,
        scratch, parts, count, codes, codes.stride(0), scale, zero, qsum,
        c, float(clip_ratio),
        QMAX=(1 << a_bits) - 1, B=b, NBLK=nblk, NBLK_P2=triton.next_power_of_2(nblk),
        KD=min(b, 32), QC=1024, HAS_SMOOTH=smooth is not None,
        USE_LIBDEVICE=not _INTERPRET, num_warps=4, num_stages=1,
    )
    return out


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
    ns: int = NS,
    kc: int = KC,
    phase3: str | None = None,
    perm: torch.Tensor | None = None,
    decode: str | None = None,
    tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, C] (bf16/fp16/fp32) → codes int8 [M, C], scale f32 [M], zero f32 [M], Σq i32 [M].

    inv_perm: int32 [C] with inv_perm[perm[i]] = i. phase3: "recompute" (default) or "reload"
    (module docstring; DUQUANT_PROLOGUE_PHASE3 overrides). decode: "tiled" (default) or
    "split": up to SPLIT_MAX_M tokens through `_prologue_split_kernel`, which needs `perm`
    (computed here if not given; DUQUANT_PROLOGUE_DECODE overrides). tokens: tokens per
    program of the tiled kernel (`_config` chooses by default). Launcher of both kernels.
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
    if precision not in PRECISIONS:
        raise ValueError(f"prologue precision {precision!r} not in {', '.join(PRECISIONS)}")
    phase3 = phase3 or os.environ.get("DUQUANT_PROLOGUE_PHASE3") or "recompute"
    if phase3 not in ("reload", "recompute"):
        raise ValueError(f"prologue phase3 {phase3!r} not in reload, recompute")
    decode = decode or os.environ.get("DUQUANT_PROLOGUE_DECODE") or "tiled"
    if decode not in ("tiled", "split"):
        raise ValueError(f"prologue decode {decode!r} not in tiled, split")
    codes = torch.empty((m, c), dtype=torch.int8, device=x.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    zero = torch.empty((m,), dtype=torch.float32, device=x.device)
    qsum = torch.empty((m,), dtype=torch.int32, device=x.device)
    if m == 0:
        return codes, scale, zero, qsum
    if decode == "split" and m <= SPLIT_MAX_M:
        perm = torch.argsort(inv_perm) if perm is None else perm.contiguous()
        return _split_prologue(x, r1t, r2t, perm, smooth, a_bits, clip_ratio,
                               (codes, scale, zero, qsum))
    sms = device_state.sm_count(x.device)
    block_m, chunk, num_warps = _config(m, c, b, sms, tokens)
    tiles = triton.cdiv(m, block_m)
    if max_programs is None:
        if x.is_cuda:
            # At least one program per SM; more only while the scratch stays ~16 MiB (L2 is 50 MB
            # on H100). Wide inputs exceed that at one per SM (docs/kernels.md).
            cap = max(sms, (16 << 20) // (block_m * c * 4))
            max_programs = min(cap, 8 * sms)
        else:
            max_programs = 4
    nprog = max(1, min(tiles, max_programs))
    scratch = torch.empty(nprog * block_m * c, dtype=torch.float32, device=x.device)
    smooth_arg = smooth if smooth is not None else r1  # never read when HAS_SMOOTH is False
    _prologue_kernel[(nprog,)](
        x, x.stride(0), smooth_arg, r1t, r2t, inv_perm, scratch,
        codes, codes.stride(0), scale, zero, qsum,
        m, c, float(clip_ratio),
        QMAX=(1 << a_bits) - 1, B=b, NBLK=c // b, CHUNK=chunk, BLOCK_M=block_m, NS=min(b, ns),
        KC=min(b, kc),
        HAS_SMOOTH=smooth is not None, PRECISION=precision, RELOAD=phase3 == "reload",
        USE_LIBDEVICE=not _INTERPRET, num_warps=num_warps,
        num_stages=1,  # the loops are short and dependent; deeper pipelines only cost smem
    )
    return codes, scale, zero, qsum
