"""torch.library ops of duquant_serve/kernels/ops.py: schemas + fakes (opcheck), CPU = reference."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import inverse_perm, make_layer, make_x

from duquant_serve.core.pack import pack_int4, unpack_int4
from duquant_serve.core.reference import prologue_ref, w4a4_linear_ref
from duquant_serve.kernels import ops  # noqa: F401
from duquant_serve.kernels.layout import pack_int4_grouped, to_signed_int4, unpack_signed_int4


def _layer_args(m=7, n=40, k=192, b=64, smooth=True, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = make_layer(n, k, b, smooth, bias, g)
    return lin, make_x(m, k, g)


def test_opcheck_prologue():
    lin, x = _layer_args()
    t = lin.transform
    args = (x, t.r1.contiguous(), t.r2.contiguous(), t.perm, inverse_perm(t.perm), t.smooth, 4,
            0.9)
    torch.library.opcheck(torch.ops.duquant.prologue.default, args)
    q, s, z, qs = torch.ops.duquant.prologue(*args)
    qr, sr, zr, qsr = prologue_ref(x, t, 4, 0.9)
    assert torch.equal(q, qr.to(torch.int8)) and torch.equal(qs, qsr)


@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_w4a4_gemm_and_epilogue(bias):
    lin, x = _layer_args(bias=bias)
    t = lin.transform
    q, s, z, qs = torch.ops.duquant.prologue(x, t.r1, t.r2, t.perm, inverse_perm(t.perm),
                                             t.smooth, 4, 0.9)
    qw = unpack_int4(lin.qweight)
    sqw = qw.sum(-1, dtype=torch.int32)
    gargs = (q, s, z, qs, pack_int4_grouped(qw), lin.weight_scale, lin.weight_zero, sqw,
             lin.bias, torch.float32)
    torch.library.opcheck(torch.ops.duquant.w4a4_gemm.default, gargs)
    y = torch.ops.duquant.w4a4_gemm(*gargs)
    torch.testing.assert_close(y, w4a4_linear_ref(x, lin), rtol=1e-5, atol=1e-5)
    acc = torch.ops.duquant.gemm_s8_sm90(q, qw.to(torch.int8))
    torch.library.opcheck(torch.ops.duquant.gemm_s8_sm90.default, (q, qw.to(torch.int8)))
    eargs = (acc, s, z, qs, lin.weight_scale, lin.weight_zero, sqw, lin.bias, x.shape[1],
             torch.float32)
    torch.library.opcheck(torch.ops.duquant.epilogue.default, eargs)
    torch.testing.assert_close(torch.ops.duquant.epilogue(*eargs), y, rtol=1e-5, atol=1e-5)


def test_opcheck_sm80_gemm_and_pack_codes():
    lin, x = _layer_args()
    t = lin.transform
    q, *_ = torch.ops.duquant.prologue(x, t.r1, t.r2, t.perm, inverse_perm(t.perm), t.smooth,
                                       4, 0.9)
    torch.library.opcheck(torch.ops.duquant.pack_codes.default, (q,))
    qp = torch.ops.duquant.pack_codes(q)
    assert torch.equal(qp, pack_int4(q.view(torch.uint8)))
    torch.library.opcheck(torch.ops.duquant.gemm_u4_sm80.default, (qp, lin.qweight))
    acc = torch.ops.duquant.gemm_u4_sm80(qp, lin.qweight)
    ref = torch.ops.duquant.gemm_s8_sm90(q, unpack_int4(lin.qweight).to(torch.int8))
    assert torch.equal(acc, ref)


def test_opcheck_linear_ref():
    lin, x = _layer_args()
    t = lin.transform
    codes = unpack_int4(lin.qweight)
    sqw = codes.sum(-1, dtype=torch.int32)
    args = (x, t.r1, t.r2, t.perm, t.smooth, codes, lin.weight_scale, lin.weight_zero,
            sqw, lin.bias, 4, 0.9)
    torch.library.opcheck(torch.ops.duquant.linear_ref.default, args)
    assert torch.equal(torch.ops.duquant.linear_ref(*args), w4a4_linear_ref(x, lin))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_fused_sm90_matches_reference(bias, packed):
    lin, x = _layer_args(bias=bias, seed=3)
    t = lin.transform
    q, s, z, qs = torch.ops.duquant.prologue(x, t.r1, t.r2, t.perm, inverse_perm(t.perm),
                                             t.smooth, 4, 0.9)
    qw = unpack_int4(lin.qweight)
    sw, zw = lin.weight_scale.double(), lin.weight_zero.double()
    sqw = qw.sum(-1, dtype=torch.int64).double()
    # The packed kernel multiplies signed codes q − 8: acc' = acc − 8·Σqx, so v takes zw − 8.
    shift = 8 if packed else 0
    u, v, w = sw.float(), (sw * (zw - shift)).float(), (sw * (sqw - x.shape[1] * zw)).float()
    weights = to_signed_int4(lin.qweight) if packed else qw.to(torch.int8)
    args = (q, s, z, qs, weights, u, v, w, lin.bias, torch.float32, packed)
    torch.library.opcheck(torch.ops.duquant.w4a4_gemm_sm90.default, args)
    y, ref = torch.ops.duquant.w4a4_gemm_sm90(*args).double(), w4a4_linear_ref(x, lin).double()
    # u, v, w are rounded to fp32 and u·acc − v·Σqx cancels: ~1e-6 relative, not exact.
    assert float((y - ref).norm() / ref.norm()) < 1e-5


def test_signed_int4_layout_round_trip():
    g = torch.Generator().manual_seed(11)
    q = torch.randint(0, 16, (5, 64), generator=g, dtype=torch.uint8)
    s4 = to_signed_int4(pack_int4(q))
    assert s4.dtype == torch.uint8 and s4.shape == (5, 32)
    assert torch.equal(unpack_signed_int4(s4), q.to(torch.int8) - 8)
    # Two's-complement nibbles, low nibble = even k: the bytes CUTLASS reads as int4b_t.
    lo = (s4 & 0xF).to(torch.int16)
    assert torch.equal(lo - 16 * (lo >= 8).to(torch.int16), q[:, 0::2].to(torch.int16) - 8)
