"""Per-token quantization arithmetic shared by the Triton prologue kernels (tiled and split):
round half-to-even, scale / zero point from a token's min and max, and its 4-bit codes —
core.quant's definitions, written for Triton."""

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def round_half_even(v, USE_LIBDEVICE: tl.constexpr):
    # libdevice.rint is one instruction on GPU but the interpreter lacks it; the 1.5·2^23 trick
    # rounds half-to-even for |v| < 2^22 (larger values only reach clamped code/zero ranges).
    if USE_LIBDEVICE:
        return libdevice.rint(v)
    else:
        r = (v + 12582912.0) - 12582912.0
        return tl.where(tl.abs(v) < 4194304.0, r, v)


@triton.jit
def token_scale_zero(lo, hi, clip_ratio, QMAX: tl.constexpr, USE_LIBDEVICE: tl.constexpr):
    """Per-token scale and zero point from the running min / max (core.quant.choose_qparams)."""
    lo = lo * clip_ratio
    hi = hi * clip_ratio
    scale = tl.math.div_rn(hi - lo, QMAX * 1.0)
    scale = tl.minimum(tl.maximum(scale, 1e-5), 1e4)
    zero = round_half_even(tl.math.div_rn(-lo, scale), USE_LIBDEVICE)
    zero = tl.minimum(tl.maximum(zero, -1e4), 1e4)
    return scale, zero


@triton.jit
def token_codes(w, scale, zero, QMAX: tl.constexpr, USE_LIBDEVICE: tl.constexpr):
    """clamp(round(w / scale) + zero, 0, QMAX) as int32."""
    q = round_half_even(tl.math.div_rn(w, scale), USE_LIBDEVICE) + zero
    return tl.minimum(tl.maximum(q, 0.0), QMAX * 1.0).to(tl.int32)
