"""Local WikiText-2 tasks for lm-eval-harness: no hub, no network. The data is the raw test
split on disk (`test.raw`): $DUQUANT_WIKITEXT2_DIR, else the copy shipped in
offline_quant/data/wikitext2 (licence in its README).

- `wikitext2_local`: lm-eval's own `wikitext` task (document-level loglikelihood_rolling; word
  and byte perplexity, bits per byte) on documents cut from test.raw at its top-level headings,
  the way EleutherAI/wikitext_document_level is cut. The harness' own detokenizer and metric
  code are reused.
- `wikitext2_lastword`: loglikelihood of a paragraph's last word given the rest of the paragraph
  (LAMBADA-style; acc = the whole word is the greedy continuation, perplexity of the word).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

__all__ = ["load_documents", "load_lastword", "process_results", "wikitext_detokenizer"]

_HEADING = re.compile(r"^ = [^=].* = $")  # a top-level heading line " = Title = "
_LAST_WORD = re.compile(r"^(?P<context>.*\S) (?P<word>[A-Za-z]{3,})\s*\.$")


def _raw_path() -> Path:
    d = os.environ.get("DUQUANT_WIKITEXT2_DIR")
    base = Path(d) if d else Path(__file__).resolve().parents[2] / "offline_quant" / "data" / "wikitext2"
    p = base / "test.raw"
    if not p.is_file():
        raise FileNotFoundError(f"WikiText-2 test split not found at {p}; set DUQUANT_WIKITEXT2_DIR")
    return p


def split_documents(text: str) -> list[str]:
    """Raw WikiText text → one string per article (from one top-level heading to the next)."""
    docs: list[list[str]] = []
    for line in text.splitlines():
        line = line.rstrip("\r")
        if _HEADING.match(line) or not docs:
            docs.append([])
        docs[-1].append(line)
    return ["\n".join(d) + "\n" for d in docs]


def lastword_examples(pages: list[str], min_words: int = 20, max_words: int = 120) -> list[dict]:
    """Body paragraphs of `min_words`..`max_words` words whose last sentence ends in a plain word:
    {"context": paragraph up to that word, "target": " " + word}, detokenized as the
    wikitext task does."""
    out = []
    for page in pages:
        for line in page.splitlines():
            if not line.strip() or line.lstrip().startswith("="):
                continue
            n = len(line.split())
            if not min_words <= n <= max_words:
                continue
            m = _LAST_WORD.match(wikitext_detokenizer({"page": line.strip()}))
            if m:
                out.append({"context": m["context"], "target": " " + m["word"]})
    return out


def load_documents(**_kwargs):
    import datasets

    pages = split_documents(_raw_path().read_text(encoding="utf-8"))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"page": p} for p in pages])})


def load_lastword(**_kwargs):
    import datasets

    pages = split_documents(_raw_path().read_text(encoding="utf-8"))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(lastword_examples(pages))})
