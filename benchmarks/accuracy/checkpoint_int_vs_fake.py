"""One checkpoint, three compute paths on the same windows: the integer reference (what
serving computes), exact dequantization (float64 product rounded once: what `duquant eval`'s
method rows compute) and fp32 fake quantization (dequantize, float32 matmul: the paper's
simulation). int and exact should agree to the bit; fp32 fake differs from both by its
rounding, which a W4A4 model amplifies (path_divergence.py) into ~1% of 8-window perplexity.

    python benchmarks/accuracy/checkpoint_int_vs_fake.py artifacts/smollm2-w4a4 --limit 8 \
        --json benchmarks/results/accuracy/smollm2_checkpoint_int_vs_fake.json

On the whole split (`--limit 0`) run one process per path (`--path int`, `--path exact`, ...,
each with its own --json), then join them with `--merge INT.json EXACT.json ... --json OUT.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from offline_quant.evaluate import (  # noqa: E402
    eval_windows,
    load_checkpoint_model,
    use_reference_mode,
    window_nlls,
)


def _ppl(nll: list[float]) -> float:
    return math.exp(sum(nll) / len(nll))


PATHS = ("int", "exact", "fake")


def compare(head: dict, nll: dict[str, list[float]]) -> dict:
    """Per-path window NLLs of the same windows (int and at least one other) → the record:
    each path's perplexity and, per other path, int's relative difference from it."""
    if "int" not in nll or len(nll) < 2:
        raise SystemExit(f"compare the int path with another; got {sorted(nll)}")
    if len({len(v) for v in nll.values()}) != 1:
        raise SystemExit(f"the paths saw different numbers of windows: "
                         f"{ {k: len(v) for k, v in nll.items()} }")
    ppl = {k: _ppl(v) for k, v in nll.items()}
    others = [k for k in PATHS if k in nll and k != "int"]
    return {**head, "windows": len(nll["int"]), "ppl": ppl,
            "rel_diff": {k: abs(ppl["int"] - ppl[k]) / ppl[k] for k in others},
            "windows_bit_equal": {k: sum(a == b for a, b in zip(nll["int"], nll[k], strict=True))
                                  for k in others},
            "per_window_nll_int_minus": {k: [a - b for a, b in zip(nll["int"], nll[k],
                                                                   strict=True)]
                                         for k in others},
            "per_window_nll": nll}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--dataset", default="wikitext2")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--limit", type=int, default=8, help="windows (0: the whole split)")
    ap.add_argument("--path", choices=("all", *PATHS), default="all")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="join single-path runs of the same checkpoint and windows (int first)")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        paths = [p.get("path") for p in parts]
        if len(parts) < 2 or paths[0] != "int" or len(set(paths)) != len(paths) \
                or not set(paths) <= set(PATHS):
            ap.error(f"--merge takes the int run's JSON first, then other single-path runs "
                     f"({', '.join(PATHS[1:])}); got paths {paths}")
        head = {k: parts[0][k] for k in ("checkpoint", "method", "dataset")}
        if any(p[k] != v for p in parts[1:] for k, v in head.items()):
            ap.error("the runs are of different checkpoints or datasets")
        out = compare(head, {p["path"]: p["per_window_nll"] for p in parts})
    else:
        if not args.checkpoint:
            ap.error("give a checkpoint directory (or --merge)")
        model, tok, ck = load_checkpoint_model(args.checkpoint)
        windows = eval_windows(tok, args.dataset, args.seqlen, args.limit or None)
        head = {"checkpoint": args.checkpoint, "method": ck.quant_config.method,
                "dataset": args.dataset}
        nll = {path: window_nlls(use_reference_mode(model, path), windows)
               for path in PATHS if args.path in ("all", path)}
        if args.path == "all":
            out = compare(head, nll)
        else:
            out = {**head, "path": args.path, "windows": len(nll[args.path]),
                   "ppl": _ppl(nll[args.path]), "per_window_nll": nll[args.path]}
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("ppl", "rel_diff") if k in out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
