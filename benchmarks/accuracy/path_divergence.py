"""How far a checkpoint's two compute paths drift apart inside the model, layer by layer.

The integer path (exact integer GEMM, what serving computes) and fake quantization
(dequantize, fp32 matmul) agree per linear to ~3e-7 relative. Through a W4A4 model that
difference does not stay small: a value moved across a 4-bit rounding boundary changes its
code by one step, which moves the next layer's inputs, and so on. This runs windows through
both paths and records the relative difference of every decoder layer's output and of the
logits, and each path's NLL per window: how much of an int-vs-fake perplexity gap is that
divergence rather than a difference between the paths.

    python benchmarks/accuracy/path_divergence.py artifacts/smollm2-w4a4 --seqlen 512 \
        --windows 2 --json benchmarks/results/accuracy/smollm2_path_divergence.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from offline_quant.evaluate import eval_windows, load_checkpoint_model, use_fake_quant  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", default="wikitext2")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    model, tok, ck = load_checkpoint_model(args.checkpoint)
    fake = use_fake_quant(copy.deepcopy(model))
    windows = eval_windows(tok, args.dataset, args.seqlen, args.windows)
    rows = []
    for w in windows:
        outs: dict[str, list[torch.Tensor]] = {"int": [], "fake": []}
        hooks = [layer.register_forward_hook(
                     lambda mod, inp, out, seen=outs[tag]: seen.append(
                         out[0] if isinstance(out, tuple) else out))
                 for tag, m in (("int", model), ("fake", fake)) for layer in m.model.layers]
        with torch.no_grad():
            logits = {"int": model(w[None]).logits[0], "fake": fake(w[None]).logits[0]}
        for h in hooks:
            h.remove()
        nll = {k: float(F.cross_entropy(v[:-1], w[1:])) for k, v in logits.items()}
        row = {"layer_rel_diff": [_rel(a, b) for a, b in zip(outs["int"], outs["fake"],
                                                               strict=True)],
               "logits_rel_diff": _rel(logits["int"], logits["fake"]), "nll": nll}
        print(json.dumps({"logits_rel_diff": row["logits_rel_diff"], "nll": nll}), flush=True)
        rows.append(row)
    out = {"checkpoint": args.checkpoint, "method": ck.quant_config.method,
           "act_group_size": ck.quant_config.act_group_size, "dataset": args.dataset,
           "seqlen": args.seqlen, "windows": rows}
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
