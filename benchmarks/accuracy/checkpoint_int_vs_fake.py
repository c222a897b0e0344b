"""One checkpoint, two compute paths: the integer reference (what serving computes) and fake
quantization (dequantize, float matmul: what `duquant eval`'s method rows compute), on the same
windows. Isolates path numerics from quantization run-to-run differences.

    python benchmarks/accuracy/checkpoint_int_vs_fake.py artifacts/smollm2-w4a4 --limit 8 \
        --json benchmarks/results/accuracy/smollm2_checkpoint_int_vs_fake.json
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", default="wikitext2")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    model, tok, ck = load_checkpoint_model(args.checkpoint)
    windows = eval_windows(tok, args.dataset, args.seqlen, args.limit)
    nll = {"int": window_nlls(model, windows)}
    nll["fake"] = window_nlls(use_fake_quant(model), windows)
    ppl = {k: math.exp(sum(v) / len(v)) for k, v in nll.items()}
    out = {"checkpoint": args.checkpoint, "method": ck.quant_config.method,
           "dataset": args.dataset, "windows": len(windows), "ppl": ppl,
           "rel_diff": abs(ppl["int"] - ppl["fake"]) / ppl["fake"],
           "per_window_nll_int_minus_fake": [a - b for a, b in zip(nll["int"], nll["fake"], strict=True)]}
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("ppl", "rel_diff")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
