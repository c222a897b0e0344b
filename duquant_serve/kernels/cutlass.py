"""Python face of cutlass_ext: loads libduquant_ext.so with ctypes (lazily) and calls it.

The library is torch-free (raw pointers + a CUDA stream), so one build serves any torch version
(cutlass_ext/README.md). Search order: $DUQUANT_EXT_LIB, then cutlass_ext/build/ next to the
package. `load_error()` says why it is unavailable; nothing here raises at import.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

_ERRORS = {1: "shape/alignment not implementable", 2: "workspace too small",
           3: "CUTLASS initialize failed", 4: "launch failed", 5: "arch not built"}


class W4A4Args(ctypes.Structure):
    """Mirror of duquant_w4a4_args in cutlass_ext/csrc/duquant_ext.h (field order matters)."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("a", "b", "d", "sx", "zx", "sqx", "u", "v", "w", "bias")] + [
        ("m", ctypes.c_int), ("n", ctypes.c_int), ("k", ctypes.c_int), ("out_dtype", ctypes.c_int)]


_OUT_DTYPES = {torch.bfloat16: 0, torch.float16: 1}


def _candidates() -> list[Path]:
    out = []
    env = os.environ.get("DUQUANT_EXT_LIB")
    if env:
        out.append(Path(env))
    out.append(Path(__file__).resolve().parents[2] / "cutlass_ext" / "build" / "libduquant_ext.so")
    return out


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    tried = []
    for p in _candidates():
        if not p.is_file():
            tried.append(f"{p} (missing)")
            continue
        try:
            lib = ctypes.CDLL(str(p))
        except OSError as e:  # not a library for this machine, or a truncated file
            tried.append(f"{p} ({e})")
            continue
        try:  # an older build lacks newer entry points: say so instead of crashing
            lib.duquant_built_archs.restype = ctypes.c_int
            vp, i = ctypes.c_void_p, ctypes.c_int
            lib.duquant_gemm_s8s8s32_sm90.argtypes = [vp, vp, vp, i, i, i, vp, ctypes.c_size_t, vp]
            lib.duquant_gemm_s8s8s32_sm90.restype = i
            lib.duquant_gemm_u4u4s32_sm80.argtypes = [vp, vp, vp, i, i, i, vp]
            lib.duquant_gemm_u4u4s32_sm80.restype = i
            for fused in (lib.duquant_w4a4_gemm_sm90, lib.duquant_w4a4_gemm_sm90_packed):
                fused.argtypes = [ctypes.POINTER(W4A4Args), vp, ctypes.c_size_t, vp]
                fused.restype = i
            for query in (lib.duquant_w4a4_gemm_sm90_workspace,
                          lib.duquant_w4a4_gemm_sm90_packed_workspace):
                query.argtypes = [ctypes.POINTER(W4A4Args), ctypes.POINTER(ctypes.c_size_t)]
                query.restype = i
        except AttributeError as e:
            tried.append(f"{p} (stale build: {e}; rebuild with cutlass_ext/build.sh)")
            continue
        return lib, None
    return None, "libduquant_ext.so not loadable: " + "; ".join(tried) + \
        " (build it with cutlass_ext/build.sh)"


def load_error() -> str | None:
    return _load()[1]


def built_archs() -> set[str]:
    lib, _ = _load()
    if lib is None:
        return set()
    bits = lib.duquant_built_archs()
    return {a for bit, a in ((1, "sm80"), (2, "sm90a")) if bits & bit}


@functools.lru_cache(maxsize=4096)
def _fused_workspace_bytes(packed: bool, m: int, n: int, k: int, out_dtype: int,
                           device_index: int | None) -> int:
    """Workspace the fused kernel's tile config for this problem needs (0 unless stream-K),
    asked of the library once per shape and device (its SM count enters the split)."""
    lib, err = _load()
    if lib is None:
        raise RuntimeError(err)
    query = (lib.duquant_w4a4_gemm_sm90_packed_workspace if packed
             else lib.duquant_w4a4_gemm_sm90_workspace)
    args = W4A4Args(*([None] * 10), m, n, k, out_dtype)
    size = ctypes.c_size_t(0)
    with torch.cuda.device(device_index):
        _check(query(ctypes.byref(args), ctypes.byref(size)),
               f"{query.__name__}(M={m}, N={n}, K={k})")
    return size.value


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what}: {_ERRORS.get(rc, rc)}")


def gemm_s8_sm90_cuda(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a int8 [M, K] · b int8 [N, K]ᵀ → int32 [M, N] (K % 16 == 0, N % 4 == 0)."""
    lib, err = _load()
    if lib is None:
        raise RuntimeError(err)
    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need int8 [M,K]·[N,K], got {a.dtype}{tuple(a.shape)}, "
                         f"{b.dtype}{tuple(b.shape)}")
    a, b = a.contiguous(), b.contiguous()
    m, k = a.shape
    n = b.shape[0]
    d = torch.empty((m, n), dtype=torch.int32, device=a.device)
    if m == 0:
        return d
    stream = torch.cuda.current_stream(a.device).cuda_stream
    # Its tile schedulers need no workspace (the library refuses, never overruns, if one did).
    rc = lib.duquant_gemm_s8s8s32_sm90(a.data_ptr(), b.data_ptr(), d.data_ptr(), m, n, k,
                                       None, 0, stream)
    _check(rc, f"duquant_gemm_s8s8s32_sm90(M={m}, N={n}, K={k})")
    return d


def gemm_u4_sm80_cuda(a_packed: torch.Tensor, b_packed: torch.Tensor) -> torch.Tensor:
    """a uint8 [M, K/2] · b uint8 [N, K/2]ᵀ (4-bit packed) → int32 [M, N] (K % 32 == 0)."""
    lib, err = _load()
    if lib is None:
        raise RuntimeError(err)
    a, b = a_packed.contiguous(), b_packed.contiguous()
    m, n, k = a.shape[0], b.shape[0], a.shape[1] * 2
    d = torch.empty((m, n), dtype=torch.int32, device=a.device)
    if m == 0:
        return d
    stream = torch.cuda.current_stream(a.device).cuda_stream
    rc = lib.duquant_gemm_u4u4s32_sm80(a.data_ptr(), b.data_ptr(), d.data_ptr(), m, n, k, stream)
    _check(rc, f"duquant_gemm_u4u4s32_sm80(M={m}, N={n}, K={k})")
    return d


def w4a4_gemm_sm90_cuda(
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
    """Fused sm_90a GEMM + EVT epilogue: y = sx·(u·acc − (v·Σqx + w·zx)) + bias (docs/epilogue.md).

    packed=False: qweight int8 [N, K] codes (w4a4_sm90_evt.cu); packed=True: uint8 [N, K/2],
    two signed 4-bit codes q − 8 per byte, v = sw·(zw − 8) (w4a4_sm90_packed.cu).
    """
    lib, err = _load()
    if lib is None:
        raise RuntimeError(err)
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"fused sm90 kernel writes bf16/fp16, not {out_dtype}")
    m, k = codes.shape
    n = qweight.shape[0]
    if qweight.shape[1] * (2 if packed else 1) != k:
        raise ValueError(f"weights {tuple(qweight.shape)} do not match K={k} (packed={packed})")
    tensors = [codes.contiguous(), qweight.contiguous()] + [
        t.contiguous() for t in (scale, zero, code_sum, u, v, w)]
    if bias is not None:
        bias = bias.to(out_dtype).contiguous()
    out = torch.empty((m, n), dtype=out_dtype, device=codes.device)
    if m == 0:
        return out
    a, b, sx, zx, sqx, uu, vv, ww = tensors
    args = W4A4Args(a.data_ptr(), b.data_ptr(), out.data_ptr(), sx.data_ptr(), zx.data_ptr(),
                    sqx.data_ptr(), uu.data_ptr(), vv.data_ptr(), ww.data_ptr(),
                    bias.data_ptr() if bias is not None else None, m, n, k,
                    _OUT_DTYPES[out_dtype])
    fn = lib.duquant_w4a4_gemm_sm90_packed if packed else lib.duquant_w4a4_gemm_sm90
    # Per call, like the prologue's scratch: the caching allocator makes it a lookup, a CUDA
    # graph takes it from its own pool, and concurrent streams never share one (the stream-K
    # decode tiles keep partial sums and arrival flags there).
    need = _fused_workspace_bytes(packed, m, n, k, _OUT_DTYPES[out_dtype], codes.device.index)
    ws = torch.empty(max(need, 1), dtype=torch.uint8, device=codes.device)
    stream = torch.cuda.current_stream(codes.device).cuda_stream
    rc = fn(ctypes.byref(args), ws.data_ptr(), need, stream)
    _check(rc, f"{fn.__name__}(M={m}, N={n}, K={k})")
    return out
