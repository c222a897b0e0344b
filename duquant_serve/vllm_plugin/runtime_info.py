"""Which kernel each DuQuant layer runs, handed from vLLM's engine processes to its API server.

In vLLM V1 the model is built and `process_weights_after_loading` picks each layer's kernel in
the engine-core / worker processes, while HTTP is served by the API-server process. The plugin
records its choices here (`record_layer`), one JSON-lines file per process in the directory
named by ``DUQUANT_RUNTIME_DIR`` (set by `duquant serve`); the API server reads them back
(`read_kernel_report`). Without that variable nothing is recorded (e.g. `vllm.LLM(...)`).

File ``layers-<pid>.jsonl``, one line appended per layer as it is prepared (a reader skips a
line still being written)::

    {"pid": 123, "rank": 0, "name": "model.layers.0.self_attn.qkv_proj", "kernel": "torch_ref",
     "in_features": 256, "out_features": 512, "block_size": 128, "groups": 1,
     "weight_bytes": 70144}

in_features is this rank's input width, groups its activation groups, weight_bytes what the
prepared tensors hold on the device.

Importing this module imports neither vLLM nor torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUNTIME_DIR_ENV = "DUQUANT_RUNTIME_DIR"
_PREFIX = "layers-"
_SUFFIX = ".jsonl"


def record_layer(name: str, kernel: str, spec: Any, prepared: Any) -> None:
    """Record that layer `name` runs `kernel` (spec: the kernels.base.LayerSpec it was chosen
    for, prepared: its PreparedLinear, or the list `prepare_groups` made). A no-op unless
    ``DUQUANT_RUNTIME_DIR`` is set."""
    directory = os.environ.get(RUNTIME_DIR_ENV)
    if not directory:
        return
    parts = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
    entry = {"pid": os.getpid(), "rank": _rank(), "name": name, "kernel": kernel,
             "in_features": sum(p.spec.in_features for p in parts),
             "out_features": spec.out_features, "block_size": spec.block_size,
             "groups": sum(p.spec.act_groups for p in parts),
             "weight_bytes": sum(int(p.resident_bytes()) for p in parts)}
    # One short append per layer (O(layers) I/O in all while the model loads).
    with open(Path(directory) / f"{_PREFIX}{os.getpid()}{_SUFFIX}", "a") as f:
        f.write(json.dumps(entry) + "\n")


def _rank() -> int:
    """Global rank of this worker (0 without torch.distributed: one process serves it all)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def read_kernel_report(directory: str | Path) -> dict[str, Any]:
    """Merge the per-process records of `directory`:

    layers        layer name → kernel (the lowest rank's choice: tensor-parallel ranks hold the
                  same layers with the same per-rank shapes, so they choose alike)
    counts        kernel → number of layers
    weight_bytes  kernel → bytes of the prepared tensors, summed over all ranks
    ranks         rank → {layer name → entry} (every detail, per rank)
    """
    entries = []
    for p in sorted(Path(directory).glob(f"{_PREFIX}*{_SUFFIX}")):
        try:
            lines = p.read_text().splitlines()
        except OSError:
            continue  # vanished with its process: the others still count
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue  # a line still being appended
    entries.sort(key=lambda e: (e["rank"], e["pid"]))
    layers: dict[str, str] = {}
    weight_bytes: dict[str, int] = {}
    ranks: dict[str, dict[str, Any]] = {}
    for e in entries:
        detail = {k: v for k, v in e.items() if k not in ("pid", "rank", "name")}
        ranks.setdefault(str(e["rank"]), {})[e["name"]] = detail
        layers.setdefault(e["name"], e["kernel"])
        weight_bytes[e["kernel"]] = weight_bytes.get(e["kernel"], 0) + e["weight_bytes"]
    counts: dict[str, int] = {}
    for kernel in layers.values():
        counts[kernel] = counts.get(kernel, 0) + 1
    return {"layers": dict(sorted(layers.items())), "counts": counts,
            "weight_bytes": weight_bytes, "ranks": ranks}


def remove_records(directory: str | Path) -> None:
    """Delete the record files (only ours) and the directory if that leaves it empty."""
    d = Path(directory)
    for p in d.glob(f"{_PREFIX}*{_SUFFIX}"):
        p.unlink(missing_ok=True)
    try:
        d.rmdir()
    except OSError:
        pass  # not empty (someone else's files) or already gone
