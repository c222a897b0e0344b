"""Tile configs measured on a GPU, looked up by device name, GEMM shape and token count.

A table is one JSON file written by `benchmarks/kernels/tune_triton_gemm.py` on the GPU it
describes:

    {"kernel": "triton_gemm", "device": "NVIDIA H100 80GB HBM3", "triton": "3.6.0",
     "command": "...", "entries": [{"n": 4096, "k": 4096, "m": 16,
                                    "config": {"BLOCK_M": 16, ..., "SPLIT_K": 2}}, ...]}

Tables ship in `tuned_configs/` beside this file; `DUQUANT_TUNED_CONFIGS=DIR` adds a directory
searched first (tune your own GPU and point the server at the result). A config tuned at token
count m serves every M from the previous tuned count (exclusive) up to m; above the largest,
the largest's. Shapes or devices without a table keep the kernel's static choice, so the same
inputs always run the same code — tuning happens offline, never while serving.
"""

from __future__ import annotations

import bisect
import functools
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).with_name("tuned_configs")

# What each kernel's config must hold, and the checks a value must pass (the launcher's own
# constraints: power-of-two tiles of at least 16, K tiles in whole 64-code groups).
_POW2 = (lambda v: v >= 16 and v & (v - 1) == 0, "a power of two >= 16")
SCHEMAS: dict[str, dict[str, tuple[Any, str]]] = {
    "triton_gemm": {
        "BLOCK_M": _POW2,
        "BLOCK_N": _POW2,
        "BLOCK_K": (lambda v: v >= 64 and v & (v - 1) == 0, "a power of two >= 64"),
        "GROUP_M": (lambda v: v >= 1, ">= 1"),
        "num_warps": (lambda v: v in (1, 2, 4, 8, 16), "one of 1, 2, 4, 8, 16"),
        "num_stages": (lambda v: 1 <= v <= 8, "between 1 and 8"),
        "SPLIT_K": (lambda v: 1 <= v <= 8, "between 1 and 8"),  # triton_gemm.SPLIT_K_MAX
    },
}


class TunedConfigError(ValueError):
    """A tuned-config table that cannot be used; the message names the file and the problem."""


def table_name(kernel: str, device: str) -> str:
    """File name of `kernel`'s table for `device` (its CUDA name, e.g. "NVIDIA H100 80GB HBM3")."""
    slug = "".join(c if c.isalnum() else "_" for c in device).strip("_")
    return f"{kernel}__{slug}.json"


def _check_config(kernel: str, cfg: Any, where: str) -> dict[str, int]:
    schema = SCHEMAS[kernel]
    if not isinstance(cfg, dict) or set(cfg) != set(schema):
        got = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
        raise TunedConfigError(f"{where}: config must have exactly {sorted(schema)}, got {got}")
    for key, (ok, want) in schema.items():
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or not ok(v):
            raise TunedConfigError(f"{where}: {key}={v!r} is not {want}")
    return dict(cfg)


def parse_table(data: Any, source: str, kernel: str) -> dict[tuple[int, int], list]:
    """{(n, k): [(m, config), ...] sorted by m} from a table's JSON, or TunedConfigError."""
    if not isinstance(data, dict) or data.get("kernel") != kernel:
        raise TunedConfigError(f"{source}: not a {kernel!r} table (its 'kernel' is "
                               f"{data.get('kernel') if isinstance(data, dict) else None!r})")
    entries = data.get("entries")
    if not isinstance(entries, list) or not entries:
        raise TunedConfigError(f"{source}: 'entries' must be a non-empty list")
    out: dict[tuple[int, int], dict[int, dict]] = {}
    for i, e in enumerate(entries):
        where = f"{source}: entries[{i}]"
        if not isinstance(e, dict):
            raise TunedConfigError(f"{where} is not an object")
        dims = [e.get(d) for d in ("n", "k", "m")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims):
            raise TunedConfigError(f"{where}: n, k, m must be positive integers, got {dims}")
        n, k, m = dims
        by_m = out.setdefault((n, k), {})
        if m in by_m:
            raise TunedConfigError(f"{where}: a second entry for n={n}, k={k}, m={m}")
        by_m[m] = _check_config(kernel, e.get("config"), where)
    return {nk: sorted(by_m.items()) for nk, by_m in out.items()}


def triton_version() -> str | None:
    """The installed Triton's version, read without importing it (None if not installed)."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def search_dirs(extra: str = "") -> tuple[Path, ...]:
    """`extra` (the DUQUANT_TUNED_CONFIGS switch, knobs.py) first, then the shipped tables."""
    return ((Path(extra),) if extra else ()) + (SHIPPED_DIR,)


@functools.cache
def load_table(kernel: str, device: str, dirs: tuple[Path, ...]) -> dict[tuple[int, int], list]:
    """The first table for (kernel, device) in `dirs`, parsed; {} if there is none."""
    for d in dirs:
        path = d / table_name(kernel, device)
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise TunedConfigError(f"{path}: unreadable tuned-config table ({e})") from e
        table = parse_table(data, str(path), kernel)
        if data.get("device") != device:
            raise TunedConfigError(f"{path}: tuned on {data.get('device')!r}, file name says "
                                   f"{device!r}")
        made, running = data.get("triton"), triton_version()
        if made and running and str(made).split(".")[:2] != running.split(".")[:2]:
            # Still used (the load-time self-test checks tuned shapes at full width), but the
            # timings that chose them came from another compiler.
            logger.warning("%s was tuned under Triton %s, this process runs %s: its configs "
                           "are used but may no longer be the fastest; re-tune with "
                           "`duquant bench tune-gemm`", path, made, running)
        return table
    return {}


@functools.cache
def _bucketed(kernel: str, device: str, n: int, k: int, extra: str):
    rows = load_table(kernel, device, search_dirs(extra)).get((n, k))
    return ([m for m, _ in rows], [c for _, c in rows]) if rows else None


def counts(kernel: str, device: str, n: int, k: int, extra: str = "") -> tuple[int, ...]:
    """The token counts (n, k) was tuned at on `device` (tables in `extra`, then the shipped
    ones), ascending; () if it was not. Running at each one runs each of its tuned configs."""
    hit = _bucketed(kernel, device, n, k, extra)
    return tuple(hit[0]) if hit else ()


def lookup(kernel: str, device: str, n: int, k: int, m: int, extra: str = ""
           ) -> dict[str, int] | None:
    """The tuned config for an [m, k] × [k, n] problem on `device` (tables in `extra`, then
    the shipped ones), or None (no table, or the shape is not in it): the config tuned at the
    smallest tuned count ≥ m, else the largest. Cached per shape: a bisect per call."""
    hit = _bucketed(kernel, device, n, k, extra)
    if hit is None:
        return None
    ms, cfgs = hit
    return dict(cfgs[min(bisect.bisect_left(ms, m), len(ms) - 1)])  # a copy: the cache's stays
