"""Opt-in decode prologue (DUQUANT_PROLOGUE_DECODE=split, up to SPLIT_MAX_M tokens): the same
codes as triton_prologue's tiled kernel, one program per (token, output block) in fp32 on the
CUDA cores, the token's last program quantizing its row. Untimed on a GPU, so not the default
(docs/kernels.md, "The split decode prologue")."""

import torch
import triton
import triton.language as tl

from duquant_serve.kernels import device_state
from duquant_serve.kernels.triton_codes import INTERPRET, token_codes, token_scale_zero


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
        scale, zero = token_scale_zero(tl.min(plo, axis=0), tl.max(phi, axis=0), clip_ratio, QMAX,
                                  USE_LIBDEVICE)
        qc = tl.arange(0, QC)
        row = scratch_ptr + t.to(tl.int64) * C
        qsum = tl.zeros([QC], tl.int32)
        for c0 in range(0, C, QC):
            ok = c0 + qc < C
            w = tl.load(row + c0 + qc, mask=ok, other=0.0, cache_modifier=".cg")
            q = tl.where(ok, token_codes(w, scale, zero, QMAX, USE_LIBDEVICE), 0)
            tl.store(q_ptr + t.to(tl.int64) * stride_qm + c0 + qc, q.to(tl.int8), mask=ok)
            qsum += q
        tl.store(scale_ptr + t, scale)
        tl.store(zero_ptr + t, zero)
        tl.store(sum_ptr + t, tl.sum(qsum, axis=0))


# The split decode prologue serves up to SPLIT_MAX_M tokens, one arrival counter per token
# (device_state.arrival_counters: the one state kept across calls).
SPLIT_MAX_M = device_state.COUNTER_SLOTS[device_state.SPLIT_PROLOGUE]


def split_counters(device: torch.device | str) -> torch.Tensor:
    """The split decode prologue's per-token arrival counters on `device` (made at load)."""
    return device_state.arrival_counters(device_state.SPLIT_PROLOGUE, device)


def split_prologue(x, r1t, r2t, perm, smooth, a_bits, clip_ratio, out):
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
        USE_LIBDEVICE=not INTERPRET, num_warps=4, num_stages=1,
    )
    return out
