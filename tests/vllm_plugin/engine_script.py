"""Run one vLLM engine on a checkpoint and write what the tests check as JSON.

    python engine_script.py CHECKPOINT OUT.json [--compile] [--tp N] [--pp N] [--max-tokens 32] PROMPT...

A separate process per engine: vLLM keeps process-wide state (distributed groups, compile
caches), and TP workers are spawned, hence the __main__ guard. Writes
{"startup_s", "generate_s", "tokens": [[...] per prompt], "layers": {prefix: [method, kernel]}}.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def describe_layers(model) -> dict[str, list[str]]:
    """vLLM module name → [quant method class, DuQuant kernel name or ""] for every linear."""
    from vllm.model_executor.layers.linear import LinearBase

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LinearBase):
            kernel = getattr(m, "duquant_kernel", None)
            out[name] = [type(m.quant_method).__name__, kernel.name if kernel else ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("prompts", nargs="+")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams

    llm = LLM(model=args.checkpoint, dtype="float32", enforce_eager=not args.compile,
              tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp, max_model_len=256,
              seed=0)
    startup = time.perf_counter() - t0
    layers = {}
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
        # In-process engine: look at the layers themselves (rank 0).
        layers = llm.apply_model(describe_layers)[0]
    sp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    t1 = time.perf_counter()
    outs = llm.generate(args.prompts, sp, use_tqdm=False)
    gen = time.perf_counter() - t1
    with open(args.out, "w") as f:
        json.dump({"startup_s": round(startup, 1), "generate_s": round(gen, 1),
                   "tokens": [list(o.outputs[0].token_ids) for o in outs],
                   "prompt_tokens": [list(o.prompt_token_ids) for o in outs],
                   "layers": layers}, f)


if __name__ == "__main__":
    main()
