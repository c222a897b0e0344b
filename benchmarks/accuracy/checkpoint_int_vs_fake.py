"""One checkpoint, two compute paths: the integer reference (what serving computes) and fake
quantization (dequantize, float matmul: what `duquant eval`'s method rows compute), on the same
windows. Isolates path numerics from quantization run-to-run differences.

    python benchmarks/accuracy/checkpoint_int_vs_fake.py artifacts/smollm2-w4a4 --limit 8 \
        --json benchmarks/results/accuracy/smollm2_checkpoint_int_vs_fake.json

On the whole split (`--limit 0`) each path takes about 45 single-threaded minutes: run them as
two processes (`--path int`, `--path fake`, each with its own --json), then join them with
`--merge INT.json FAKE.json --json OUT.json`.
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
    use_fake_quant,
    window_nlls,
)


def _ppl(nll: list[float]) -> float:
    return math.exp(sum(nll) / len(nll))


def compare(head: dict, nll: dict[str, list[float]]) -> dict:
    """Per-path window NLLs of the same windows → the comparison record."""
    if len(nll["int"]) != len(nll["fake"]):
        raise SystemExit(f"the paths saw {len(nll['int'])} and {len(nll['fake'])} windows")
    ppl = {k: _ppl(v) for k, v in nll.items()}
    return {**head, "windows": len(nll["int"]), "ppl": ppl,
            "rel_diff": abs(ppl["int"] - ppl["fake"]) / ppl["fake"],
            "per_window_nll_int_minus_fake": [a - b for a, b in zip(nll["int"], nll["fake"],
                                                                    strict=True)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--dataset", default="wikitext2")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--limit", type=int, default=8, help="windows (0: the whole split)")
    ap.add_argument("--path", choices=("both", "int", "fake"), default="both")
    ap.add_argument("--merge", nargs=2, metavar=("INT_JSON", "FAKE_JSON"),
                    help="join two single-path runs of the same checkpoint and windows")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        if [p["path"] for p in parts] != ["int", "fake"]:
            ap.error("--merge takes the int run's JSON, then the fake run's")
        head = {k: parts[0][k] for k in ("checkpoint", "method", "dataset")}
        if any(parts[1][k] != v for k, v in head.items()):
            ap.error("the two runs are of different checkpoints or datasets")
        out = compare(head, {p["path"]: p["per_window_nll"] for p in parts})
    else:
        if not args.checkpoint:
            ap.error("give a checkpoint directory (or --merge)")
        model, tok, ck = load_checkpoint_model(args.checkpoint)
        windows = eval_windows(tok, args.dataset, args.seqlen, args.limit or None)
        head = {"checkpoint": args.checkpoint, "method": ck.quant_config.method,
                "dataset": args.dataset}
        nll = {}
        if args.path in ("both", "int"):
            nll["int"] = window_nlls(model, windows)
        if args.path in ("both", "fake"):
            nll["fake"] = window_nlls(use_fake_quant(model), windows)
        if args.path == "both":
            out = compare(head, nll)
        else:
            out = {**head, "path": args.path, "windows": len(nll[args.path]),
                   "ppl": _ppl(nll[args.path]), "per_window_nll": nll[args.path]}
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("ppl", "rel_diff") if k in out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
