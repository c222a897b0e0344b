"""Server-side perplexity: WikiText-2 windows scored through `duquant serve` (prompt logprobs of
vLLM's OpenAI completions endpoint) vs `duquant eval` of the same checkpoint (offline
reference, same windows, same protocol).

    python benchmarks/serve_ppl.py CHECKPOINT --dataset wikitext2 \
        --seqlen 2048 --limit 8 --json benchmarks/results/serve_ppl_smollm2.json

Starts the server itself (`python -m duquant_serve.cli serve ...` on a free local port) unless
--url points at a running one. Protocol of offline_quant.evaluate: the text tokenized once,
cut into non-overlapping windows, loss = mean cross-entropy of tokens 1..seqlen-1 of a window
given its prefix, ppl = exp(mean over windows). Windows are sent as token ids (no BOS added),
so both sides score exactly the same tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.serve.servers import free_port, start_server, stop_server


def start_duquant_server(checkpoint: str, seqlen: int, log_path: Path, extra: list[str]):
    """`duquant serve` on a free local port → (process, base url, seconds to healthy)."""
    port = free_port()
    argv = [sys.executable, "-m", "duquant_serve.cli", "serve", checkpoint, "--host", "127.0.0.1",
            "--port", str(port), "--max-model-len", str(seqlen + 8),
            # Each window is scored once; prefix caching would only hold memory.
            "--no-enable-prefix-caching", *extra]
    proc, startup = start_server(argv, dict(os.environ), log_path)
    return proc, f"http://127.0.0.1:{port}", startup


def window_nll(client, model: str, window: list[int]) -> float:
    """Mean NLL of window[1:] given its prefix, from the server's prompt logprobs."""
    r = client.completions.create(model=model, prompt=window, max_tokens=1, temperature=0,
                                  extra_body={"prompt_logprobs": 0})
    plp = r.choices[0].prompt_logprobs  # [None, {token_id: {logprob, ...}}, ...]
    if plp is None or len(plp) != len(window):
        raise RuntimeError(f"server returned {None if plp is None else len(plp)} prompt "
                           f"logprobs for a {len(window)}-token window")
    nll = 0.0
    for tok, entry in zip(window[1:], plp[1:], strict=True):
        nll -= entry[str(tok)]["logprob"]
    return nll / (len(window) - 1)


def reference_window_nlls(checkpoint: str, windows, attention: str | None) -> list[float]:
    """Per-window mean NLL of the offline reference model — the model and the expression of
    `duquant eval` (offline_quant.evaluate: load_checkpoint_model + window_nlls).
    `attention`: transformers attention implementation ("sdpa", "eager"; None = its default)."""
    from offline_quant.evaluate import load_checkpoint_model, window_nlls

    model, _, _ = load_checkpoint_model(checkpoint)
    if attention is not None:
        model.set_attn_implementation(attention)
    return window_nlls(model, windows)


def layer_check(checkpoint: str) -> dict:
    """In a fresh process: build a vLLM engine (in-process, eager) on the checkpoint, feed the
    same random input to every DuQuant layer and to the checkpoint's core.reference linears."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import serve_ppl; serve_ppl._layer_check_main({checkpoint!r})")
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("LAYER_CHECK ")]
    if proc.returncode or not line:
        raise RuntimeError(f"layer check failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(line[-1].split(" ", 1)[1])


def _layer_diffs(model) -> dict[str, float]:
    import torch

    from duquant_serve.checkpoint import load_checkpoint
    from duquant_serve.core.reference import w4a4_linear_ref

    ck = load_checkpoint(_CHECK_PATH)
    fused = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, m in model.named_modules():
        if getattr(m, "duquant_kernel", None) is None:
            continue
        parent, _, child = name.rpartition(".")
        qs = [ck.linears[f"{parent}.{c}"] for c in fused.get(child, [child])]
        x = torch.randn(7, qs[0].in_features, generator=gen) * 3  # x: [7, K] float32
        got = m.duquant_kernel.apply_groups(m.duquant_prepared, x)
        want = torch.cat([w4a4_linear_ref(x, q) for q in qs], dim=-1)
        out[name] = float((got - want).abs().max())
    return out


_CHECK_PATH = ""


def _layer_check_main(checkpoint: str) -> None:
    global _CHECK_PATH
    _CHECK_PATH = checkpoint
    from vllm import LLM

    llm = LLM(model=checkpoint, dtype="float32", enforce_eager=True, max_model_len=256)
    diffs = llm.apply_model(_layer_diffs)[0]
    print("LAYER_CHECK " + json.dumps({"layers": len(diffs),
                                        "max_abs_diff": max(diffs.values(), default=None)}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", default="wikitext2", help="shipped text name or a file")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--limit", type=int, default=8, help="windows scored (both sides)")
    ap.add_argument("--url", default=None, help="a running server (else one is started)")
    ap.add_argument("--eval-json", default=None,
                    help="reuse a `duquant eval --json` result of the same checkpoint/windows")
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--server-log", default=None, help="server output (default: a temp file)")
    ap.add_argument("--eager-attention-too", action="store_true",
                    help="also score the reference with transformers' eager attention: how much "
                         "a float-level implementation change alone moves the W4A4 perplexity")
    ap.add_argument("--layer-check", action="store_true",
                    help="also compare every DuQuant layer inside a vLLM engine with "
                         "core.reference on identical inputs")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra option for `duquant serve` (repeatable), e.g. --server-arg=--dtype=float32")
    args = ap.parse_args(argv)

    import openai
    from transformers import AutoTokenizer

    from offline_quant.evaluate import eval_windows

    ck = str(Path(args.checkpoint).resolve())
    tok = AutoTokenizer.from_pretrained(ck)
    windows = eval_windows(tok, args.dataset, args.seqlen, args.limit)
    from duquant_serve.checkpoint import read_config

    model_cfg, qcfg = read_config(ck)
    result: dict = {"checkpoint": ck, "quantization_config": qcfg.to_dict(),
                    "model_type": model_cfg.get("model_type"), "dataset": args.dataset,
                    "seqlen": args.seqlen,
                    "windows": int(windows.shape[0]), "tokens": int(windows.numel()),
                    "host": platform.node(), "cpu_count": os.cpu_count()}

    proc = None
    log_path = Path(args.server_log or tempfile.mkstemp(prefix="serve_ppl-", suffix=".log")[1])
    try:
        if args.url:
            url, startup = args.url, None
        else:
            proc, url, startup = start_duquant_server(ck, args.seqlen, log_path, args.server_arg)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=3600)
        model = client.models.list().data[0].id
        t = time.perf_counter()
        nlls = [window_nll(client, model, w.tolist()) for w in windows]
        serve_s = time.perf_counter() - t
    finally:
        if proc is not None:
            stop_server(proc)
    serve_ppl = math.exp(sum(nlls) / len(nlls))
    result["serve"] = {"ppl": serve_ppl, "seconds": round(serve_s, 1),
                       "startup_seconds": None if startup is None else round(startup, 1),
                       "server_args": args.server_arg, "window_nll": nlls}
    print(f"server: ppl {serve_ppl:.4f} ({serve_s:.0f}s for {len(nlls)} windows)", flush=True)

    if args.eval_json:
        ev = json.loads(Path(args.eval_json).read_text())
        if (ev["seqlen"], ev["windows"]) != (args.seqlen, result["windows"]):
            raise SystemExit(f"{args.eval_json} scored {ev['windows']} windows of {ev['seqlen']}, "
                             f"not {result['windows']} of {args.seqlen}")
        eval_ppl, eval_s = ev["results"][0]["ppl"], ev["results"][0]["seconds"]
        result["eval"] = {"ppl": eval_ppl, "seconds": eval_s, "source": args.eval_json}
    else:
        t = time.perf_counter()
        nll = reference_window_nlls(ck, windows, None)
        eval_ppl, eval_s = math.exp(sum(nll) / len(nll)), round(time.perf_counter() - t, 1)
        result["eval"] = {"ppl": eval_ppl, "seconds": eval_s, "window_nll": nll,
                          "source": "offline reference model of `duquant eval`, per window"}
    if args.eager_attention_too:
        nll = reference_window_nlls(ck, windows, "eager")
        result["eval_eager_attention"] = {"ppl": math.exp(sum(nll) / len(nll)), "window_nll": nll}
        print(f"reference with eager attention: ppl {result['eval_eager_attention']['ppl']:.4f}")
    if args.layer_check:
        result["layer_check"] = layer_check(ck)
        print(f"layer check: {result['layer_check']}")
    rel = abs(serve_ppl - eval_ppl) / eval_ppl
    result["relative_difference"] = rel
    result["within_1_percent"] = rel <= 0.01
    print(f"duquant eval: ppl {eval_ppl:.4f}; relative difference {rel:.4%}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["within_1_percent"] else 1


if __name__ == "__main__":
    sys.exit(main())
