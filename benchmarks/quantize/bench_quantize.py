"""Offline quantization time per device, and agreement between devices.

    python benchmarks/quantize/bench_quantize.py time --shape llama2-7b --layers 2 \
        --devices cuda,cpu --methods duquant,duquant-opt --out DIR
    python benchmarks/quantize/bench_quantize.py compare --device cuda --out DIR

`time` builds a random model with the real widths of --shape (full-width decoder layers, only
--layers of them, planted outlier channels) and runs `offline_quant.pipeline.quantize_model`
with the `duquant quantize` settings (16 × 512 calibration tokens, 256 greedy steps, block 128)
for each of --methods on each device: per-stage seconds, seconds per decoder layer, and that
figure times the real model's layer count (an extrapolation, labelled so). The layers are independent, so the
per-layer time is what a full model costs per layer.

`compare` quantizes one small random model on the CPU and on --device from the same seed, and
reports how far apart the results are: rotations, permutations and codes (GPU rounding may flip
a greedy step's argmax, so some sites legitimately differ), and, what decides, each quantized
model's logit error against the 16-bit model. `ok` is true when the device's error is within
25 % of the CPU's.

Needs torch and transformers only (no vLLM): it runs on the lent GPU machines' image.
Writes JSON lines to DIR/quantize.jsonl and prints them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.models import MODELS  # noqa: E402
from duquant_serve.core.config import DuQuantConfig  # noqa: E402
from duquant_serve.testing.tiny import build_random_model  # noqa: E402
from offline_quant.pipeline import (  # noqa: E402
    METHODS,
    PipelineOptions,
    describe_device,
    quantize_model,
    resolve_device,
)

# Real widths (benchmarks/models.py); `layers` is the real depth (for the extrapolation), not
# what is built.
SHAPES = {n: dict(hidden=m.hidden, heads=m.heads, kv_heads=m.kv_heads,
                  intermediate=m.intermediate, layers=m.layers)
          for n, m in MODELS.items() if n in ("llama2-7b", "llama3-8b", "smollm2-135m")}
VOCAB = 4096  # the embedding is not quantized; a small one keeps the model's memory down


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_quantize(shape: str, layers: int, dev: torch.device, nsamples: int, seqlen: int,
                  steps: int, method: str = "duquant") -> dict:
    s = SHAPES[shape]
    model = build_random_model("llama", seed=0, dtype=torch.bfloat16, init_std=0.02,
                               hidden=s["hidden"], heads=s["heads"], kv_heads=s["kv_heads"],
                               intermediate=s["intermediate"], layers=layers, vocab=VOCAB,
                               max_positions=max(512, seqlen))
    ids = torch.randint(3, VOCAB, (nsamples, seqlen), generator=torch.Generator().manual_seed(2))
    cfg = DuQuantConfig(rotation_steps=steps)
    _sync(dev)
    t = time.perf_counter()
    res = quantize_model(model, ids, cfg, PipelineOptions(method=method, progress=False,
                                                          device=str(dev)))
    _sync(dev)
    total = time.perf_counter() - t
    per_layer = total / layers
    return dict(bench="quantize_time", method=method, shape=shape, layers_built=layers,
                device=describe_device(dev), nsamples=nsamples, seqlen=seqlen,
                steps=res.config.rotation_steps,  # what ran: duquant-opt starts from its own
                dtype="bfloat16", seconds_total=round(total, 3),
                seconds_per_stage=res.report["seconds_per_stage"],
                seconds_per_layer=round(per_layer, 3),
                extrapolated_model_seconds=round(per_layer * s["layers"], 1),
                real_layers=s["layers"])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def compare_devices(dev: torch.device, steps: int) -> dict:
    base = build_random_model("llama", seed=0, dtype=torch.float32, hidden=256, heads=4,
                              kv_heads=2, intermediate=512, layers=2, vocab=259)
    ids = torch.randint(3, 259, (8, 128), generator=torch.Generator().manual_seed(2))
    cfg = DuQuantConfig(block_size=64, rotation_steps=steps)
    results = {}
    for where in ("cpu", str(dev)):
        model = copy.deepcopy(base)
        results[where] = quantize_model(model, ids, cfg,
                                        PipelineOptions(progress=False, device=where))
    a, b = results["cpu"], results[str(dev)]
    perm_equal = rot_diff = 0.0
    codes_differ = codes_total = 0
    scale_rel = 0.0
    for name, qa in a.linears.items():
        qb = b.linears[name]
        ta, tb = qa.transform, qb.transform.to("cpu")
        perm_equal += float(torch.equal(ta.perm, tb.perm))
        rot_diff = max(rot_diff, float((ta.r1 - tb.r1).abs().max()),
                       float((ta.r2 - tb.r2).abs().max()))
        ca, cb = qa.weight_codes(), qb.weight_codes().cpu()
        codes_differ += int((ca != cb).sum())
        codes_total += ca.numel()
        scale_rel = max(scale_rel, _rel(qb.weight_scale.cpu(), qa.weight_scale))
    test_ids = torch.randint(3, 259, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = base(input_ids=test_ids).logits
        err_cpu = _rel(a.model(input_ids=test_ids).logits, ref)
        err_dev = _rel(b.model(input_ids=test_ids).logits, ref)
    n = len(a.linears)
    return dict(check="device_agreement", device=describe_device(dev), linears=n,
                perm_equal_frac=round(perm_equal / n, 4), max_rotation_diff=rot_diff,
                code_mismatch_frac=codes_differ / codes_total, max_scale_rel=scale_rel,
                logits_rel_err_cpu=err_cpu, logits_rel_err_device=err_dev,
                ok=bool(err_dev <= 1.25 * err_cpu + 1e-3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("time")
    t.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    t.add_argument("--layers", type=int, default=2, help="decoder layers built and timed")
    t.add_argument("--devices", default="auto,cpu", help="comma list of resolve_device specs")
    t.add_argument("--nsamples", type=int, default=16)
    t.add_argument("--seqlen", type=int, default=512)
    t.add_argument("--steps", type=int, default=256)
    t.add_argument("--methods", default="duquant",
                   help="comma list of quantization methods, each timed on each device")
    c = sub.add_parser("compare")
    c.add_argument("--device", default="auto")
    c.add_argument("--steps", type=int, default=64)
    for p in (t, c):
        p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.what == "time":
        methods = list(dict.fromkeys(args.methods.split(",")))
        bad = [m for m in methods if m not in METHODS]
        if bad:
            ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
        for spec in dict.fromkeys(args.devices.split(",")):  # dedupe, keep order
            for method in methods:
                rows.append(time_quantize(args.shape, args.layers, resolve_device(spec),
                                          args.nsamples, args.seqlen, args.steps, method))
                print(json.dumps(rows[-1]), flush=True)
    else:
        rows.append(compare_devices(resolve_device(args.device), args.steps))
        print(json.dumps(rows[-1]), flush=True)
    with open(out / "quantize.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
