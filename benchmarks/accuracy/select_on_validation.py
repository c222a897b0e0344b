"""Choose a method's hyper-parameters on validation text, not on the test windows we report.

Each variant is a method plus overrides of DuQuantConfig / PipelineOptions fields; it is
quantized once (WikiText-2 validation calibration: 16 random windows of 512 tokens) and its
perplexity measured on the first N validation windows (the selection score) and, recorded
beside it, the first N test windows. Rows are appended to the JSON as they finish.

    OMP_NUM_THREADS=1 python benchmarks/accuracy/select_on_validation.py --json OUT.json \
        --variant base:duquant-opt \
        --variant steps60:duquant-opt:learn_steps=60 \
        --variant alpha05:duquant-opt:smooth_alpha=0.5

The calibration windows are drawn from the same validation text; they cover about 3% of it, so
the selection windows overlap them only by chance and by a few percent at most.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from duquant_serve.core.config import DuQuantConfig  # noqa: E402
from offline_quant.calibration import (  # noqa: E402
    CALIB_TEXTS,
    EVAL_TEXTS,
    calibration_windows,
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

CONFIG_FIELDS = {f.name: f.type for f in dataclasses.fields(DuQuantConfig)}
OPTION_FIELDS = {f.name: f.type for f in dataclasses.fields(PipelineOptions)}


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_variant(spec: str) -> tuple[str, str, dict, dict]:
    """'NAME:METHOD[:key=value,...]' → (name, method, config overrides, option overrides)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(f"variant {spec!r}: use NAME:METHOD[:key=value,...]")
    name, method = parts[0], parts[1]
    if method not in METHODS + FP_METHODS:
        raise ValueError(f"variant {name!r}: unknown method {method!r}")
    cfg, opts = {}, {}
    for item in filter(None, (parts[2] if len(parts) == 3 else "").split(",")):
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"variant {name!r}: {item!r} is not key=value")
        if key in CONFIG_FIELDS:
            cfg[key] = _value(val)
        elif key in OPTION_FIELDS and key not in ("method", "device", "progress"):
            opts[key] = _value(val)
        else:
            raise ValueError(f"variant {name!r}: {key!r} is no DuQuantConfig or PipelineOptions "
                             "field")
    return name, method, cfg, opts


def windows_of(tok, path: Path, seqlen: int, limit: int):
    ids = tokenize_text(tok, read_text(path))
    n = min(ids.numel() // seqlen, limit)
    return ids[: n * seqlen].view(n, seqlen)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME:METHOD[:key=value,...] (DuQuantConfig or PipelineOptions fields)")
    ap.add_argument("--limit", type=int, default=8, help="windows of each split")
    ap.add_argument("--val-limit", type=int, default=None,
                    help="validation windows, if not --limit (more windows: a steadier score)")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--json", required=True)
    ap.add_argument("--nsamples", type=int, default=16, help="calibration windows")
    ap.add_argument("--calib-seqlen", type=int, default=512, help="tokens per calibration window")
    args = ap.parse_args()
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as e:
        ap.error(str(e))

    base, tok = load_model(args.model)
    val_limit = args.limit if args.val_limit is None else args.val_limit
    splits = {"validation": windows_of(tok, CALIB_TEXTS["wikitext2"], args.seqlen, val_limit),
              "test": windows_of(tok, EVAL_TEXTS["wikitext2"], args.seqlen, args.limit)}
    calib = calibration_windows(tok, "wikitext2", args.nsamples, args.calib_seqlen,
                                vocab_size=base.config.vocab_size)
    calib_note = f"wikitext2 validation, {args.nsamples} x {args.calib_seqlen}"
    out_path = Path(args.json)
    out = (json.loads(out_path.read_text()) if out_path.exists()
           else {"model": args.model, "seqlen": args.seqlen, "windows": args.limit,
                 "calibration": calib_note, "results": []})
    for name, method, cfg_over, opt_over in variants:
        t = time.perf_counter()
        model = copy.deepcopy(base)
        if method not in FP_METHODS:
            # Each method's default activation groups and clip unless the variant sets them.
            cfg_over = {**cfg_over, **activation_quant_fields(
                method, cfg_over.get("a_bits", DuQuantConfig.a_bits),
                cfg_over.get("act_group_size"), cfg_over.get("act_clip_ratio"))}
            quantize_model(model, calib, DuQuantConfig(**cfg_over),
                           PipelineOptions(method=method, progress=False, **opt_over))
        q_seconds = time.perf_counter() - t
        row = {"variant": name, "method": method, "config": cfg_over, "options": opt_over,
               "calibration": calib_note, "quantize_seconds": round(q_seconds, 1)}
        for split, w in splits.items():
            nll = window_nlls(model, w)
            row[split] = round(math.exp(sum(nll) / len(nll)), 4)
            row[f"{split}_windows"] = len(nll)
            row[f"{split}_window_nll"] = [round(v, 6) for v in nll]
        print(json.dumps(row), flush=True)
        out["results"].append(row)
        out_path.write_text(json.dumps(out, indent=1) + "\n")
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
