"""Do the methods' ordering and gains hold beyond WikiText? Perplexity of each method on several
English texts, each method quantized once (WikiText-2 validation calibration) and evaluated on
every text in the same process.

    OMP_NUM_THREADS=2 python benchmarks/accuracy/cross_domain.py \
        --methods fp16,hadamard,duquant,duquant-opt --limit 8 \
        --text wikitext2 \
        --text licences=/usr/share/common-licenses/GPL-3,/usr/share/common-licenses/MPL-2.0 \
        --text paper=../shared/docs/duquant-paper.md --json OUT.json

A text is a shipped name (`wikitext2`) or NAME=FILE[,FILE...] (files joined by blank lines).
Nothing but WikiText is shipped: the other texts are read where they are.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from duquant_serve.core.config import DuQuantConfig  # noqa: E402
from offline_quant.calibration import (  # noqa: E402
    calibration_windows,
    eval_text_path,
    read_text,
    tokenize_text,
)
from offline_quant.evaluate import FP_METHODS, window_nlls  # noqa: E402
from offline_quant.models import load_model  # noqa: E402
from offline_quant.pipeline import (  # noqa: E402
    METHODS,
    PipelineOptions,
    activation_quant_fields,
    quantize_model,
)


def read_texts(spec: str) -> tuple[str, str, list[str]]:
    """'wikitext2' or 'NAME=FILE[,FILE...]' → (name, text, files)."""
    name, sep, files = spec.partition("=")
    paths = [str(eval_text_path(name))] if not sep else files.split(",")
    return name, "\n\n".join(read_text(p) for p in paths), paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--methods", default="fp16,hadamard,duquant,duquant-opt")
    ap.add_argument("--text", action="append", required=True)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--limit", type=int, default=8, help="first N windows of each text")
    ap.add_argument("--calib", default="wikitext2")
    ap.add_argument("--act-group-size", type=int, default=None,
                    help="DuQuantConfig.act_group_size of the quantized rows (default: each "
                         "method's, pipeline.activation_quant_fields)")
    ap.add_argument("--act-clip", type=float, default=None,
                    help="DuQuantConfig.act_clip_ratio of the quantized rows (default: "
                         "the one of their groups, pipeline.activation_quant_fields)")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    methods = args.methods.split(",")
    bad = [m for m in methods if m not in FP_METHODS + METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}")

    base, tok = load_model(args.model)
    texts = {}
    for spec in args.text:
        name, text, files = read_texts(spec)
        ids = tokenize_text(tok, text)
        n = min(ids.numel() // args.seqlen, args.limit)
        if n == 0:
            ap.error(f"text {name!r} has fewer than {args.seqlen} tokens")
        texts[name] = {"files": files, "windows": ids[: n * args.seqlen].view(n, args.seqlen)}
    calib = calibration_windows(tok, args.calib, 16, 512, vocab_size=base.config.vocab_size)
    out = {"model": args.model, "seqlen": args.seqlen, "calibration": args.calib,
           "texts": {k: {"files": v["files"], "windows": int(v["windows"].shape[0])}
                     for k, v in texts.items()},
           "results": []}
    for method in methods:
        t = time.perf_counter()
        model = copy.deepcopy(base)
        row = {"method": method}
        if method not in FP_METHODS:
            act = activation_quant_fields(method, 4, args.act_group_size, args.act_clip)
            quantize_model(model, calib, DuQuantConfig(**act),
                           PipelineOptions(method=method, progress=False))
            row.update(act)
        for name, v in texts.items():
            nlls = window_nlls(model, v["windows"])
            row[name] = math.exp(sum(nlls) / len(nlls))
        row["seconds"] = round(time.perf_counter() - t, 1)
        out["results"].append(row)
        print(json.dumps(row), flush=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
