"""Where a quantized model loses: the same quantization evaluated with the activation or the
weight quantizer switched off, everywhere or at one site kind at a time.

One method is quantized once (WikiText-2 validation calibration, as select_on_validation.py);
every linear then runs as y = Q_a(T(x))·Ŵᵀ with, per row of the output JSON:

    w4a4          both quantizers (the method's own row)
    w4a16         activations unquantized, weights quantized
    w16a4         weights unquantized (the 16-bit weight in the same transformed basis)
    a16_<site>    activations unquantized at one site kind only (qkv, o, gate_up, down)
    w16_<site>    weights unquantized at one site kind only

so the perplexity each quantizer costs at each site kind can be read off directly.

    OMP_NUM_THREADS=1 python benchmarks/accuracy/error_split.py --json OUT.json --seed 2
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import offline_quant.pipeline as pipeline  # noqa: E402
from duquant_serve.core.config import DuQuantConfig  # noqa: E402
from duquant_serve.core.reference import fake_quant_linear  # noqa: E402
from duquant_serve.core.topology import SITES  # noqa: E402
from offline_quant.calibration import EVAL_TEXTS, calibration_windows  # noqa: E402
from offline_quant.evaluate import window_nlls  # noqa: E402
from offline_quant.models import load_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_on_validation import windows_of  # noqa: E402

SITE_KIND = {"attn_in": "qkv", "attn_out": "o", "mlp_in": "gate_up", "mlp_out": "down"}
KIND_OF_LINEAR = {lin: SITE_KIND[s.name] for s in SITES for lin in s.linears}


class SwitchableLinear(torch.nn.Module):
    """A fake-quant linear (core.reference.fake_quant_linear, as `duquant eval` runs it) whose
    activation and weight quantizers can be switched off."""

    def __init__(self, q, float_weight: torch.Tensor, kind: str) -> None:
        super().__init__()
        self.q, self.kind = q, kind
        self.w_quant, self.w_float = q.dequantized_weight(), float_weight
        self.quantize_acts = self.quantize_weights = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w_quant if self.quantize_weights else self.w_float
        if self.quantize_acts:
            return fake_quant_linear(x, self.q, w)
        y = self.q.transform.apply(x.float()) @ w.t()
        if self.q.bias is not None:
            y = y + self.q.bias.float()
        return y.to(x.dtype)


def quantize_keeping_float_weights(model, calib, cfg: DuQuantConfig, opts) -> dict:
    """pipeline.quantize_model, also keeping each linear's 16-bit weight in its transformed
    basis (what the weight quantizer saw) → {linear name: (QuantizedLinear, float weight)}."""
    kept: dict[int, torch.Tensor] = {}
    original = pipeline.quantize_site

    def keeping(method, site, layer, tr, *args, **kwargs):
        with torch.no_grad():
            ws = {n: tr.apply_to_weight(layer.get_submodule(n).weight.float()).clone()
                  for n in site.linears}
        out = original(method, site, layer, tr, *args, **kwargs)
        kept.update({id(q): ws[n] for n, q in out.items()})
        return out

    pipeline.quantize_site = keeping
    try:
        res = pipeline.quantize_model(model, calib, cfg, opts)
    finally:
        pipeline.quantize_site = original
    return {name: (q, kept[id(q)]) for name, q in res.linears.items()}


def install_switches(model, linears: dict) -> list[SwitchableLinear]:
    """Replace each quantized linear of `model` by a SwitchableLinear (quantize_keeping_float_
    weights' result) → the switches, each tagged with its site kind."""
    switches = []
    for name, (q, w) in linears.items():
        parent, _, child = name.rpartition(".")
        sw = SwitchableLinear(q, w, KIND_OF_LINEAR[name.split(".", 3)[3]])
        setattr(model.get_submodule(parent), child, sw)
        switches.append(sw)
    return switches


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--method", default="duquant-opt", choices=pipeline.METHODS)
    ap.add_argument("--seed", type=int, default=0, help="DuQuantConfig.seed (rotation draws)")
    ap.add_argument("--limit", type=int, default=8, help="WikiText-2 test windows")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    base, tok = load_model(args.model)
    windows = windows_of(tok, EVAL_TEXTS["wikitext2"], args.seqlen, args.limit)
    calib = calibration_windows(tok, "wikitext2", args.nsamples, args.calib_seqlen,
                                vocab_size=base.config.vocab_size)
    model = copy.deepcopy(base)
    t = time.perf_counter()
    linears = quantize_keeping_float_weights(
        model, calib, DuQuantConfig(seed=args.seed),
        pipeline.PipelineOptions(method=args.method, progress=False))
    seconds = time.perf_counter() - t
    switches = install_switches(model, linears)

    kinds = sorted(set(SITE_KIND.values()))
    rows = [("w4a4", set(), set()), ("w4a16", set(kinds), set()), ("w16a4", set(), set(kinds))]
    rows += [(f"a16_{k}", {k}, set()) for k in kinds] + [(f"w16_{k}", set(), {k}) for k in kinds]
    fp_nll = window_nlls(base, windows)
    out = {"model": args.model, "method": args.method, "seed": args.seed,
           "windows": len(windows), "seqlen": args.seqlen,
           "calibration": f"wikitext2 validation, {args.nsamples} x {args.calib_seqlen}",
           "quantize_seconds": round(seconds, 1),
           "fp16": round(math.exp(sum(fp_nll) / len(fp_nll)), 4), "rows": {}}
    print("fp16", out["fp16"], flush=True)
    for row, acts_off, weights_off in rows:
        for sw in switches:
            sw.quantize_acts = sw.kind not in acts_off
            sw.quantize_weights = sw.kind not in weights_off
        nll = window_nlls(model, windows)
        out["rows"][row] = {"ppl": round(math.exp(sum(nll) / len(nll)), 4),
                            "window_nll": [round(v, 6) for v in nll]}
        print(row, out["rows"][row]["ppl"], flush=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
