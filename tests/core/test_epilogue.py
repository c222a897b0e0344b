"""duquant_serve/core/epilogue.py: the constants every integer path builds its epilogue from
reproduce docs/epilogue.md's formula (core.reference.epilogue_ref)."""

from __future__ import annotations

import pytest
import torch

from duquant_serve.core.epilogue import distributed, rank2_rhs, weight_correction
from duquant_serve.core.reference import epilogue_ref


def _case(m: int, n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    qx = torch.randint(0, 16, (m, k), generator=g)
    qw = torch.randint(0, 16, (n, k), generator=g)
    acc = (qx @ qw.t()).to(torch.int32)
    sx, sw = torch.rand(m, generator=g) + 0.01, torch.rand(n, generator=g) * 1e-2 + 1e-3
    zx = torch.randint(-3, 19, (m,), generator=g).float()  # zeros may leave 0..15
    zw = torch.randint(-3, 19, (n,), generator=g).float()
    return acc, qx, qw, sx, zx, qx.sum(-1, dtype=torch.int32), sw, zw, qw.sum(-1, dtype=torch.int32)


def test_rank2_form_is_the_expanded_bracket_exactly():
    acc, qx, qw, sx, zx, sqx, sw, zw, sqw = _case(5, 7, 96, 0)
    k = qx.shape[1]
    assert torch.equal(weight_correction(zw, sqw, k), sqw.double() - k * zw.double())
    rhs = rank2_rhs(zw, sqw, k)
    bracket = acc.double() - torch.stack((sqx.double(), zx.double()), 1) @ rhs
    expanded = ((qx.double() - zx.double()[:, None]) @ (qw.double() - zw.double()[:, None]).t())
    assert torch.equal(bracket, expanded)  # integers: exact in float64
    assert rank2_rhs(zw, sqw, k, torch.float32).dtype == torch.float32


@pytest.mark.parametrize("shift", [0, 8])
def test_distributed_constants_give_the_reference_output(shift):
    # The CUTLASS sm_90a tree: y = s_x·(u·acc' − (v·Sx + w·z_x)) + bias, acc' = Σ qx·(qw − shift).
    acc, qx, qw, sx, zx, sqx, sw, zw, sqw = _case(9, 33, 256, shift + 1)
    k = qx.shape[1]
    bias = torch.randn(33)
    c = distributed(sw, zw, sqw, k, shift)
    assert c.u.dtype == c.v.dtype == c.w.dtype == torch.float32
    acc_s = (qx @ (qw - shift).t()).float()
    y = sx[:, None] * (c.u * acc_s - (c.v * sqx.float()[:, None] + c.w * zx[:, None])) + bias
    ref = epilogue_ref(acc, sx, zx, sqx, sw, zw, sqw, bias, k, torch.float64)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    # Forgetting the shift (or applying it twice) is off by far more than that.
    wrong = distributed(sw, zw, sqw, k, 8 - shift)
    y_wrong = sx[:, None] * (wrong.u * acc_s - (wrong.v * sqx.float()[:, None]
                                                + wrong.w * zx[:, None])) + bias
    assert (y_wrong.double() - ref).abs().max() > 1e-2
