import math

import pytest
import torch

from duquant_serve.core.transform import (
    InputTransform,
    TransformError,
    build_input_transform,
    choose_block_size,
    greedy_rotation,
    hadamard,
    initial_rotation,
    is_permutation,
    orthogonality_error,
    permutation_respects_shards,
    smoothing_factors,
    zigzag_permutation,
)


def _outlier_activation(t: int, c: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, c, generator=g, dtype=torch.float64)
    x[:, 3] *= 40  # a normal outlier channel (all tokens)
    x[5, c - 7] = 500.0  # a massive outlier (one token)
    return x


@pytest.mark.parametrize("n", [2, 8, 64, 128])
def test_initial_rotation_is_orthogonal_with_uniform_first_row(n):
    r = initial_rotation(n)
    assert orthogonality_error(r) < 1e-12
    assert torch.allclose(r[0].abs(), torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64))


def test_greedy_rotation_is_orthogonal_and_never_increases_the_peak():
    x = _outlier_activation(256, 64).float()
    g = torch.Generator().manual_seed(0)
    r = greedy_rotation(x, 64, g)
    assert orthogonality_error(r) < 1e-10
    assert (x @ r.float()).abs().max() < 0.5 * x.abs().max()  # massive outlier spread out


def test_greedy_rotation_with_no_steps_is_identity():
    r = greedy_rotation(torch.randn(16, 8), 0, torch.Generator().manual_seed(0))
    assert torch.equal(r, torch.eye(8, dtype=torch.float64))


@pytest.mark.parametrize("select", ["column", "row"])
@pytest.mark.parametrize("shards", [1, 2])
def test_transform_keeps_x_wt_invariant(select, shards):
    c = 256
    x = _outlier_activation(64, c)
    w = torch.randn(48, c, dtype=torch.float64)
    smooth = torch.rand(c, dtype=torch.float64) + 0.5
    t = build_input_transform((x / smooth).float(), 32, 16, torch.Generator().manual_seed(1),
                              shards=shards, channel_select=select, smooth=smooth.float())
    xd, td = x, InputTransform(t.r1.double(), t.perm, t.r2.double(), t.smooth.double())
    y = td.apply(xd) @ td.apply_to_weight(w).t()
    assert torch.allclose(y, x @ w.t(), atol=1e-6 * (x @ w.t()).abs().max())
    assert orthogonality_error(t.r1) < 1e-5 and orthogonality_error(t.r2) < 1e-5
    assert is_permutation(t.perm, c)
    assert permutation_respects_shards(t.perm, shards)


def test_transform_reduces_outliers():
    x = _outlier_activation(128, 256)
    t = build_input_transform(x.float(), 64, 64, torch.Generator().manual_seed(0))
    assert t.apply(x.float()).abs().max() < 0.25 * x.abs().max()


def test_zigzag_matches_paper_definition():
    # Channel j has |max| = j; K = 4 blocks of 2. Descending order 7..0 is dealt to blocks
    # 0,1,2,3 then 3,2,1,0 (the paper's back-and-forth), each block in descending order.
    perm = zigzag_permutation(torch.arange(8.0), block=2)
    assert perm.tolist() == [7, 0, 6, 1, 5, 2, 4, 3]


def test_zigzag_block_membership_follows_theorem2_pattern():
    k, b = 4, 8
    vals = torch.randperm(k * b).double()
    perm = zigzag_permutation(vals, b)
    ranks = torch.argsort(torch.argsort(vals, descending=True))  # rank 0 = largest
    for i in range(k):  # block i holds ranks {2mK + i, 2(m+1)K - i - 1}
        got = sorted(ranks[perm[i * b:(i + 1) * b]].tolist())
        want = sorted([2 * m * k + i for m in range(b // 2)] + [2 * (m + 1) * k - i - 1 for m in range(b // 2)])
        assert got == want


def test_zigzag_within_shards():
    perm = zigzag_permutation(torch.rand(64), block=8, shards=4)
    assert is_permutation(perm, 64)
    assert permutation_respects_shards(perm, 4)
    assert not permutation_respects_shards(torch.arange(64).flip(0), 4)


@pytest.mark.parametrize("width,conf,shards,want", [
    (576, 128, 1, 64), (1536, 128, 1, 128), (4096, 128, 1, 128), (576, 128, 2, 32),
    (11008, 128, 1, 128), (96, 64, 1, 32)])
def test_choose_block_size(width, conf, shards, want):
    assert choose_block_size(width, conf, shards) == want


@pytest.mark.parametrize("width,conf,shards", [(100, 128, 1), (576, 96, 1), (10, 8, 3)])
def test_impossible_block_size_is_a_clear_error(width, conf, shards):
    with pytest.raises(TransformError):
        choose_block_size(width, conf, shards)


def test_hadamard_orthogonal_and_rejects_non_power_of_two():
    assert orthogonality_error(hadamard(64)) < 1e-12
    with pytest.raises(TransformError):
        hadamard(48)


def test_smoothing_formula():
    a = torch.tensor([4.0, 1.0, 0.0])
    w = torch.tensor([1.0, 4.0, 1.0])
    s = smoothing_factors(a, w, 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 0.5, max(1e-5 ** 0.5, 1e-5)]), rtol=1e-5)


def test_first_difference_names_the_component():
    t = build_input_transform(torch.randn(32, 64), 16, 4, torch.Generator().manual_seed(0))
    other = InputTransform(t.r1.clone(), t.perm.flip(0), t.r2.clone())
    assert t.first_difference(InputTransform(t.r1.clone(), t.perm.clone(), t.r2.clone())) is None
    assert t.first_difference(other) == "perm"


def test_malformed_transform_is_refused_at_construction():
    r = torch.eye(64)
    with pytest.raises(TransformError, match="multiple of the rotation block 64"):
        InputTransform(r, torch.arange(96), r)
    with pytest.raises(TransformError, match="same square"):
        InputTransform(r, torch.arange(128), torch.eye(32))
    with pytest.raises(TransformError, match="smooth"):
        InputTransform(r, torch.arange(128), r, torch.ones(64))
    assert InputTransform(r, torch.arange(128), r, torch.ones(128)).width == 128
