"""Size a deployment: weight and KV-cache memory per GPU, the smallest TP x PP layout that fits,
and the decode-throughput ratio W4A4 / BF16 expected from memory traffic. Arithmetic only (no
GPU needed); the formulas are in docs/capacity.md.

    python benchmarks/capacity/capacity_model.py                      # the default table
    python benchmarks/capacity/capacity_model.py --context 8192 --batch 32 --kv-dtype fp8 --json OUT

Weights: BF16 = 2 bytes per parameter. W4A4 follows docs/checkpoint-format.md: every decoder
linear as packed 4-bit codes (0.5 byte/weight) + fp32 scale and zero per output channel, one
input transform per activation site (R1, R2: b x b fp32; perm int32 and, for o_proj, smooth
fp32 per input channel); embeddings and lm_head stay 16-bit, as `duquant quantize` writes them.
`--weights-int8` counts weights as one int8 code per byte (the cutlass_sm90_int8w layout).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.models import MODELS, Model  # noqa: E402

GIB = 2**30


# (memory GB as sold, usable GiB after the driver/context, HBM TB/s)
GPUS = {"H100-80GB": (80, 79.1, 3.35), "H200-141GB": (141, 139.8, 4.8)}


def weight_bytes(m: Model, scheme: str, block: int = 128, int8_weights: bool = False) -> int:
    if scheme == "bf16":
        return 2 * m.params()
    code_bytes = 1.0 if int8_weights else 0.5
    per_layer = sum(o * k * code_bytes + 8 * o for o, k in m.linears())  # codes + scale, zero
    for width, online in m.sites():
        per_layer += 2 * block * block * 4 + 4 * width + (4 * width if online else 0)
    per_layer += 2 * 2 * m.hidden  # the two RMSNorm weights, 16-bit
    return int(m.layers * per_layer + 2 * (m.embedding_params() + m.hidden))


def kv_bytes_per_token(m: Model, kv_dtype: str) -> int:
    """K and V of every layer for one token."""
    return 2 * m.layers * m.kv_heads * m.head_dim * (1 if kv_dtype == "fp8" else 2)


def smallest_layout(weights: int, kv_need: int, usable_gib: float, utilization: float,
                    overhead_gib: float, gpus_per_node: int = 8) -> dict | None:
    """Fewest GPUs (then the lowest TP) whose per-GPU share of weights + KV fits. TP in
    1, 2, 4, 8 within a node, PP across nodes (the layout vLLM recommends)."""
    budget = usable_gib * GIB * utilization - overhead_gib * GIB
    best = None
    for pp in (1, 2, 3, 4, 8):
        for tp in (1, 2, 4, 8):
            if tp > gpus_per_node:
                continue
            n = tp * pp
            per_gpu = (weights + kv_need) / n
            if per_gpu <= budget and (best is None or n < best["gpus"]):
                best = {"tp": tp, "pp": pp, "gpus": n, "nodes": -(-n // gpus_per_node),
                        "per_gpu_gib": round(per_gpu / GIB, 1),
                        "kv_room_gib": round((budget * n - weights) / GIB, 1)}
        if best is not None:
            return best
    return None


def decode_ratio(w_w4: int, w_bf16: int, kv_token: int, batch: int, context: int) -> float:
    """Tokens/s of W4A4 over BF16 on the same GPUs when a decode step is bound by reading the
    weights once and each sequence's KV cache: (W_bf16 + B·L·kv) / (W_w4 + B·L·kv)."""
    kv = batch * context * kv_token
    return (w_bf16 + kv) / (w_w4 + kv)


def table(args) -> dict:
    rows = []
    for name in args.models:
        m = MODELS[name]
        w = {"bf16": weight_bytes(m, "bf16"),
             "w4a4": weight_bytes(m, "w4a4", args.block, args.weights_int8)}
        kv_tok = kv_bytes_per_token(m, args.kv_dtype)
        kv_need = args.batch * args.context * kv_tok
        row = {"model": name, "params_b": round(m.params() / 1e9, 2),
               "weights_gib": {k: round(v / GIB, 1) for k, v in w.items()},
               "w4a4_over_bf16": round(w["w4a4"] / w["bf16"], 3),
               "kv_per_token_kib": kv_tok / 1024,
               "kv_for_batch_gib": round(kv_need / GIB, 1),
               "layouts": {}, "decode_ratio": {}}
        for gpu, (_, usable, _bw) in GPUS.items():
            for scheme in w:
                row["layouts"][f"{gpu} {scheme}"] = smallest_layout(
                    w[scheme], kv_need, usable, args.utilization, args.overhead_gib)
        for b in args.decode_batches:
            row["decode_ratio"][str(b)] = round(decode_ratio(w["w4a4"], w["bf16"], kv_tok, b,
                                                             args.context), 2)
        rows.append(row)
    return {"assumptions": {k: v for k, v in vars(args).items() if k != "json"},
            "gpus": {k: dict(zip(("sold_gb", "usable_gib", "hbm_tb_s"), v, strict=True))
                     for k, v in GPUS.items()},
            "models": {n: asdict(MODELS[n]) for n in args.models}, "rows": rows}


def print_table(doc: dict) -> None:
    a = doc["assumptions"]
    print(f"batch {a['batch']} x context {a['context']} tokens of KV ({a['kv_dtype']}), "
          f"gpu-memory-utilization {a['utilization']}, {a['overhead_gib']} GiB activations/"
          "workspace per GPU")
    for r in doc["rows"]:
        print(f"\n{r['model']} ({r['params_b']} B params): weights BF16 {r['weights_gib']['bf16']} "
              f"GiB, W4A4 {r['weights_gib']['w4a4']} GiB ({r['w4a4_over_bf16']}x); KV "
              f"{r['kv_per_token_kib']:.0f} KiB/token, {r['kv_for_batch_gib']} GiB for the batch")
        for key, lay in r["layouts"].items():
            if lay is None:
                print(f"  {key:<22} does not fit in 8 nodes")
            else:
                print(f"  {key:<22} TP {lay['tp']} x PP {lay['pp']} = {lay['gpus']} GPU(s), "
                      f"{lay['per_gpu_gib']} GiB/GPU, KV room {lay['kv_room_gib']} GiB")
        ratios = ", ".join(f"batch {b}: {v}x" for b, v in r["decode_ratio"].items())
        print(f"  decode tokens/s W4A4 / BF16 on the same GPUs (memory-bound): {ratios}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["llama2-70b", "llama3-70b"],
                    choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=16, help="concurrent sequences to hold KV for")
    ap.add_argument("--context", type=int, default=4096, help="tokens per sequence")
    ap.add_argument("--kv-dtype", choices=("bf16", "fp8"), default="bf16")
    ap.add_argument("--utilization", type=float, default=0.9, help="vLLM --gpu-memory-utilization")
    ap.add_argument("--overhead-gib", type=float, default=4.0,
                    help="per GPU: activations, CUDA graphs, workspace")
    ap.add_argument("--block", type=int, default=128, help="rotation block size")
    ap.add_argument("--weights-int8", action="store_true",
                    help="weights one int8 code per byte (cutlass_sm90_int8w)")
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if min(args.batch, args.context, *args.decode_batches) < 1 or not 0 < args.utilization <= 1:
        ap.error("batch, context and decode batches must be >= 1; utilization in (0, 1]")
    doc = table(args)
    print_table(doc)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
