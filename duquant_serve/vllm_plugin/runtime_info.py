"""Which kernel each DuQuant layer runs, handed from vLLM's engine processes to its API server.

In vLLM V1 the model is built and `process_weights_after_loading` picks each layer's kernel in
the engine-core / worker processes, while HTTP is served by the API-server process. The plugin
records its choices here (`record_layer`), one JSON file per process in the directory named by
``DUQUANT_RUNTIME_DIR`` (set by `duquant serve`); the API server reads them back
(`read_kernel_report`). Without that variable nothing is recorded (e.g. `vllm.LLM(...)`).

File ``layers-<pid>.json`` (rewritten atomically after every layer, so a reader never sees half
a file)::

    {"pid": 123, "rank": 0, "layers": {"model.layers.0.self_attn.qkv_proj":
        {"kernel": "torch_ref", "in_features": 256, "out_features": 512, "block_size": 128,
         "groups": 1, "weight_bytes": 70144}, ...}}

in_features is this rank's input width (per-group width × groups), weight_bytes what the
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

# This process's records, layer name → entry (a process loads one model).
_layers: dict[str, dict[str, Any]] = {}


def record_layer(name: str, kernel: str, spec: Any, prepared: Any) -> None:
    """Record that layer `name` runs `kernel` (spec: the kernels.base.LayerSpec it was chosen
    for, prepared: its PreparedLinear, or one per activation group). A no-op unless
    ``DUQUANT_RUNTIME_DIR`` is set."""
    directory = os.environ.get(RUNTIME_DIR_ENV)
    if not directory:
        return
    parts = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
    _layers[name] = {"kernel": kernel, "in_features": spec.in_features * len(parts),
                     "out_features": spec.out_features, "block_size": spec.block_size,
                     "groups": len(parts),
                     "weight_bytes": sum(int(p.resident_bytes()) for p in parts)}
    doc = {"pid": os.getpid(), "rank": _rank(), "layers": _layers}
    path = Path(directory) / f"{_PREFIX}{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


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
    docs = []
    for p in sorted(Path(directory).glob(f"{_PREFIX}*.json")):
        try:
            docs.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue  # vanished (process gone) or not ours: skip, the others still count
    docs.sort(key=lambda d: (d.get("rank", 0), d.get("pid", 0)))
    layers: dict[str, str] = {}
    weight_bytes: dict[str, int] = {}
    ranks: dict[str, dict[str, Any]] = {}
    for d in docs:
        ranks.setdefault(str(d.get("rank", 0)), {}).update(d.get("layers", {}))
        for name, entry in d.get("layers", {}).items():
            layers.setdefault(name, entry["kernel"])
            weight_bytes[entry["kernel"]] = weight_bytes.get(entry["kernel"], 0) + entry["weight_bytes"]
    counts: dict[str, int] = {}
    for kernel in layers.values():
        counts[kernel] = counts.get(kernel, 0) + 1
    return {"layers": dict(sorted(layers.items())), "counts": counts,
            "weight_bytes": weight_bytes, "ranks": ranks}


def remove_records(directory: str | Path) -> None:
    """Delete the record files (only ours) and the directory if that leaves it empty."""
    d = Path(directory)
    for p in list(d.glob(f"{_PREFIX}*.json")) + list(d.glob(f"{_PREFIX}*.tmp")):
        p.unlink(missing_ok=True)
    try:
        d.rmdir()
    except OSError:
        pass  # not empty (someone else's files) or already gone
