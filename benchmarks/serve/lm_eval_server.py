"""`duquant bench serve-lm-eval`: accuracy through the server. lm-eval-harness (`local-completions`,
loglikelihoods from the completions endpoint's echoed prompt logprobs) against the 16-bit model
and the DuQuant checkpoint, each behind its own vLLM OpenAI server started here (one after the
other, same settings as `duquant bench serve`), on local WikiText-2 tasks
(benchmarks/lm_eval_tasks: no hub, no network).

    duquant bench serve-lm-eval --task wikitext2_local:6 --task wikitext2_lastword:150 \
        --json benchmarks/results/serve_lm_eval_smollm2.json

`--also LABEL=CHECKPOINT` (repeatable) serves more DuQuant checkpoints after the first two,
e.g. one made by another method, so every row of the comparison comes from one run.

Writes one JSON: machine, load average, exact lm-eval commands, per-task metrics of every
model and each quantized model's ratio to the 16-bit one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO, git_commit, machine_info
from benchmarks.serve.servers import ServePair, add_model_options, serving, slug

TASKS_DIR = REPO / "benchmarks" / "lm_eval_tasks"


def lm_eval_command(url: str, model: str, tokenizer: str, task: str, limit: int | None,
                    out_dir: Path, max_length: int, concurrent: int) -> list[str]:
    """`lm-eval run` with the local-completions model on a running server."""
    model_args = ",".join([f"model={model}", f"base_url={url}/v1/completions",
                           "tokenizer_backend=huggingface", f"tokenizer={tokenizer}",
                           f"max_length={max_length}", f"num_concurrent={concurrent}",
                           "max_retries=3", "tokenized_requests=True"])
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "local-completions",
           "--model_args", model_args, "--tasks", task, "--include_path", str(TASKS_DIR),
           "--output_path", str(out_dir)]
    return cmd + (["--limit", str(limit)] if limit is not None else [])


def read_metrics(out_dir: Path, task: str) -> dict:
    """The task's metrics from the newest results_*.json lm-eval wrote under out_dir
    ({"word_perplexity,none": …, "word_perplexity_stderr,none": …} → {"word_perplexity": …,
    "word_perplexity_stderr": …})."""
    files = sorted(out_dir.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError(f"lm-eval wrote no results under {out_dir}")
    res = json.loads(files[-1].read_text())
    raw = res["results"][task]
    out = {}
    for k, v in raw.items():
        if "," not in k or not isinstance(v, (int, float)):
            continue
        out[k.split(",", 1)[0]] = v  # the filter name after the comma is always "none" here
    out["samples"] = res.get("n-samples", {}).get(task, {}).get("effective")
    return out


def _parse_task(spec: str) -> tuple[str, int | None]:
    name, _, limit = spec.partition(":")
    return name, int(limit) if limit else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="duquant bench serve-lm-eval",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap)
    ap.add_argument("--task", action="append", default=None,
                    help="TASK[:LIMIT] (repeatable; LIMIT = first N documents/examples); default "
                         "wikitext2_local:6 and wikitext2_lastword:150")
    ap.add_argument("--max-length", type=int, default=2048,
                    help="lm-eval's context window (rolling windows of the documents)")
    ap.add_argument("--concurrent", type=int, default=2, help="requests in flight")
    ap.add_argument("--only", choices=["baseline", "DuQuant W4A4"], default=None,
                    help="run one of the two models only")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=CHECKPOINT",
                    help="another DuQuant checkpoint to serve and evaluate (repeatable)")
    ap.add_argument("--json", required=True, help="write the result here")
    ap.add_argument("--work-dir", default=None, help="lm-eval outputs and server logs (default: temp)")
    args = ap.parse_args(argv)

    tasks = [_parse_task(t) for t in (args.task or ["wikitext2_local:6", "wikitext2_lastword:150"])]
    pair = ServePair.from_args(args, "bench serve-lm-eval")
    if pair is None:
        return 2
    try:
        extra = [_parse_also(a) for a in args.also]
    except ValueError as e:
        print(f"bench serve-lm-eval: {e}", file=sys.stderr)
        return 2
    dtype = pair.dtype
    # echo + max_tokens=1: a window of max_length tokens plus the one generated token must fit.
    common = ["--host", "127.0.0.1", "--dtype", dtype, "--max-model-len", str(args.max_length + 8),
              "--no-enable-prefix-caching", *args.server_arg]
    # The tasks read local files only; make any accidental hub access fail fast.
    eval_env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lm_eval_server-"))
    work.mkdir(parents=True, exist_ok=True)

    result: dict = {
        "command": "duquant bench serve-lm-eval " + shlex.join(argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(), "machine": machine_info(), "loadavg_before": os.getloadavg(),
        "harness": "lm-eval " + _version("lm_eval") + ", model local-completions (echo=True, "
                   "logprobs=1, max_tokens=1 on /v1/completions; requests sent as token ids)",
        "settings": {"dtype": dtype, "server_common_args": common, "max_length": args.max_length,
                     "num_concurrent": args.concurrent,
                     "tasks": {t: {"limit": lim} for t, lim in tasks},
                     "tasks_dir": str(TASKS_DIR.relative_to(REPO)),
                     "data": "WikiText-2 raw test split (offline_quant/data/wikitext2/test.raw)",
                     "baseline_note": f"baseline = SmolLM2's Q4_1 GGUF dequantized to {dtype} "
                                      "(offline_quant.models.export_hf_model)"},
        "models": [],
    }
    runs = pair.commands(common) + [
        (label, ck, [sys.executable, "-m", "duquant_serve.cli", "serve", str(ck), *common])
        for label, ck in extra]
    for label, model_dir, head in runs:
        if args.only and label != args.only and not (args.only == "baseline"
                                                     and model_dir == pair.baseline):
            continue
        with serving(label, model_dir, head, pair.env, work) as (entry, url, model):
            entry["tasks"] = {}
            name = slug(label)
            for task, limit in tasks:
                out_dir = work / name / task
                cmd = lm_eval_command(url, model, str(model_dir), task, limit, out_dir,
                                      args.max_length, args.concurrent)
                print(f"[{label}] {shlex.join(cmd)}", flush=True)
                t = time.perf_counter()
                with open(work / f"{name}.{task}.log", "w") as log:
                    rc = subprocess.call(cmd, cwd=REPO, env=eval_env, stdout=log, stderr=subprocess.STDOUT)
                if rc:
                    raise RuntimeError(f"lm-eval exited {rc}; see {work / f'{name}.{task}.log'}")
                metrics = read_metrics(out_dir, task)
                entry["tasks"][task] = {"limit": limit, "metrics": metrics,
                                        "seconds": round(time.perf_counter() - t, 1),
                                        "lm_eval_command": shlex.join(cmd)}
                print(f"[{label}] {task}: {metrics}", flush=True)
        result["models"].append(entry)
    result["loadavg_after"] = os.getloadavg()
    result["comparison"] = compare_metrics(result["models"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    for row in result["comparison"]:
        ratio = "–" if row["ratio"] is None else f"{row['ratio']:.3f}"  # None: 16-bit value is 0
        print(f"{row['task']:<20} {row['metric']:<16} 16-bit {row['16-bit']:.4f}  "
              f"{row['model']} {row['value']:.4f}  ratio {ratio}")
    print(f"wrote {args.json}")
    return 0


def compare_metrics(models: list[dict]) -> list[dict]:
    """[{task, metric, model, 16-bit, value, ratio}]: every later model against the first (the
    16-bit one), for the metrics both have."""
    if len(models) < 2:
        return []
    a = models[0]
    rows = []
    for b in models[1:]:
        for task, ta in a["tasks"].items():
            tb = b["tasks"].get(task)
            if tb is None:
                continue
            for m, va in ta["metrics"].items():
                vb = tb["metrics"].get(m)
                if (m.endswith("_stderr") or m == "samples" or not isinstance(va, (int, float))
                        or vb is None):
                    continue
                rows.append({"task": task, "metric": m, "model": b["label"], "16-bit": va,
                             "value": vb, "ratio": vb / va if va else None})
    return rows


def _parse_also(spec: str) -> tuple[str, Path]:
    """'LABEL=CHECKPOINT' → (label, checkpoint dir); the directory must hold a config.json."""
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise ValueError(f"--also {spec!r}: expected LABEL=CHECKPOINT")
    ck = Path(path).resolve()
    if not (ck / "config.json").is_file():
        raise ValueError(f"--also {spec!r}: no checkpoint (config.json) at {ck}")
    return label, ck


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist.replace("_", "-"))
    except PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
