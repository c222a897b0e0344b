"""Storage layout of integer weight codes.

4-bit (and smaller) codes are packed two per byte along the input dim K: byte j of a row holds
code 2j in its low nibble and code 2j+1 in its high nibble (the order QuaRot and gpt-fast use).
Codes wider than 4 bits are stored one per byte.
"""

from __future__ import annotations

import torch


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q: [N, K] uint8 codes in 0..15, K even → [N, K/2] uint8."""
    if q.dtype != torch.uint8:
        raise TypeError(f"pack_int4 expects uint8 codes, got {q.dtype}")
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even input dim, got K={q.shape[-1]}")
    if q.numel() and int(q.max()) > 15:
        raise ValueError(f"pack_int4 got a code {int(q.max())} > 15")
    lo = q[..., 0::2]
    hi = q[..., 1::2]
    return lo | (hi << 4)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """p: [N, K/2] uint8 → [N, K] uint8 codes in 0..15."""
    if p.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 expects uint8, got {p.dtype}")
    lo = p & 0x0F
    hi = p >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


def pack_weight_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    return pack_int4(q) if bits <= 4 else q.to(torch.uint8).contiguous()


def unpack_weight_codes(p: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_int4(p) if bits <= 4 else p


def packed_in_features(in_features: int, bits: int) -> int:
    """Bytes per row of the stored weight codes."""
    return in_features // 2 if bits <= 4 else in_features
