"""duquant_serve/kernels/triton_gemm.py vs core.reference.gemm_epilogue_ref (TRITON_INTERPRET)."""

from __future__ import annotations

import pytest
import torch

import duquant_serve.kernels.ops  # noqa: F401  (registers torch.ops.duquant.*)
from duquant_serve.core.reference import gemm_epilogue_ref
from duquant_serve.kernels import triton_gemm
from duquant_serve.kernels.knobs import KernelKnobs, KnobError
from duquant_serve.kernels.layout import pack_int4_grouped, unpack_int4_grouped
from duquant_serve.kernels.triton_gemm import epilogue_triton, w4a4_gemm_triton

SMALL_CFG = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, GROUP_M=2, num_warps=4, num_stages=2)


def _operands(m, n, k, bias, g):
    qx = torch.randint(0, 16, (m, k), generator=g, dtype=torch.uint8)
    qw = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    sx = torch.rand(m, generator=g) * 0.1 + 0.01
    zx = torch.randint(-4, 20, (m,), generator=g).float()  # zeros outside 0..15 happen
    sw = torch.rand(n, generator=g) * 0.01 + 1e-3
    zw = torch.randint(-4, 20, (n,), generator=g).float()
    b = torch.randn(n, generator=g) if bias else None
    return qx, qw, sx, zx, sw, zw, b


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("n,k", [(40, 576), (100, 192), (72, 1472)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemm_matches_reference(m, n, k, bias):
    g = torch.Generator().manual_seed(m + n + k)
    qx, qw, sx, zx, sw, zw, b = _operands(m, n, k, bias, g)
    sqx, sqw = qx.sum(-1, dtype=torch.int32), qw.sum(-1, dtype=torch.int32)
    ref = gemm_epilogue_ref(qx, sx, zx, sqx, qw, sw, zw, sqw, b, torch.float32)
    cfg = SMALL_CFG if m > 16 else None  # the launcher's own small-M config, and a tiled one
    y = w4a4_gemm_triton(qx.view(torch.int8), sx, zx, sqx, pack_int4_grouped(qw), sw, zw, sqw,
                         b, torch.float32, config=cfg)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemm_half_outputs(dtype):
    g = torch.Generator().manual_seed(3)
    qx, qw, sx, zx, sw, zw, b = _operands(7, 40, 576, True, g)
    sqx, sqw = qx.sum(-1, dtype=torch.int32), qw.sum(-1, dtype=torch.int32)
    ref = gemm_epilogue_ref(qx, sx, zx, sqx, qw, sw, zw, sqw, b, torch.float32)
    y = w4a4_gemm_triton(qx.view(torch.int8), sx, zx, sqx, pack_int4_grouped(qw), sw, zw, sqw,
                         b.to(dtype), dtype)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)


def test_epilogue_on_int32_accumulator():
    g = torch.Generator().manual_seed(4)
    qx, qw, sx, zx, sw, zw, b = _operands(33, 100, 192, True, g)
    sqx, sqw = qx.sum(-1, dtype=torch.int32), qw.sum(-1, dtype=torch.int32)
    ref = gemm_epilogue_ref(qx, sx, zx, sqx, qw, sw, zw, sqw, b, torch.float32)
    acc = torch.ops.duquant.gemm_s8_sm90(qx.view(torch.int8), qw.view(torch.int8))  # CPU impl
    y = epilogue_triton(acc, sx, zx, sqx, sw, zw, sqw, b, 192, torch.float32)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_grouped_layout_roundtrip_and_rejects_bad_k():
    g = torch.Generator().manual_seed(5)
    q = torch.randint(0, 16, (9, 192), generator=g, dtype=torch.uint8)
    p = pack_int4_grouped(q)
    assert p.shape == (9, 96)
    assert torch.equal(unpack_int4_grouped(p), q)
    # byte j of group 0 holds code j (low) and code 32 + j (high)
    assert torch.equal(p[:, 5], q[:, 5] | (q[:, 37] << 4))
    with pytest.raises(ValueError, match="K % 64"):
        pack_int4_grouped(q[:, :96])


def test_gemm_rejects_k_not_multiple_of_64():
    qx = torch.zeros(1, 96, dtype=torch.int8)
    with pytest.raises(ValueError, match="K % 64"):
        w4a4_gemm_triton(qx, torch.ones(1), torch.zeros(1), torch.zeros(1, dtype=torch.int32),
                         torch.zeros(4, 48, dtype=torch.uint8), torch.ones(4), torch.zeros(4),
                         torch.zeros(4, dtype=torch.int32), None, torch.float32)


@pytest.mark.parametrize("m", [40, 100, 300])
def test_gemm_launcher_configs_match_reference(m):
    """Each M bucket's own tile config (64-code K tiles above decode) with N and M not tile
    multiples: 40 → 64×64, 100 → 64×128, 300 → 128×128 on two warpgroups."""
    g = torch.Generator().manual_seed(m)
    qx, qw, sx, zx, sw, zw, b = _operands(m, 136, 576, True, g)
    sqx, sqw = qx.sum(-1, dtype=torch.int32), qw.sum(-1, dtype=torch.int32)
    ref = gemm_epilogue_ref(qx, sx, zx, sqx, qw, sw, zw, sqw, b, torch.float32)
    y = w4a4_gemm_triton(qx.view(torch.int8), sx, zx, sqx, pack_int4_grouped(qw), sw, zw, sqw,
                         b, torch.float32)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m,n,k,split,bk", [
    (1, 40, 576, 3, 128),   # a short last run of K
    (7, 100, 1472, 4, 64),  # several N tiles, 23 K tiles over 4 runs
    (33, 72, 192, 2, 64),   # several M tiles
    (3, 64, 576, 8, 64),    # more runs than K needs: the last three are empty
])
def test_split_k_matches_reference(m, n, k, split, bk):
    # Each output tile's K is summed by `split` programs; the last to arrive adds the others'
    # int32 partials and runs the epilogue, then leaves the tile's counter at zero.
    g = torch.Generator().manual_seed(m * 7 + split)
    qx, qw, sx, zx, sw, zw, b = _operands(m, n, k, True, g)
    sqx, sqw = qx.sum(-1, dtype=torch.int32), qw.sum(-1, dtype=torch.int32)
    ref = gemm_epilogue_ref(qx, sx, zx, sqx, qw, sw, zw, sqw, b, torch.float32)
    cfg = dict(SMALL_CFG, BLOCK_K=bk, SPLIT_K=split)
    for _ in range(2):  # a second launch starts from the counters the first left
        y = w4a4_gemm_triton(qx.view(torch.int8), sx, zx, sqx, pack_int4_grouped(qw), sw, zw,
                             sqw, b, torch.float32, config=cfg)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert int(triton_gemm.split_counters(y.device).abs().sum()) == 0


def test_static_split_k_fills_idle_sms():
    # H100's 132 SMs: 48 decode tiles (a TP-8 shard of LLaMA-2's qkv) → 2 runs of K each;
    # 128 tiles already fill the SMs; K too short for two runs of 2 tiles stays whole; off CUDA
    # (no SM count) nothing splits.
    assert triton_gemm._gemm_config(1, 1536, 4096, None, 132)["SPLIT_K"] == 2
    assert triton_gemm._gemm_config(1, 4096, 4096, None, 132)["SPLIT_K"] == 1
    assert triton_gemm._gemm_config(1, 576, 576, None, 132)["SPLIT_K"] == 1
    assert triton_gemm._gemm_config(1, 1536, 4096, None, None)["SPLIT_K"] == 1
    assert triton_gemm._static_split_k(1, 1 << 20, 64, 132) == triton_gemm.SPLIT_K_MAX
    assert triton_gemm._static_split_k(9, 576, 64, 132) == 4  # 9 K tiles: 4 runs of ≥ 2


def test_split_k_off_above_the_counters(monkeypatch):
    # A tuned split config also serves larger counts; once the grid outgrows the counters it
    # runs unsplit (and still right).
    monkeypatch.setattr(triton_gemm, "SPLIT_TILES_MAX", 2)
    monkeypatch.setattr(triton_gemm, "split_counters", lambda d: pytest.fail("split at 3 tiles"))
    g = torch.Generator().manual_seed(9)
    qx, qw, sx, zx, sw, zw, b = _operands(33, 40, 192, False, g)
    sqx, sqw = qx.sum(-1, dtype=torch.int32), qw.sum(-1, dtype=torch.int32)
    ref = gemm_epilogue_ref(qx, sx, zx, sqx, qw, sw, zw, sqw, None, torch.float32)
    y = w4a4_gemm_triton(qx.view(torch.int8), sx, zx, sqx, pack_int4_grouped(qw), sw, zw, sqw,
                         None, torch.float32, config=dict(SMALL_CFG, BLOCK_N=64, SPLIT_K=2))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_split_k_switch(monkeypatch):
    # DUQUANT_SPLIT_K=0 unsplits tuned and forced configs too; a value other than 0/1 is refused
    # when the switches are read (at kernel choice), not at a launch.
    cfg = dict(SMALL_CFG, SPLIT_K=4)
    assert triton_gemm.launch_config(1, 40, 576, torch.device("cpu"), cfg)["SPLIT_K"] == 4
    monkeypatch.setenv("DUQUANT_SPLIT_K", "0")
    split_k = KernelKnobs.from_env().split_k
    assert triton_gemm.launch_config(1, 40, 576, torch.device("cpu"), cfg, split_k)["SPLIT_K"] == 1
    monkeypatch.setenv("DUQUANT_SPLIT_K", "off")
    with pytest.raises(KnobError, match="DUQUANT_SPLIT_K='off'"):
        KernelKnobs.from_env()


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("n,k,groups", [(40, 576, 9), (100, 256, 2), (72, 1536, 12)])
@pytest.mark.parametrize("bias", [False, True])
def test_groups_gemm_matches_reference(m, n, k, groups, bias):
    """The block-scaled GEMM (activation groups) against core.reference's float64 sum."""
    from duquant_serve.core.reference import gemm_epilogue_groups_ref
    from duquant_serve.kernels.triton_gemm import w4a4_gemm_groups_triton

    g = torch.Generator().manual_seed(m + n + k)
    qx, qw, _, _, sw, zw, b = _operands(m, n, k, bias, g)
    sx = torch.rand(m, groups, generator=g) * 0.1 + 0.01
    zx = torch.randint(-4, 20, (m, groups), generator=g).float()
    sqx = qx.reshape(m, groups, -1).sum(-1, dtype=torch.int32)
    gsum = qw.reshape(n, groups, -1).sum(-1, dtype=torch.int32).t().contiguous()
    ref = gemm_epilogue_groups_ref(qx, sx, zx, sqx, qw, sw, zw, b, torch.float32)
    cfg = SMALL_CFG if m > 16 else None  # BLOCK_K 128 is capped at 64-channel groups
    y = w4a4_gemm_groups_triton(qx.view(torch.int8), sx, zx, sqx, pack_int4_grouped(qw), sw, zw,
                                gsum, b, torch.float32, config=cfg)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    # Stats that do not match the groups are refused by name.
    with pytest.raises(ValueError, match="zero must be"):
        w4a4_gemm_groups_triton(qx.view(torch.int8), sx, zx[:, :1], sqx, pack_int4_grouped(qw),
                                sw, zw, gsum, b, torch.float32)
