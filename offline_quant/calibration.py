"""Calibration token windows: WikiText-style text or random tokens (calibration-free).

Text sources are file paths or the names of text shipped with the project
(`offline_quant/data/`, licences in its README): `wikitext2` is the WikiText-2 test split for
evaluation and its validation split for calibration, so the two never overlap."""

from __future__ import annotations

from pathlib import Path

import torch

RANDOM = "random"
DATA_DIR = Path(__file__).resolve().parent / "data"
# name → shipped file, for evaluation (--dataset) and for calibration (--calib).
EVAL_TEXTS = {"wikitext2": DATA_DIR / "wikitext2" / "test.joined.txt"}
CALIB_TEXTS = {"wikitext2": DATA_DIR / "wikitext2" / "valid.tokenized.txt"}


class CalibrationError(ValueError):
    pass


def eval_text_path(source: str | Path) -> Path:
    """--dataset: a shipped text's name (EVAL_TEXTS) or a file path."""
    return EVAL_TEXTS.get(str(source), Path(source))


def calib_text_path(source: str | Path) -> Path:
    """--calib (other than 'random'): a shipped text's name (CALIB_TEXTS) or a file path."""
    return CALIB_TEXTS.get(str(source), Path(source))


def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        names = sorted(set(EVAL_TEXTS) | set(CALIB_TEXTS))
        raise CalibrationError(f"calibration/eval text file {str(path)!r} does not exist "
                               f"(shipped texts: {', '.join(names)})")
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
    ids = tokenize_text(tokenizer, read_text(calib_text_path(source)))
    if ids.numel() <= seqlen:
        raise CalibrationError(
            f"calibration text has {ids.numel()} tokens, fewer than one window of {seqlen}"
        )
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=g)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
