import pytest
import torch

from duquant_serve.core.pack import pack_int4, unpack_int4
from duquant_serve.core.quant import (
    NonFiniteInputError,
    dequantize,
    quantize_per_channel,
    quantize_per_token,
)


def test_per_token_codes_in_range_and_error_bounded():
    x = torch.randn(33, 576) * torch.logspace(-2, 2, 33).unsqueeze(1)
    q, s, z = quantize_per_token(x, 4, 1.0)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    err = (dequantize(q, s[:, None], z[:, None]) - x).abs()
    assert (err <= s[:, None] * 0.5 + 1e-6 * x.abs()).all()  # half a step without clipping


def test_clip_ratio_clips_extremes():
    x = torch.linspace(-1, 1, 64).unsqueeze(0)
    q, s, z = quantize_per_token(x, 4, 0.9)
    xh = dequantize(q, s[:, None], z[:, None])
    assert xh.max() <= 0.9 + 1e-6 and xh.min() >= -0.9 - s.item()


def test_all_zero_rows_dequantize_to_zero():
    q, s, z = quantize_per_token(torch.zeros(3, 16), 4, 0.9)
    assert torch.equal(dequantize(q, s[:, None], z[:, None]), torch.zeros(3, 16))


def test_constant_rows_stay_finite_and_in_range():
    # Reference semantics: scale clamps at 1e-5 and the zero point at ±1e4, so a constant
    # non-zero row is not representable; what must hold is finite output and valid codes.
    x = torch.full((2, 16), 5.0)
    q, s, z = quantize_per_token(x, 4, 0.9)
    assert int(q.max()) <= 15
    assert torch.isfinite(dequantize(q, s[:, None], z[:, None])).all()
    assert (s >= 1e-5).all() and (z.abs() <= 1e4).all()


def test_huge_values_scale_clamped_not_overflowing():
    x = torch.tensor([[-1e9, 0.0, 1e9]])
    q, s, z = quantize_per_token(x, 4, 1.0)
    assert s.item() == pytest.approx(1e4)
    assert torch.isfinite(dequantize(q, s[:, None], z[:, None])).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_is_a_clear_error(bad):
    x = torch.randn(2, 8)
    x[1, 3] = bad
    with pytest.raises(NonFiniteInputError, match="non-finite"):
        quantize_per_token(x, 4)
    with pytest.raises(NonFiniteInputError, match="weight"):
        quantize_per_channel(x, 4)


def test_rounding_is_half_to_even():
    # lo=0, hi=15 → scale 1, zero 0: 2.5 → 2 and 3.5 → 4 under round-half-to-even.
    x = torch.tensor([[0.0, 2.5, 3.5, 15.0]])
    q, _, _ = quantize_per_token(x, 4, 1.0)
    assert q.tolist() == [[0, 2, 4, 15]]


def test_per_channel_lwc_factors_replace_clip():
    w = torch.randn(4, 32)
    q1, s1, _ = quantize_per_channel(w, 4, 0.8)
    q2, s2, _ = quantize_per_channel(w, 4, 1.0, lo_factor=torch.full((4,), 0.8),
                                     hi_factor=torch.full((4,), 0.8))
    assert torch.equal(q1, q2) and torch.allclose(s1, s2)


def test_pack_unpack_round_trip():
    q = torch.randint(0, 16, (7, 576), dtype=torch.uint8)
    p = pack_int4(q)
    assert p.shape == (7, 288) and p.dtype == torch.uint8
    assert torch.equal(unpack_int4(p), q)
    assert p[0, 0].item() == q[0, 0].item() | (q[0, 1].item() << 4)  # low nibble first


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="> 15"):
        pack_int4(torch.full((1, 2), 16, dtype=torch.uint8))
    with pytest.raises(TypeError):
        pack_int4(torch.zeros(1, 2, dtype=torch.int32))
