import pytest
import torch

from duquant_serve.core.reference import (
    QuantLinearModule,
    fake_quant_linear,
    gemm_epilogue_ref,
    prologue_ref,
    quantize_linear,
    w4a4_linear_ref,
)
from duquant_serve.core.transform import build_input_transform


def _layer(k=192, n=80, bias=True, bits=(4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, k, generator=g)
    x[:, 5] *= 30
    t = build_input_transform(x, 64, 16, g)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    return quantize_linear(t.apply_to_weight(w), t, b, bits[0], bits[1], 0.8, 0.9), w, b


@pytest.mark.parametrize("bits", [(4, 4), (4, 8), (8, 8)])
def test_integer_path_equals_fake_quant(bits):
    lay, _, _ = _layer(bits=bits)
    x = torch.randn(7, 192) * 3
    y_int = w4a4_linear_ref(x, lay)
    y_fake = fake_quant_linear(x, lay)
    assert (y_int - y_fake).norm() / y_fake.norm() < 1e-5


def test_epilogue_formula_against_float64_dequant():
    lay, _, _ = _layer()
    x = torch.randn(5, 192)
    qx, sx, zx, sum_qx = prologue_ref(x, lay.transform, 4, 0.9)
    qw = lay.weight_codes()
    assert torch.equal(sum_qx, qx.sum(1, dtype=torch.int32))
    y = gemm_epilogue_ref(qx, sx, zx, sum_qx, qw, lay.weight_scale, lay.weight_zero,
                          qw.sum(1, dtype=torch.int32), lay.bias, torch.float64)
    xd = (qx.double() - zx.double()[:, None]) * sx.double()[:, None]
    wd = (qw.double() - lay.weight_zero.double()[:, None]) * lay.weight_scale.double()[:, None]
    assert torch.allclose(y, xd @ wd.t() + lay.bias.double(), rtol=1e-9, atol=1e-9)


def test_w4a4_close_to_fp_on_smooth_inputs():
    lay, w, b = _layer(bias=True)
    x = torch.randn(16, 192)
    y = w4a4_linear_ref(x, lay)
    ref = x @ w.t() + b
    assert (y - ref).norm() / ref.norm() < 0.25  # 4-bit: coarse but clearly the same function


def test_module_modes_and_batch_shape():
    lay, _, _ = _layer()
    x = torch.randn(2, 3, 192)
    a = QuantLinearModule(lay, "fake")(x)
    b = QuantLinearModule(lay, "int")(x)
    assert a.shape == (2, 3, 80) and torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        QuantLinearModule(lay, "other")
