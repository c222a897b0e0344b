"""Calibration token windows: WikiText-style text or random tokens (calibration-free)."""

from __future__ import annotations

from pathlib import Path

import torch

RANDOM = "random"


class CalibrationError(ValueError):
    pass


def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"calibration/eval text file {str(path)!r} does not exist")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise CalibrationError(f"text file {str(path)!r} is empty")
    return text


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """Tokenize once, as the reference does (the tokenizer's own BOS handling) → [T] int64."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    return ids.long()


def calibration_windows(
    tokenizer, source: str, nsamples: int, seqlen: int, seed: int = 2, vocab_size: int | None = None
) -> torch.Tensor:
    """→ [nsamples, seqlen] token ids: random windows of a text file, or uniform random tokens."""
    if nsamples < 1 or seqlen < 1:
        raise CalibrationError("nsamples and seqlen must be >= 1")
    g = torch.Generator().manual_seed(seed)
    if source == RANDOM:
        v = vocab_size or len(tokenizer)
        return torch.randint(0, v, (nsamples, seqlen), generator=g)
    ids = tokenize_text(tokenizer, read_text(source))
    if ids.numel() <= seqlen:
        raise CalibrationError(
            f"calibration text has {ids.numel()} tokens, fewer than one window of {seqlen}"
        )
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=g)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
