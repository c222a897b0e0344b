"""Statistics, comparison table and plots of `duquant bench serve` (no server, no vLLM here:
the functions take per-request measurements and return plain dicts, so tests feed them
synthetic data).

A run's per-request measurements (`RunData`) are the fields `vllm bench serve` records per
request: time to first token, inter-token gaps of the streamed chunks, end-to-end latency and
the output token count; the summary is computed from them, not copied from vLLM's printout,
so every figure in the result JSON can be recomputed from the JSON itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PERCENTILES = (50, 99)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RunData:
    """One workload at one concurrency against one server. Times in seconds; per request
    (successful ones only): ttfts[i], itls[i] (gaps between streamed chunks after the first),
    latencies[i] (end to end), output_lens[i]; input_lens for reference; duration: wall time
    of the whole run (first request sent → last answer), what throughputs divide by."""

    ttfts: list[float]
    itls: list[list[float]]
    latencies: list[float]
    output_lens: list[int]
    input_lens: list[int]
    duration: float
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    """{"p50": …, "p99": …, "mean": …} in milliseconds (numpy's linear interpolation, as
    vLLM's benchmark); None for every key when there is no value (e.g. TPOT of 1-token outputs)."""
    if not values:
        return {**{f"p{p}": None for p in PERCENTILES}, "mean": None}
    a = np.asarray(values, dtype=np.float64) * 1000.0
    out: dict[str, float | None] = {f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}
    out["mean"] = float(a.mean())
    return out


def summarize(run: RunData) -> dict:
    """→ latency percentiles (ms) and throughputs of one run.

    TPOT of a request = (latency − TTFT) / (output tokens − 1), only for outputs of ≥ 2 tokens
    (vLLM's definition); ITL pools every inter-chunk gap of every request."""
    if not (len(run.ttfts) == len(run.itls) == len(run.latencies) == len(run.output_lens)):
        raise ValueError("per-request lists differ in length")
    if run.duration <= 0:
        raise ValueError(f"duration must be positive, got {run.duration}")
    tpots = [(lat - ttft) / (n - 1)
             for ttft, lat, n in zip(run.ttfts, run.latencies, run.output_lens, strict=True) if n > 1]
    values = {"ttft": run.ttfts, "tpot": tpots, "itl": [g for gaps in run.itls for g in gaps],
              "e2el": run.latencies}
    completed = len(run.ttfts)
    out_tokens = int(sum(run.output_lens))
    in_tokens = int(sum(run.input_lens))
    return {
        **{f"{m}_ms": percentiles_ms(values[m]) for m in LATENCY_METRICS},
        "completed": completed,
        "failed": run.failed,
        "duration_s": run.duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": completed / run.duration,
        "output_throughput": out_tokens / run.duration,
        "input_throughput": in_tokens / run.duration,
    }


# (metric label, key path into a summary, higher is better)
COMPARED = (
    ("TTFT p50 (ms)", ("ttft_ms", "p50"), False),
    ("TTFT p99 (ms)", ("ttft_ms", "p99"), False),
    ("TPOT p50 (ms)", ("tpot_ms", "p50"), False),
    ("TPOT p99 (ms)", ("tpot_ms", "p99"), False),
    ("ITL p50 (ms)", ("itl_ms", "p50"), False),
    ("ITL p99 (ms)", ("itl_ms", "p99"), False),
    ("requests/s", ("request_throughput",), True),
    ("output tokens/s", ("output_throughput",), True),
)


def _get(summary: dict, path: tuple[str, ...]) -> float | None:
    v = summary
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    return v


def compare(models: list[dict]) -> list[dict]:
    """Rows `{workload, concurrency, metric, <label>: value…, ratio}` for every run the first
    two models share; ratio = second / first (None where a value is missing or zero).

    models: [{"label": …, "runs": [{"workload", "concurrency", "summary"}…]}…]; the first is
    the baseline."""
    if len(models) < 2:
        return []
    base, other = models[0], models[1]
    index = {(r["workload"], r["concurrency"]): r["summary"] for r in other["runs"]}
    rows = []
    for r in base["runs"]:
        key = (r["workload"], r["concurrency"])
        if key not in index:
            continue
        for label, path, higher_better in COMPARED:
            a, b = _get(r["summary"], path), _get(index[key], path)
            if a is None and b is None:
                continue  # TPOT/ITL of 1-token outputs
            ratio = b / a if a and b is not None else None
            rows.append({"workload": key[0], "concurrency": key[1], "metric": label,
                         base["label"]: a, other["label"]: b, "ratio": ratio,
                         "higher_is_better": higher_better})
    return rows


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"


def markdown_table(rows: list[dict], labels: tuple[str, str]) -> str:
    """The comparison rows as a Markdown table (one line per workload × concurrency × metric)."""
    a, b = labels
    lines = [f"| workload | concurrency | metric | {a} | {b} | {b} / {a} |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        lines.append(f"| {r['workload']} | {r['concurrency']} | {r['metric']} | {_fmt(r[a])} | "
                     f"{_fmt(r[b])} | {ratio} |")
    return "\n".join(lines)


def plot(result: dict, out_prefix: str | Path) -> list[Path]:
    """Two PNGs: `<prefix>_decode.png` (output tokens/s, ITL, TPOT, TTFT vs concurrency) and
    `<prefix>_prefill.png` (TTFT of long prompts). Needs matplotlib (`pip install -e .[bench]`)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    out_prefix = Path(out_prefix)
    written = []
    models = result["models"]
    title = result.get("title", "duquant bench serve")

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [(axes[0, 0], "output tokens/s", ("output_throughput",), None),
              (axes[0, 1], "ITL (ms)", ("itl_ms", "p50"), ("itl_ms", "p99")),
              (axes[1, 0], "TPOT (ms)", ("tpot_ms", "p50"), ("tpot_ms", "p99")),
              (axes[1, 1], "TTFT (ms)", ("ttft_ms", "p50"), ("ttft_ms", "p99"))]
    for ax, ylabel, p50_path, p99_path in panels:
        for i, m in enumerate(models):
            runs = sorted((r for r in m["runs"] if r["workload"] == "decode"),
                          key=lambda r: r["concurrency"])
            if not runs:
                continue
            xs = [r["concurrency"] for r in runs]
            color = f"C{i}"
            ax.plot(xs, [_get(r["summary"], p50_path) for r in runs], "o-", color=color,
                    label=m["label"] + (" p50" if p99_path else ""))
            if p99_path:
                ax.plot(xs, [_get(r["summary"], p99_path) for r in runs], "s--", color=color,
                        alpha=0.6, label=m["label"] + " p99")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}\ndecode-heavy: {_workload_text(result, 'decode')}", fontsize=10)
    written.append(_save(plt, fig, out_prefix, "decode"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = [m["label"] for m in models]
    pre = [next((r["summary"] for r in m["runs"] if r["workload"] == "prefill"), None)
           for m in models]
    x = np.arange(len(models))
    for j, p in enumerate(PERCENTILES):
        vals = [_get(s, ("ttft_ms", f"p{p}")) if s else 0 for s in pre]
        axes[0].bar(x + (j - 0.5) * 0.38, vals, 0.38, label=f"p{p}")
    axes[0].set_xticks(x, labels)
    axes[0].set_ylabel("TTFT (ms)")
    axes[0].legend()
    axes[1].bar(x, [s["input_throughput"] if s else 0 for s in pre], 0.5,
                color=[f"C{i}" for i in range(len(models))])
    axes[1].set_xticks(x, labels)
    axes[1].set_ylabel("prompt tokens/s")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title}\nprefill-heavy: {_workload_text(result, 'prefill')}", fontsize=10)
    written.append(_save(plt, fig, out_prefix, "prefill"))
    return written


def _save(plt, fig, out_prefix: Path, workload: str) -> Path:
    fig.tight_layout()
    path = out_prefix.with_name(f"{out_prefix.name}_{workload}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _workload_text(result: dict, name: str) -> str:
    w = result.get("settings", {}).get("workloads", {}).get(name)
    if not w:
        return ""
    outs = "token" if w["output_len"] == 1 else "tokens"
    return (f"{w['input_len']} prompt tokens → {w['output_len']} output {outs}, "
            f"concurrency {', '.join(map(str, w['concurrency']))}")
