"""W4A4 GEMM with the zero-point epilogue in Triton (int8 tensor cores, packed 4-bit weights).

    acc[m, n] = Σ_k qx[m, k] · qw[n, k]                        (int32, exact)
    y[m, n]   = sx[m]·sw[n]·(acc − zw[n]·Σqx[m] − zx[m]·(Σqw[n] − K·zw[n])) + bias[n]

which is `core.reference.gemm_epilogue_ref` regrouped (docs/epilogue.md). The bracket
is evaluated in fp32: every term is an integer, exact while below 2^24 (K·15·15 < 2^24 for
K < 74k), so the only rounding is the final scaling, as in the reference.

Weights stay packed 4-bit in memory (the decode win) in the grouped layout of `layout.py`: in a
64-code group, the low nibbles are codes 0..31 and the high nibbles codes 32..63, so each loaded
byte tile yields two int8 operands for two `tl.dot`s against contiguous activation columns.
Codes are 0..15, so int8 operands are exact (Triton's int8 dot accumulates in int32).

Where the output tiles are fewer than the SMs (decode at narrow N: tensor-parallel shards,
small models), K is split over several programs per tile (split-K); the last to arrive sums
the int32 partials, which is exact, so the result does not depend on the split or the order.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from duquant_serve.kernels import device_state, tuned


@triton.jit
def _epilogue_store(
    acc, rm, rn, M, N, K,
    sx_ptr, zx_ptr, sqx_ptr,
    sw_ptr, zw_ptr, sqw_ptr,
    bias_ptr, out_ptr, stride_om,
    HAS_BIAS: tl.constexpr,
):
    """out[rm, rn] = sx·sw·(acc − zw·Σqx − zx·(Σqw − K·zw)) + bias for one int32 tile."""
    m_ok = rm < M
    n_ok = rn < N
    sx = tl.load(sx_ptr + rm, mask=m_ok, other=0.0)
    zx = tl.load(zx_ptr + rm, mask=m_ok, other=0.0)
    sqx = tl.load(sqx_ptr + rm, mask=m_ok, other=0).to(tl.float32)
    sw = tl.load(sw_ptr + rn, mask=n_ok, other=0.0)
    zw = tl.load(zw_ptr + rn, mask=n_ok, other=0.0)
    sqw = tl.load(sqw_ptr + rn, mask=n_ok, other=0).to(tl.float32)
    wcorr = sqw - K * zw  # Σqw − K·zw: folds the K·zx·zw term into the zx term
    bracket = acc.to(tl.float32) - zw[None, :] * sqx[:, None] - zx[:, None] * wcorr[None, :]
    y = (sx[:, None] * sw[None, :]) * bracket
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    optr = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    tl.store(optr, y.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _tile_rows_cols(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    GROUP_M: tl.constexpr):
    """Rows and columns of output tile `pid` in grouped tile order: programs that run together
    share weight tiles in L2."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % width) % size_m)
    pid_n = (pid % width) // size_m
    return pid_m * BLOCK_M + tl.arange(0, BLOCK_M), pid_n * BLOCK_N + tl.arange(0, BLOCK_N)


@triton.jit
def _w4a4_gemm_kernel(
    a_ptr, stride_am,
    p_ptr, stride_pn,
    sx_ptr, zx_ptr, sqx_ptr,
    sw_ptr, zw_ptr, sqw_ptr,
    bias_ptr,
    out_ptr, stride_om,
    ws_ptr, count_ptr,
    M, N, K,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """y = sx·sw·(Σ_k qx·qw − zw·Σqx − zx·(Σqw − K·zw)) + bias on one [BLOCK_M, BLOCK_N] tile,
    weights read packed (grouped layout). Must match core.reference.gemm_epilogue_ref.

    SPLIT_K > 1: program (tile, s) sums the s-th of SPLIT_K runs of whole K tiles, stores its
    int32 partial to the workspace and arrives at the tile's counter (GPU-scope acq_rel); the
    last to arrive adds the others' partials (integers: exact, in any order) to its own, runs
    the epilogue and resets the counter. Decode grids with few output tiles thus use more SMs."""
    pid = tl.program_id(0)
    rm, rn = _tile_rows_cols(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    m_ok = rm < M
    n_ok = rn < N
    HALF: tl.constexpr = BLOCK_K // 2
    i = tl.arange(0, HALF)
    # Column of the activation that the low nibble of packed byte i (of this K tile) holds.
    lo_col = (i // 32) * 64 + (i % 32)
    a_rows = a_ptr + rm.to(tl.int64)[:, None] * stride_am
    p_cols = p_ptr + rn.to(tl.int64)[None, :] * stride_pn
    if SPLIT_K == 1:
        k_lo = 0
        k_hi = K
    else:
        span = tl.cdiv(K, SPLIT_K * BLOCK_K) * BLOCK_K
        k_lo = tl.program_id(1) * span
        k_hi = tl.minimum(K, k_lo + span)  # the last runs may be short, or empty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ka = k0 + lo_col
        ka_ok = ka < K  # K % 64 == 0, so a group is either all in or all out
        a_lo = tl.load(a_rows + ka[None, :], mask=m_ok[:, None] & ka_ok[None, :], other=0)
        a_hi = tl.load(a_rows + (ka + 32)[None, :], mask=m_ok[:, None] & ka_ok[None, :], other=0)
        kb = k0 // 2 + i
        pb = tl.load(p_cols + kb[:, None], mask=(kb < K // 2)[:, None] & n_ok[None, :], other=0)
        w_lo = (pb & 0xF).to(tl.int8)  # [HALF, BLOCK_N]
        w_hi = (pb >> 4).to(tl.int8)
        # out_dtype spelled out: Triton ≤ 3.6 (the GPU image's) checks acc against its float32
        # default even for int8 operands.
        acc = tl.dot(a_lo, w_lo, acc, out_dtype=tl.int32)
        acc = tl.dot(a_hi, w_hi, acc, out_dtype=tl.int32)

    if SPLIT_K == 1:
        _epilogue_store(acc, rm, rn, M, N, K, sx_ptr, zx_ptr, sqx_ptr, sw_ptr, zw_ptr, sqw_ptr,
                        bias_ptr, out_ptr, stride_om, HAS_BIAS)
    else:
        s = tl.program_id(1)
        tile_elems: tl.constexpr = BLOCK_M * BLOCK_N
        tm = tl.arange(0, BLOCK_M)
        tn = tl.arange(0, BLOCK_N)
        within = tm[:, None] * BLOCK_N + tn[None, :]
        ws_tile = ws_ptr + pid.to(tl.int64) * (SPLIT_K * tile_elems)
        tl.store(ws_tile + s * tile_elems + within, acc)
        # Every thread's stores happen before the (single-thread) release of the counter.
        tl.debug_barrier()
        arrived = tl.atomic_add(count_ptr + pid, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            tl.debug_barrier()
            tl.store(count_ptr + pid, 0)  # ready for the next launch (a stream runs in order)
            for o in range(SPLIT_K):
                if o != s:
                    # .cg: read at L2, where the other programs' stores are, never a stale L1
                    # line.
                    acc += tl.load(ws_tile + o * tile_elems + within, cache_modifier=".cg")
            _epilogue_store(acc, rm, rn, M, N, K, sx_ptr, zx_ptr, sqx_ptr, sw_ptr, zw_ptr,
                            sqw_ptr, bias_ptr, out_ptr, stride_om, HAS_BIAS)


@triton.jit
def _w4a4_gemm_groups_kernel(
    a_ptr, stride_am,
    p_ptr, stride_pn,
    sx_ptr, zx_ptr, sqx_ptr,
    sw_ptr, zw_ptr, gsum_ptr,
    bias_ptr,
    out_ptr, stride_om,
    M, N, G, KG,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Block-scaled W4A4: y = sw·Σ_g sx_g·(acc_g − zw·Σqx_g − zx_g·(Σqw_g − K_g·zw)) + bias on
    one [BLOCK_M, BLOCK_N] tile (core.reference.gemm_epilogue_groups_ref). The K loop runs
    group by group (BLOCK_K divides K_g = KG): each group's exact int32 sum is folded into one
    fp32 accumulator with that group's per-token scale and zero point as soon as it is
    complete, the FP8 1×128 block-scaling pattern. sx, zx, Σqx are [M, G] row-major; gsum
    is Σqw per group, [G, N] int32."""
    pid = tl.program_id(0)
    rm, rn = _tile_rows_cols(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    m_ok = rm < M
    n_ok = rn < N
    HALF: tl.constexpr = BLOCK_K // 2
    i = tl.arange(0, HALF)
    lo_col = (i // 32) * 64 + (i % 32)
    a_rows = a_ptr + rm.to(tl.int64)[:, None] * stride_am
    p_cols = p_ptr + rn.to(tl.int64)[None, :] * stride_pn
    zw = tl.load(zw_ptr + rn, mask=n_ok, other=0.0)
    facc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, G):
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(g * KG, (g + 1) * KG, BLOCK_K):
            ka = k0 + lo_col
            a_lo = tl.load(a_rows + ka[None, :], mask=m_ok[:, None], other=0)
            a_hi = tl.load(a_rows + (ka + 32)[None, :], mask=m_ok[:, None], other=0)
            kb = k0 // 2 + i
            pb = tl.load(p_cols + kb[:, None], mask=n_ok[None, :], other=0)
            acc = tl.dot(a_lo, (pb & 0xF).to(tl.int8), acc, out_dtype=tl.int32)
            acc = tl.dot(a_hi, (pb >> 4).to(tl.int8), acc, out_dtype=tl.int32)
        sx = tl.load(sx_ptr + rm * G + g, mask=m_ok, other=0.0)
        zx = tl.load(zx_ptr + rm * G + g, mask=m_ok, other=0.0)
        sqx = tl.load(sqx_ptr + rm * G + g, mask=m_ok, other=0).to(tl.float32)
        sqw = tl.load(gsum_ptr + g * N + rn, mask=n_ok, other=0).to(tl.float32)
        wcorr = sqw - KG * zw
        bracket = acc.to(tl.float32) - zw[None, :] * sqx[:, None] - zx[:, None] * wcorr[None, :]
        facc += sx[:, None] * bracket
    sw = tl.load(sw_ptr + rn, mask=n_ok, other=0.0)
    y = facc * sw[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    optr = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    tl.store(optr, y.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _epilogue_kernel(
    acc_ptr, stride_am,
    sx_ptr, zx_ptr, sqx_ptr,
    sw_ptr, zw_ptr, sqw_ptr,
    bias_ptr,
    out_ptr, stride_om,
    M, N, K,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Same epilogue on an int32 accumulator produced elsewhere (the CUTLASS int32 GEMMs):
    y = sx·sw·(acc − zw·Σqx − zx·(Σqw − K·zw)) + bias. Must match
    core.reference.gemm_epilogue_ref given acc = qx·qwᵀ."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (rm < M)[:, None] & (rn < N)[None, :]
    acc = tl.load(acc_ptr + rm.to(tl.int64)[:, None] * stride_am + rn[None, :], mask=ok, other=0)
    _epilogue_store(acc, rm, rn, M, N, K, sx_ptr, zx_ptr, sqx_ptr, sw_ptr, zw_ptr, sqw_ptr,
                    bias_ptr, out_ptr, stride_om, HAS_BIAS)


# Split-K (the kernel's SPLIT_K): at most this many runs of K per tile, each of at least
# MIN_K_TILES_PER_SPLIT K tiles, and only for grids of at most SPLIT_TILES_MAX output tiles
# (one arrival counter each, device_state.arrival_counters).
SPLIT_K_MAX = 8
MIN_K_TILES_PER_SPLIT = 2
SPLIT_TILES_MAX = device_state.COUNTER_SLOTS[device_state.SPLIT_K_GEMM]


def tile_count(m: int, n: int, cfg: dict[str, int]) -> int:
    """Output tiles of an [m, n] result under `cfg`: the grid's first dimension."""
    return triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])


def _static_split_k(tiles: int, k: int, block_k: int, sms: int | None) -> int:
    """How many runs of K each output tile is split over when the tile grid alone would leave
    SMs idle: enough programs for one per SM, each still streaming ≥ MIN_K_TILES_PER_SPLIT K
    tiles. 1 where the grid fills the SMs (so never above SPLIT_TILES_MAX tiles) or off CUDA."""
    if sms is None:
        return 1
    k_tiles = -(-k // block_k)
    return max(1, min(sms // tiles, k_tiles // MIN_K_TILES_PER_SPLIT, SPLIT_K_MAX))


def _gemm_config(m: int, n: int, k: int | None = None, device: str | None = None,
                 sms: int | None = None, tuned_configs: str = "") -> dict[str, int]:
    """The tile config for an [m, k] × [k, n] GEMM on the GPU named `device` with `sms` SMs: the
    table tuned on this GPU (`tuned.py`, written by benchmarks/kernels/tune_triton_gemm.py;
    `tuned_configs` the operator's folder of tables) if it has the shape, else a static
    choice by M bucket. Never autotuned while serving: the same shapes run the same code in
    tests, benchmarks and serving.

    Static choice: small M is weight-streaming bound, so narrow N tiles put more programs on
    the SMs, and where the tiles are still fewer than half the SMs, K is split over more
    programs (`_static_split_k`; needs k and sms); large M uses 128×128 tiles on two
    warpgroups.

    Compiled as served (aligned pointers and strides), every bucket's main loop is pipelined
    with cp.async and spills nothing on sm_80/89/90 (tests/kernels/aot_compile.py,
    docs/kernels.md). A static choice, not a timed one: benchmarks/gpu_session.py measures it,
    and benchmarks/kernels/tune_triton_gemm.py replaces it per GPU and shape."""
    if device is not None and k is not None:
        cfg = tuned.lookup("triton_gemm", device, n, k, m, tuned_configs)
        if cfg is not None:
            return cfg
    if m <= 16:
        cfg = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=256, GROUP_M=1, num_warps=4, num_stages=4)
    elif m <= 64:
        cfg = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=4, num_warps=4, num_stages=4)
    elif m <= 256:
        cfg = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)
    else:
        cfg = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    cfg["SPLIT_K"] = 1 if k is None else _static_split_k(tile_count(m, n, cfg), k, cfg["BLOCK_K"], sms)
    return cfg


@functools.cache
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _device_name(device: torch.device) -> str | None:
    """The CUDA device's name (what tuned tables are keyed by); None off CUDA."""
    if device.type != "cuda":
        return None
    return _cuda_name(device.index if device.index is not None else torch.cuda.current_device())


def launch_config(m: int, n: int, k: int, device: torch.device,
                  config: dict[str, int] | None = None, split_k: bool = True,
                  tuned_configs: str = "") -> dict[str, int]:
    """The config a launch of this shape on `device` runs: `config` (SPLIT_K defaulting to 1)
    or `_gemm_config`'s, unsplit where the grid has more tiles than SPLIT_TILES_MAX — a tuned
    split config also serves the counts above its own, where splitting is neither possible
    (one counter per tile) nor needed. split_k=False (DUQUANT_SPLIT_K=0, knobs.py) unsplits
    every config: an operator's switch should a GPU or driver ever disagree with the counter
    hand-off."""
    cfg = dict(config or _gemm_config(m, n, k, _device_name(device),
                                      device_state.sm_count(device), tuned_configs))
    fits = tile_count(m, n, cfg) <= SPLIT_TILES_MAX
    cfg["SPLIT_K"] = cfg.get("SPLIT_K", 1) if fits and split_k else 1
    return cfg


def split_counters(device: torch.device | str) -> torch.Tensor:
    """The split-K GEMM's per-tile arrival counters on `device` (made at load, prepare_common)."""
    return device_state.arrival_counters(device_state.SPLIT_K_GEMM, device)


def w4a4_gemm_triton(
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
    config: dict[str, int] | None = None,
    split_k: bool = True,
    tuned_configs: str = "",
) -> torch.Tensor:
    """codes int8 [M, K], qweight_g uint8 [N, K/2] (grouped) → y [M, N] out_dtype. `config`
    overrides the tile config (`_gemm_config`'s keys; SPLIT_K defaults to 1); split_k and
    tuned_configs: `launch_config`'s switches."""
    m, k = codes.shape
    n = qweight_g.shape[0]
    if k % 64 or qweight_g.shape[1] * 2 != k:
        raise ValueError(f"need K % 64 == 0 and qweight [N, K/2]; got codes {tuple(codes.shape)}, "
                         f"qweight {tuple(qweight_g.shape)}")
    codes = codes.contiguous()
    qweight_g = qweight_g.contiguous()
    out = torch.empty((m, n), dtype=out_dtype, device=codes.device)
    if m == 0:
        return out
    dev = codes.device
    cfg = launch_config(m, n, k, dev, config, split_k, tuned_configs)
    grid = (tile_count(m, n, cfg), cfg["SPLIT_K"])
    if cfg["SPLIT_K"] > 1:
        # int32 partials [tiles, SPLIT_K, BLOCK_M, BLOCK_N], per call like all scratch (a CUDA
        # graph captures it from its own pool; streams do not share it).
        ws = torch.empty(grid[0] * grid[1] * cfg["BLOCK_M"] * cfg["BLOCK_N"],
                         dtype=torch.int32, device=dev)
        count = split_counters(dev)
    else:
        ws = count = code_sum  # never read when SPLIT_K == 1
    _w4a4_gemm_kernel[grid](
        codes, codes.stride(0), qweight_g, qweight_g.stride(0),
        scale, zero, code_sum, weight_scale, weight_zero, weight_code_sum,
        bias if bias is not None else weight_scale,  # never read when HAS_BIAS is False
        out, out.stride(0), ws, count, m, n, k,
        HAS_BIAS=bias is not None, **cfg,
    )
    return out


def epilogue_triton(
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
    """acc int32 [M, N] → y [M, N] out_dtype (docs/epilogue.md)."""
    m, n = acc.shape
    out = torch.empty((m, n), dtype=out_dtype, device=acc.device)
    if m == 0:
        return out
    bm, bn = 32, 128
    _epilogue_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
        acc, acc.stride(0), scale, zero, code_sum, weight_scale, weight_zero, weight_code_sum,
        bias if bias is not None else weight_scale, out, out.stride(0), m, n, k,
        HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, num_warps=4,
    )
    return out


def groups_config(cfg: dict[str, int], group_width: int) -> dict[str, int]:
    """The ungrouped GEMM's tile config adapted to the block-scaled kernel: no SPLIT_K,
    BLOCK_K at most the group width, and 128×64 tiles (8 warps, BLOCK_K 128) in place of
    128×128 ones: the fp32 group accumulator beside the int32 one spilled 56 B per thread
    there on sm_90 and 16 B on sm_80, and none at 128×64 on either
    (tests/kernels/aot_compile.py)."""
    cfg = {key: v for key, v in cfg.items() if key != "SPLIT_K"}
    if cfg["BLOCK_M"] * cfg["BLOCK_N"] >= 128 * 128:
        cfg.update(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, num_warps=8)
    cfg["BLOCK_K"] = min(cfg["BLOCK_K"], group_width)
    return cfg


def w4a4_gemm_groups_triton(
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
    config: dict[str, int] | None = None,
    tuned_configs: str = "",
) -> torch.Tensor:
    """Block-scaled GEMM: codes int8 [M, K], scale / zero f32 and code_sum i32 [M, G] per
    token and activation group of K/G channels, qweight_g uint8 [N, K/2] (grouped layout),
    group_code_sum i32 [G, N] → y [M, N] out_dtype. The tile config is the ungrouped GEMM's
    for this shape (`launch_config`), with BLOCK_K capped at the group width and no split-K
    (the group fold is in fp32, so partials would no longer sum exactly)."""
    m, k = codes.shape
    n = qweight_g.shape[0]
    g = scale.shape[-1]
    if g < 1 or k % g or (k // g) % 64 or qweight_g.shape[1] * 2 != k:
        raise ValueError(f"need groups of a multiple of 64 channels and qweight [N, K/2]; got "
                         f"codes {tuple(codes.shape)}, {g} groups, qweight "
                         f"{tuple(qweight_g.shape)}")
    for name, t in (("scale", scale), ("zero", zero), ("code_sum", code_sum)):
        if tuple(t.shape) != (m, g):
            raise ValueError(f"{name} must be [{m}, {g}], got {tuple(t.shape)}")
    if tuple(group_code_sum.shape) != (g, n):
        raise ValueError(f"group_code_sum must be [{g}, {n}], got {tuple(group_code_sum.shape)}")
    kg = k // g
    codes = codes.contiguous()
    qweight_g = qweight_g.contiguous()
    out = torch.empty((m, n), dtype=out_dtype, device=codes.device)
    if m == 0:
        return out
    cfg = groups_config(launch_config(m, n, k, codes.device, config, split_k=False,
                                      tuned_configs=tuned_configs), kg)
    _w4a4_gemm_groups_kernel[(tile_count(m, n, cfg),)](
        codes, codes.stride(0), qweight_g, qweight_g.stride(0),
        scale.contiguous(), zero.contiguous(), code_sum.contiguous(),
        weight_scale, weight_zero, group_code_sum.contiguous(),
        bias if bias is not None else weight_scale,  # never read when HAS_BIAS is False
        out, out.stride(0), m, n, g, kg,
        HAS_BIAS=bias is not None, **cfg,
    )
    return out
