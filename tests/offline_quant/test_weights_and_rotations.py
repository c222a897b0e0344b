"""GPTQ, the clip search and the learned smoothing + rotations, on synthetic layers."""

import pytest
import torch

from duquant_serve.core.quant import dequantize, fake_quantize_per_token, quantize_per_channel
from duquant_serve.core.transform import (
    build_input_transform,
    orthogonality_error,
    smoothing_factors,
)
from offline_quant.gptq import GPTQError, gptq_quantize, search_clip
from offline_quant.learned_transforms import refine_smoothing_and_rotations
from offline_quant.pipeline import learn_matmul_dtype


def _correlated_inputs(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5
    x = torch.randn(n, k, generator=g) @ mix + 0.3 * torch.randn(n, k, generator=g)
    x[:, 3] *= 12  # an outlier channel
    return x


def _out_err(x, w, w_hat):
    return float((x @ w.t() - x @ w_hat.t()).pow(2).mean())


def test_search_clip_is_never_worse_than_no_clip_per_row():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 96, generator=g)
    h = torch.rand(96, generator=g) + 0.1
    f = search_clip(w, 4, h, grid=20, min_factor=0.5)
    assert f.shape == (64,) and bool(((f >= 0.5) & (f <= 1.0)).all())

    def row_err(lo_hi):
        q, s, z = quantize_per_channel(w, 4, lo_factor=lo_hi, hi_factor=lo_hi)
        return ((dequantize(q, s.unsqueeze(1), z.unsqueeze(1)) - w).pow(2) * h).sum(dim=1)

    chosen, unclipped = row_err(f), row_err(torch.ones(64))
    assert bool((chosen <= unclipped + 1e-6).all())
    # Gaussian rows: clipping the tails pays on most of them.
    assert float(chosen.sum()) < 0.95 * float(unclipped.sum())
    assert float((f < 1).float().mean()) > 0.5


def test_gptq_beats_round_to_nearest_on_the_same_grid():
    x = _correlated_inputs(2048, 128)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(48, 128, generator=g) / 8
    h = (x.t() @ x).double()
    factor = torch.full((48,), 0.9)
    codes, scale, zero = gptq_quantize(w, h, 4, factor)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    q_rtn, s_rtn, z_rtn = quantize_per_channel(w, 4, 0.9)
    # Same per-row grid as the fixed-clip quantizer: only the codes differ.
    torch.testing.assert_close(scale, s_rtn)
    torch.testing.assert_close(zero, z_rtn)
    gptq_err = _out_err(x, w, dequantize(codes, scale.unsqueeze(1), zero.unsqueeze(1)))
    rtn_err = _out_err(x, w, dequantize(q_rtn, s_rtn.unsqueeze(1), z_rtn.unsqueeze(1)))
    assert gptq_err < 0.7 * rtn_err


def test_gptq_handles_dead_channels_and_refuses_bad_hessians():
    x = _correlated_inputs(512, 64)
    x[:, 10] = 0.0  # a channel never active
    w = torch.randn(16, 64)
    codes, scale, zero = gptq_quantize(w, x.t() @ x, 4, torch.ones(16))
    assert torch.isfinite(scale).all() and codes.shape == (16, 64)
    with pytest.raises(GPTQError, match="does not match"):
        gptq_quantize(w, torch.eye(32), 4, torch.ones(16))
    bad = torch.eye(64)
    bad[0, 0] = float("nan")
    with pytest.raises(GPTQError, match="non-finite"):
        gptq_quantize(w, bad, 4, torch.ones(16))


def _site(seed=0, k=256, n=96, block=64):
    x = _correlated_inputs(512, k, seed)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed + 1)) / k**0.5
    s0 = smoothing_factors(x.abs().amax(dim=0), w.abs().amax(dim=0), 0.6)
    tr = build_input_transform((x / s0).reshape(8, 64, k).mean(0), block, 64,
                               torch.Generator().manual_seed(seed))
    return x, w, s0, tr


def _w4a4_error(x, w, s, tr):
    xt, wt = tr.apply(x / s), tr.apply_to_weight(w * s)
    q, sc, z = quantize_per_channel(wt, 4)
    y = fake_quantize_per_token(xt, 4, 0.9) @ dequantize(q, sc.unsqueeze(1), z.unsqueeze(1)).t()
    return float((y - x @ w.t()).pow(2).mean())


@pytest.mark.parametrize("matmul_dtype", [torch.float32, torch.bfloat16])
def test_learned_smoothing_and_rotations_lower_the_w4a4_error_and_stay_exact(matmul_dtype):
    # In bfloat16 products too (the default where the CPU has them): the learned transform is
    # still float32, exactly orthogonal, and lowers the error measured in float32.
    x, w, s0, tr = _site()
    s, new, rep = refine_smoothing_and_rotations(tr, x, w, s0, a_bits=4, w_bits=4, clip=0.9,
                                                 steps=30, matmul_dtype=matmul_dtype)
    assert s.dtype == new.r1.dtype == torch.float32
    assert rep["loss_after"] < 0.9 * rep["loss_before"]
    # Measured again with the real quantizers (not the straight-through ones it trained).
    assert _w4a4_error(x, w, s, new) < 0.9 * _w4a4_error(x, w, s0, tr)
    assert bool((s > 0).all()) and not torch.equal(s, s0)
    assert orthogonality_error(new.r1) < 1e-5 and orthogonality_error(new.r2) < 1e-5
    assert torch.equal(new.perm, tr.perm) and not torch.equal(new.r1, tr.r1)
    # Still an exact change of basis: x'·W'ᵀ = x·Wᵀ.
    torch.testing.assert_close(new.apply(x / s) @ new.apply_to_weight(w * s).t(), x @ w.t(),
                               atol=1e-3, rtol=1e-4)


def test_learning_with_no_steps_keeps_the_start():
    x, w, s0, tr = _site(3)
    s, new, rep = refine_smoothing_and_rotations(tr, x, w, s0, 4, 4, 0.9, steps=0)
    assert torch.equal(s, s0) and rep["loss_after"] == rep["loss_before"]
    torch.testing.assert_close(new.r1, tr.r1)


def test_learn_dtype_choice():
    cpu = torch.device("cpu")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert learn_matmul_dtype("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    assert learn_matmul_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert learn_matmul_dtype("float32", cpu) == torch.float32
    with pytest.raises(ValueError, match="learn_dtype 'fp8'"):
        learn_matmul_dtype("fp8", cpu)
