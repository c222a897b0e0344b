"""Kernel-side storage layouts of 4-bit weight codes (conversions only; no quantization math).

The checkpoint packs codes 2j / 2j+1 into byte j (core/pack.py). Unpacking that inside a GEMM
needs an interleave of the two nibble planes. The Triton GEMM instead wants each nibble plane to
be a contiguous run of K, so `prepare` repacks once at load into the *grouped* layout:

    K is cut into groups of GROUP = 64 codes; in group g, byte 32·g + j (j < 32) holds
    code 64·g + j in its low nibble and code 64·g + 32 + j in its high nibble.

Then `p & 15` is codes [64g, 64g+32) and `p >> 4` is codes [64g+32, 64g+64): two int8 tensor-core
dots on contiguous activation columns, no shuffles. Requires K % 64 == 0.

The CUTLASS sm_90a packed kernel keeps the checkpoint's nibble order but stores *signed* codes
q − 8 (two's complement nibbles, `byte ^ 0x88`), the type CUTLASS widens to int8 in registers
with a few shifts and byte permutes; its epilogue takes zw − 8 (cutlass_ext/csrc/w4a4_sm90_packed.cu).
"""

from __future__ import annotations

import torch

from ..core.pack import unpack_int4

GROUP = 64


def pack_int4_grouped(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] uint8 codes 0..15, K % 64 == 0 → [N, K/2] uint8 grouped layout."""
    n, k = q.shape
    if k % GROUP:
        raise ValueError(f"grouped 4-bit layout needs K % {GROUP} == 0, got K={k}")
    if q.dtype != torch.uint8:
        raise TypeError(f"expected uint8 codes, got {q.dtype}")
    g = q.reshape(n, k // GROUP, 2, GROUP // 2)  # [N, groups, half, 32]
    return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(n, k // 2).contiguous()


def unpack_int4_grouped(p: torch.Tensor) -> torch.Tensor:
    """[N, K/2] uint8 grouped layout → [N, K] uint8 codes."""
    n, kh = p.shape
    g = p.reshape(n, kh // (GROUP // 2), GROUP // 2)
    return torch.stack((g & 0x0F, g >> 4), dim=2).reshape(n, kh * 2)


SIGNED_OFFSET = 8


def to_signed_int4(qweight: torch.Tensor) -> torch.Tensor:
    """Checkpoint-packed codes 0..15 → the same bytes holding q − 8 as signed nibbles."""
    if qweight.dtype != torch.uint8:
        raise TypeError(f"expected uint8 packed codes, got {qweight.dtype}")
    return qweight ^ 0x88  # per nibble, (q − 8) mod 16 == q xor 8


def unpack_signed_int4(p: torch.Tensor) -> torch.Tensor:
    """[N, K/2] signed-nibble bytes → [N, K] int8 values −8..7 (low nibble = even k)."""
    # xor 0x88 is its own inverse: back to codes 0..15, then shift.
    return unpack_int4(to_signed_int4(p)).to(torch.int8) - SIGNED_OFFSET
