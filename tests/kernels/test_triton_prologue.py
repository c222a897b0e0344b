"""duquant_serve/kernels/triton_prologue.py vs core.reference.prologue_ref (TRITON_INTERPRET)."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import inverse_perm, make_transform, make_x

from duquant_serve.core.reference import prologue_ref
from duquant_serve.kernels import triton_prologue, triton_prologue_split
from duquant_serve.kernels.knobs import KernelKnobs, KnobError
from duquant_serve.kernels.triton_prologue import SPLIT_MAX_M, fused_prologue

# (M, K, b, smooth): K=576 = 9 blocks of 64 (SmolLM2), K=192 = 3 blocks, K=256 with b=128.
CASES = [
    (1, 576, 64, True), (7, 576, 64, False), (33, 576, 64, True),
    (1, 192, 64, False), (7, 192, 64, True), (33, 192, 64, False),
    (7, 256, 128, False),
]


def _compare(x, t, clip, max_frac=1e-3, scale_rtol=1e-5, **kw):
    q, s, z, qs = fused_prologue(x, t.r1, t.r2, inverse_perm(t.perm), t.smooth, 4, clip, **kw)
    qr, sr, zr, qsr = prologue_ref(x, t, 4, clip)
    assert q.dtype == torch.int8 and q.shape == qr.shape
    d = (q.int() - qr.int()).abs()
    # Codes may differ only where float summation order (or operand rounding) moves a value
    # across a rounding boundary: by one step, on a tiny fraction of elements.
    assert int(d.max()) <= 1
    assert float((d > 0).float().mean()) <= max_frac
    torch.testing.assert_close(s, sr, rtol=scale_rtol, atol=0)
    assert float((z - zr).abs().max()) <= 1  # zero = round(−lo/s): a tie may flip by one
    assert int((qs - q.int().sum(-1)).abs().max()) == 0  # Σq is exactly the sum of its codes
    return q, s, z, qs


@pytest.mark.parametrize("phase3", ["reload", "recompute"])
@pytest.mark.parametrize("m,k,b,smooth", CASES)
def test_prologue_matches_reference(m, k, b, smooth, phase3):
    g = torch.Generator().manual_seed(m * 1000 + k + b)
    t = make_transform(k, b, smooth, g)
    _compare(make_x(m, k, g), t, 0.9, phase3=phase3)


@pytest.mark.parametrize("tokens", triton_prologue.TOKEN_TILES)
@pytest.mark.parametrize("m,k,b,smooth", [(7, 256, 128, True), (33, 576, 64, False),
                                          (9, 2048, 64, True)])
def test_prologue_every_token_tile(m, k, b, smooth, tokens):
    # 1, 2 or 4 tokens per program (the GPU picks by SM count): the same codes as the
    # reference, partial last tiles (33, 9 tokens) and padded blocks (K = 256 is 2 blocks)
    # included; K = 2048 at b = 64 fills 2 × 32 dot rows with real blocks.
    g = torch.Generator().manual_seed(m * 13 + k + tokens)
    t = make_transform(k, b, smooth, g)
    _compare(make_x(m, k, g), t, 0.9, tokens=tokens, max_programs=2)


def test_token_tile_rule():
    # One token per program while fewer than 2 per SM (132 SMs), then 2, then 4; decode is
    # always 1; off CUDA (no SM count) 4 above 16 tokens.
    cfg = triton_prologue._config
    assert [cfg(m, 4096, 128, 132)[0] for m in (1, 16, 17, 263, 264, 527, 528, 8192)] == \
        [1, 1, 1, 1, 2, 2, 4, 4]
    assert cfg(17, 4096, 128)[0] == 4 and cfg(16, 4096, 128)[0] == 1
    # Dot rows: a token's blocks (≥ 16, ≤ 64) at 1 per program; 64 rows at 2 and 4 per program
    # once the input has the blocks; 2 × 16 for a narrow one (SmolLM2: 9 blocks).
    assert cfg(1, 11008, 128, 132)[:2] == (1, 64) and cfg(1, 576, 64, 132)[:2] == (1, 16)
    assert cfg(300, 4096, 128, 132)[:2] == (2, 32) and cfg(300, 576, 64, 132)[:2] == (2, 16)
    assert cfg(9000, 4096, 128, 132)[:2] == (4, 16)
    with pytest.raises(ValueError, match="tokens per program 3"):
        cfg(64, 4096, 128, 132, tokens=3)


@pytest.mark.parametrize("m,k,b", [(7, 256, 128), (33, 576, 64)])
def test_prologue_reload_equals_recompute(m, k, b):
    # Phase 3 quantizes what phase 2 wrote back ("reload") or recomputes it with the same dot
    # ("recompute"): the same fp32 values, hence the same codes bit for bit. b = 128 holds two
    # NS-column dots per block, written back only after both read the block.
    g = torch.Generator().manual_seed(m + k)
    t = make_transform(k, b, True, g)
    x = make_x(m, k, g)
    runs = [fused_prologue(x, t.r1, t.r2, inverse_perm(t.perm), t.smooth, 4, 0.9, phase3=p,
                           max_programs=2) for p in ("reload", "recompute")]
    for a, r in zip(*runs, strict=True):
        assert torch.equal(a, r)


@pytest.mark.parametrize("phase3", ["reload", "recompute"])
@pytest.mark.parametrize("m,k,b,smooth", [(1, 576, 64, True), (7, 256, 128, False),
                                          (33, 576, 64, True), (40, 1536, 64, False)])
def test_prologue_fp16_operands(m, k, b, smooth, phase3):
    # The interpreter really rounds fp16 operands (it ignores tf32): each (token, block) row is
    # scaled by a power of two into fp16 range, so codes move as under TF32 — by one, on ~1e-3
    # of elements (prologue_precision.py emulates both on LLaMA-like activations) — and the
    # per-token scale by the rounding of the min / max.
    g = torch.Generator().manual_seed(m + k)
    t = make_transform(k, b, smooth, g)
    x = make_x(m, k, g)
    _compare(x, t, 0.9, max_frac=5e-3, scale_rtol=2e-3, precision="fp16", phase3=phase3)


def test_prologue_fp16_row_scaling_keeps_range():
    # Values far outside fp16's range (|x| up to 1e6, a 1e-3 row) and an all-zero token: the
    # power-of-two row scale keeps every operand finite and exact in exponent.
    g = torch.Generator().manual_seed(21)
    t = make_transform(192, 64, False, g)
    x = make_x(4, 192, g) * torch.tensor([[1e6], [1e-3], [0.0], [1.0]])
    q, s, z, qs = _compare(x, t, 1.0, max_frac=5e-3, scale_rtol=2e-3, precision="fp16")
    assert torch.isfinite(s).all() and torch.isfinite(z).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prologue_half_inputs(dtype):
    g = torch.Generator().manual_seed(5)
    t = make_transform(576, 64, True, g)
    _compare(make_x(7, 576, g, dtype), t, 1.0)


@pytest.mark.parametrize("phase3", ["reload", "recompute"])
def test_prologue_persistent_programs_reuse_scratch(phase3):
    # 33 tokens in tiles of 4 over 2 programs: each program's scratch is rewritten per tile.
    g = torch.Generator().manual_seed(11)
    t = make_transform(192, 64, False, g)
    _compare(make_x(33, 192, g), t, 0.95, max_programs=2, phase3=phase3)


def test_prologue_noncontiguous_input():
    g = torch.Generator().manual_seed(12)
    t = make_transform(192, 64, False, g)
    x = make_x(14, 384, g)[::2, :192]  # row stride 384·2, inner stride 1
    _compare(x, t, 1.0)


def test_prologue_empty_batch():
    g = torch.Generator().manual_seed(13)
    t = make_transform(192, 64, False, g)
    q, s, z, qs = fused_prologue(torch.empty(0, 192), t.r1, t.r2, inverse_perm(t.perm), None, 4,
                                 1.0)
    assert q.shape == (0, 192) and s.shape == z.shape == qs.shape == (0,)


def test_prologue_precision_choice(monkeypatch):
    g = torch.Generator().manual_seed(14)
    t = make_transform(192, 64, False, g)
    x = make_x(3, 192, g)
    _compare(x, t, 1.0, precision="tf32")  # the interpreter computes in fp32 whatever is asked
    with pytest.raises(ValueError, match="precision"):
        fused_prologue(x, t.r1, t.r2, inverse_perm(t.perm), None, 4, 1.0, precision="bf16")
    with pytest.raises(ValueError, match="phase3 'twice'"):
        fused_prologue(x, t.r1, t.r2, inverse_perm(t.perm), None, 4, 1.0, phase3="twice")
    # The same values from the environment fail when the switches are read, naming the variable.
    monkeypatch.setenv("DUQUANT_PROLOGUE_PRECISION", "bf16")
    with pytest.raises(KnobError, match="DUQUANT_PROLOGUE_PRECISION='bf16'"):
        KernelKnobs.from_env()
    monkeypatch.setenv("DUQUANT_PROLOGUE_PRECISION", "tf32")
    monkeypatch.setenv("DUQUANT_PROLOGUE_PHASE3", "twice")
    with pytest.raises(KnobError, match="DUQUANT_PROLOGUE_PHASE3='twice'"):
        KernelKnobs.from_env()


@pytest.mark.parametrize("m,k,b,smooth", [(1, 576, 64, True), (7, 256, 128, False),
                                          (16, 192, 64, True), (3, 1536, 64, False)])
def test_split_decode_prologue_matches_reference(m, k, b, smooth):
    # One program per (token, output block); the last of a token's programs quantizes its row.
    g = torch.Generator().manual_seed(m * 31 + k)
    t = make_transform(k, b, smooth, g)
    x = make_x(m, k, g, torch.bfloat16)
    out = _compare(x, t, 0.9, decode="split", perm=t.perm)
    # Without perm the launcher derives it from inv_perm: the same result.
    for a, r in zip(_compare(x, t, 0.9, decode="split"), out, strict=True):
        assert torch.equal(a, r)
    # Each launch leaves its per-token arrival counters at zero for the next one.
    count = triton_prologue_split.split_counters(x.device)
    assert count.shape == (SPLIT_MAX_M,) and int(count.abs().sum()) == 0


def test_split_decode_prologue_serves_only_decode(monkeypatch):
    # Above SPLIT_MAX_M tokens the tiled kernel runs (the split one's buffers hold 16 rows).
    g = torch.Generator().manual_seed(15)
    t = make_transform(192, 64, False, g)
    _compare(make_x(SPLIT_MAX_M + 5, 192, g), t, 1.0, decode="split")
    with pytest.raises(ValueError, match="decode 'fused'"):
        fused_prologue(make_x(1, 192, g), t.r1, t.r2, inverse_perm(t.perm), None, 4, 1.0,
                       decode="fused")
    monkeypatch.setenv("DUQUANT_PROLOGUE_DECODE", "fused")
    with pytest.raises(KnobError, match="DUQUANT_PROLOGUE_DECODE='fused'"):
        KernelKnobs.from_env()
