"""Fused DuQuant prologue in Triton: smooth → R1 → permute → R2 → per-token asymmetric codes.

    x' = ((x / smooth) · BlockDiag(R1)) [perm] · BlockDiag(R2)
    lo, hi = clip·min(x'), clip·max(x');  s = clamp((hi − lo)/(2^a − 1), 1e-5, 1e4)
    z = round(−lo/s);  q = clamp(round(x'/s) + z, 0, 2^a − 1);  Σq        (round: half-to-even)

Must match `duquant_serve.core.reference.prologue_ref` (tests/kernels/test_triton_prologue.py):
codes may differ only where summation order or operand precision moves x'/s across a rounding
boundary, by 1.

One program per tile of 1, 2 or 4 tokens (`_config`), persistent over tiles:
  phase 1  per chunk of blocks: (x / smooth) · R1 on the tensor cores, (token, block) pairs as
           dot rows, then *scattered* through inv_perm into the program's fp32 scratch rows
           (sized by the number of programs, L2-resident);
  barrier  (the gather crosses blocks);
  phase 2  per chunk: contiguous scratch load, dot with R2, running per-token min / max;
  phase 3  the same dot again ("recompute", default) or phase 2's stored result ("reload"),
           quantize, store int8 codes, accumulate Σq.
R1/R2 dot precision: tf32x3 (≈ fp32) up to 256 tokens, tf32 above; fp16 (rows pre-scaled by a
power of two) and ieee on request (DUQUANT_PROLOGUE_PRECISION). Why these choices, their code
differences, spills and shared memory: docs/kernels.md ("The prologue"). The opt-in decode
variant is triton_prologue_split.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from duquant_serve.kernels import device_state, knobs
from duquant_serve.kernels.triton_codes import INTERPRET, token_codes, token_scale_zero
from duquant_serve.kernels.triton_prologue_split import SPLIT_MAX_M, split_prologue


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
        scale, zero = token_scale_zero(lo, hi, clip_ratio, QMAX, USE_LIBDEVICE)
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
                qi = tl.where(ok_r, token_codes(w, scale_r[:, None], zero_r[:, None], QMAX,
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


# R1/R2 dot precisions (module docstring).
PRECISIONS = knobs.PRECISIONS
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

    inv_perm: int32 [C] with inv_perm[perm[i]] = i. precision: one of PRECISIONS, None to
    choose by M. phase3: "recompute" (default) or "reload" (module docstring). decode: "tiled"
    (default) or "split": up to SPLIT_MAX_M tokens through triton_prologue_split.py, which
    needs `perm` (computed here if not given). The serving path passes the operator's
    switches (knobs.py, read once at load). tokens: tokens per
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
        precision = "ieee" if INTERPRET else "tf32x3" if m <= 256 else "tf32"
    if precision not in PRECISIONS:
        raise ValueError(f"prologue precision {precision!r} not in {', '.join(PRECISIONS)}")
    phase3 = phase3 or "recompute"
    if phase3 not in knobs.PHASE3:
        raise ValueError(f"prologue phase3 {phase3!r} not in {', '.join(knobs.PHASE3)}")
    decode = decode or "tiled"
    if decode not in knobs.DECODE:
        raise ValueError(f"prologue decode {decode!r} not in {', '.join(knobs.DECODE)}")
    codes = torch.empty((m, c), dtype=torch.int8, device=x.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    zero = torch.empty((m,), dtype=torch.float32, device=x.device)
    qsum = torch.empty((m,), dtype=torch.int32, device=x.device)
    if m == 0:
        return codes, scale, zero, qsum
    if decode == "split" and m <= SPLIT_MAX_M:
        perm = torch.argsort(inv_perm) if perm is None else perm.contiguous()
        return split_prologue(x, r1t, r2t, perm, smooth, a_bits, clip_ratio,
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
        USE_LIBDEVICE=not INTERPRET, num_warps=num_warps,
        num_stages=1,  # the loops are short and dependent; deeper pipelines only cost smem
    )
    return codes, scale, zero, qsum
