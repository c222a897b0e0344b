"""duquant-lwc on SmolLM2 with non-default LWC settings (8 windows, the accuracy protocol).

    OMP_NUM_THREADS=1 python benchmarks/accuracy/lwc_experiment.py --tokens 2048 --batch 256 \
        --epochs 20 --json OUT.json

Results of the runs made with it: benchmarks/results/accuracy/smollm2_lwc_experiments.json (README.md there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from offline_quant import pipeline
from offline_quant.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512, help="LWC calibration tokens per site")
    ap.add_argument("--batch", type=int, default=64, help="tokens per LWC step")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    # evaluate() builds PipelineOptions itself: override the defaults it will use.
    names = [f.name for f in dataclasses.fields(pipeline.PipelineOptions)]
    defaults = list(pipeline.PipelineOptions.__init__.__defaults__)
    for name, value in (("lwc_tokens", args.tokens), ("lwc_batch", args.batch),
                        ("lwc_epochs", args.epochs)):
        defaults[names.index(name)] = value
    pipeline.PipelineOptions.__init__.__defaults__ = tuple(defaults)
    r = evaluate("smollm2", "wikitext2", 2048, ["duquant-lwc"],
                 limit=args.limit, calib_source="wikitext2",
                 progress=False)
    r.update(lwc_tokens=args.tokens, lwc_batch=args.batch, lwc_epochs=args.epochs)
    with open(args.json, "w") as f:
        json.dump(r, f, indent=2)
    print(r["results"])


if __name__ == "__main__":
    main()
