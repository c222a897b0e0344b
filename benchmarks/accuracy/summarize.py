"""Markdown table of a `duquant eval` JSON: perplexity and the share of the Hadamard + RTN gap
each method closes, (ppl_hadamard − ppl) / (ppl_hadamard − ppl_fp16).

    python benchmarks/accuracy/summarize.py benchmarks/results/accuracy/smollm2_methods_w4a4.json
"""

from __future__ import annotations

import json
import sys


def gap_closed(ppl: float, fp: float, hadamard: float) -> float:
    return (hadamard - ppl) / (hadamard - fp)


def table(result: dict) -> str:
    rows = {r["method"]: r for r in result["results"]}
    fp = next((rows[m]["ppl"] for m in ("fp16", "fp32", "bf16", "native") if m in rows), None)
    had = rows.get("hadamard", {}).get("ppl")
    lines = ["| method | ppl | gap to 16-bit closed vs hadamard | seconds (quantize + eval) |",
             "|---|---|---|---|"]
    for m, r in rows.items():
        closed = ("—" if fp is None or had is None or m in ("fp16", "fp32", "bf16", "native")
                  or had == fp else f"{100 * gap_closed(r['ppl'], fp, had):.1f}%")
        lines.append(f"| {m} | {r['ppl']:.2f} | {closed} | {r['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"{path}:\n")
        print(table(json.load(open(path))))
        print()
