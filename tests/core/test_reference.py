import pytest
import torch

from duquant_serve.core.quant import fake_quantize_per_token
from duquant_serve.core.reference import (
    QuantizedLinear,
    QuantLinearModule,
    epilogue_ref,
    exact_quant_linear,
    fake_quant_linear,
    gemm_epilogue_ref,
    prologue_ref,
    quantize_linear,
    tree_sum,
    w4a4_linear_ref,
)
from duquant_serve.core.transform import InputTransform, TransformError, build_input_transform


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


def test_epilogue_rank2_form_equals_the_expanded_formula():
    """epilogue_ref computes the bracket as one rank-2 update; the expanded formula of
    docs/epilogue.md, term by term in float64, must give the same bits (the bracket is exact either
    way), including zero points far outside the code range."""
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        m, n = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 50, (1,), generator=g))
        k = int(torch.randint(2, 20000, (1,), generator=g))
        acc = torch.randint(0, 225 * k + 1, (m, n), dtype=torch.int32, generator=g)
        sqx = torch.randint(0, 15 * k + 1, (m,), dtype=torch.int32, generator=g)
        sqw = torch.randint(0, 15 * k + 1, (n,), dtype=torch.int32, generator=g)
        zx = torch.randint(-10000, 10001, (m,), generator=g).float()
        zw = torch.randint(-10000, 10001, (n,), generator=g).float()
        sx, sw = torch.rand(m, generator=g) * 0.1, torch.rand(n, generator=g) * 0.1
        bias = torch.randn(n, generator=g) if trial % 2 else None
        d = lambda t: t.double()  # noqa: E731
        bracket = (d(acc) - d(zw)[None, :] * d(sqx)[:, None] - d(zx)[:, None] * d(sqw)[None, :]
                   + k * d(zx)[:, None] * d(zw)[None, :])
        want = d(sx)[:, None] * d(sw)[None, :] * bracket
        if bias is not None:
            want = want + d(bias)[None, :]
        for dtype in (torch.float64, torch.float32, torch.bfloat16):
            got = epilogue_ref(acc, sx, zx, sqx, sw, zw, sqw, bias, k, dtype)
            assert torch.equal(got, want.to(dtype)), (trial, dtype)


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


def _grouped_layer(groups=2, k=256, n=48, seed=1, shards=None):
    """A row-parallel-style layer: group-local transform, `shards` row-parallel shards
    (default: tp_shards = groups, one group each), bias, smoothing."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, k, generator=g)
    x[:, 3] *= 40  # an outlier in group 0 only: per-group ranges must differ from whole-row ones
    t = build_input_transform(x, 32, 8, g, shards=groups,
                              smooth=torch.rand(k, generator=g) + 0.5)
    w = torch.randn(n, k, generator=g)
    lay = quantize_linear(t.apply_to_weight(w), t, torch.randn(n, generator=g), 4, 4, 0.8, 0.9,
                          act_groups=groups, shards=groups if shards is None else shards)
    return lay, x


def _split_by_hand(lay, x, shards):
    """What tensor-parallel ranks compute, built from the stored tensors directly (the way the
    plugin slices them: qweight columns, rank-local perm, smooth slice, bias on rank 0)."""
    kp = lay.in_features // shards
    t = lay.transform
    ys = []
    for r in range(shards):
        part = QuantizedLinear(
            qweight=lay.qweight[:, r * kp // 2:(r + 1) * kp // 2], weight_scale=lay.weight_scale,
            weight_zero=lay.weight_zero,
            transform=InputTransform(t.r1, t.perm[r * kp:(r + 1) * kp] - r * kp, t.r2,
                                     t.smooth[r * kp:(r + 1) * kp]),
            bias=lay.bias if r == 0 else None, w_bits=4, a_bits=4, act_clip_ratio=lay.act_clip_ratio)
        ys.append(w4a4_linear_ref(x[:, r * kp:(r + 1) * kp], part))
    return ys


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_layer_is_the_sum_of_its_tensor_parallel_shards(groups):
    lay, x = _grouped_layer(groups)
    y = w4a4_linear_ref(x, lay)
    ys = _split_by_hand(lay, x, groups)
    assert torch.equal(y, tree_sum(ys))  # TP = groups: every rank one group, then all-reduce
    if groups == 4:  # TP = 2: each rank sums its two groups, the all-reduce adds the halves
        assert torch.equal(y, (ys[0] + ys[1]) + (ys[2] + ys[3]))
    # Per-group ranges are really used: quantizing whole rows gives other numbers.
    whole = QuantizedLinear(lay.qweight, lay.weight_scale, lay.weight_zero, lay.transform, lay.bias,
                            4, 4, lay.act_clip_ratio, act_groups=1)
    assert not torch.allclose(w4a4_linear_ref(x, whole), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shards", [1, 2])
def test_groups_inside_a_shard_are_summed_before_rounding(shards):
    # Four activation groups: one shard (column-parallel or tp_shards = 1) or two of two.
    lay, x = _grouped_layer(4, shards=shards)
    xb = x.bfloat16()
    y = w4a4_linear_ref(xb, lay)
    kg = lay.in_features // 4
    parts = [w4a4_linear_ref(xb[:, i * kg:(i + 1) * kg].float(), g)  # each group alone, fp32
             for i, g in enumerate(lay.groups())]
    per = 4 // shards
    shard_sums = [sum(parts[s * per:(s + 1) * per]).bfloat16() for s in range(shards)]
    # Within a shard the groups meet in one accumulator, rounded to bfloat16 once; across
    # shards the bfloat16 outputs are added (the all-reduce).
    want = tree_sum(shard_sums)
    assert (y.float() - want.float()).abs().max() <= 1e-6 + 2 ** -7 * want.float().abs().max()
    if shards == 1:
        torch.testing.assert_close(y, sum(parts).bfloat16(), rtol=0, atol=0)
    # The shards really are rounded apart: the reference equals the tree sum of its shards.
    if shards == 2:
        torch.testing.assert_close(
            y, tree_sum([w4a4_linear_ref(xb[:, i * 2 * kg:(i + 1) * 2 * kg], s)
                         for i, s in enumerate(lay.shard_linears())]), rtol=0, atol=0)


@pytest.mark.parametrize("shards", [2, 1])
def test_grouped_fake_quant_matches_integer_path(shards):
    lay, x = _grouped_layer(2, shards=shards)
    y_int = w4a4_linear_ref(x, lay)
    assert (fake_quant_linear(x, lay) - y_int).norm() / y_int.norm() < 1e-5
    assert torch.allclose(QuantLinearModule(lay, "fake")(x), y_int, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("groups", "shards"), [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_exact_mode_equals_the_integer_path_bit_for_bit(groups, shards):
    """float64 dequantize-then-matmul, rounded once per shard, is the integer reference's
    number: the method rows `duquant eval` reports are what the checkpoint computes. fp32
    fake quantization is not (its sum rounds at every step)."""
    lay, x = _grouped_layer(groups, shards=shards)
    y_int = w4a4_linear_ref(x, lay)
    torch.testing.assert_close(exact_quant_linear(x, lay), y_int, rtol=0, atol=0)
    torch.testing.assert_close(QuantLinearModule(lay, "exact")(x), y_int, rtol=0, atol=0)
    assert not torch.equal(fake_quant_linear(x, lay), y_int)  # fp32 fake is another rounding
    xb = x.bfloat16()  # the output dtype is the input's, rounded once per shard
    torch.testing.assert_close(exact_quant_linear(xb, lay), w4a4_linear_ref(xb, lay),
                               rtol=0, atol=0)


def test_shards_must_divide_groups():
    lay, _ = _grouped_layer(2)
    with pytest.raises(ValueError, match="spread evenly"):
        QuantizedLinear(lay.qweight, lay.weight_scale, lay.weight_zero, lay.transform, None,
                        4, 4, 0.9, act_groups=2, shards=4)


def test_groups_must_respect_the_transform():
    lay, _ = _grouped_layer(2)
    bad = QuantizedLinear(lay.qweight, lay.weight_scale, lay.weight_zero,
                          InputTransform(lay.transform.r1, lay.transform.perm.flip(0), lay.transform.r2),
                          None, 4, 4, 0.9, act_groups=2)
    with pytest.raises(TransformError, match="moves channels"):
        bad.groups()


def test_fake_quant_quantizes_in_float32_under_autocast():
    # Under bfloat16 autocast only the final product may drop precision: the transform and the
    # 4-bit quantizer must see float32, or their rounding moves codes across grid points.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 128, generator=g)
    x[:, 5] *= 20
    w = torch.randn(48, 128, generator=g) / 10
    tr = build_input_transform(x, 32, 8, g)
    lay = quantize_linear(tr.apply_to_weight(w), tr, None, 4, 4, 1.0, 0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fake_quant_linear(x, lay)
    xq = fake_quantize_per_token(tr.apply(x), 4, 0.9)
    want = (xq.bfloat16() @ lay.dequantized_weight().bfloat16().t()).float()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
