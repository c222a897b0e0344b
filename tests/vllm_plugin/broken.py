"""Copies of a good checkpoint with one defect each (what the refusal tests load)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

LAYER = "model.layers.0"
MISSING = f"{LAYER}.self_attn.k_proj.input_rot1"
MISMATCHED = f"{LAYER}.mlp.up_proj.input_rot2"


def make_broken(src: Path, dst: Path, kind: str) -> Path:
    """kind: "missing" (drops MISSING), "mismatch" (MISMATCHED differs from gate_proj's, still
    orthogonal: rows swapped), "tp1" (tp_shards 1: refuses TP 2), "w8a8" (config says W8A8)."""
    shutil.copytree(src, dst)
    cfg_file = dst / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if kind in ("tp1", "w8a8"):
        qc = cfg["quantization_config"]
        if kind == "tp1":
            qc["tp_shards"] = 1
        else:
            qc["w_bits"] = qc["a_bits"] = 8
        cfg_file.write_text(json.dumps(cfg, indent=2))
        return dst
    tensors = load_file(dst / "model.safetensors")
    if kind == "missing":
        del tensors[MISSING]
    elif kind == "mismatch":
        r = tensors[MISMATCHED].clone()
        tensors[MISMATCHED] = r[[1, 0, *range(2, r.shape[0])]].contiguous()
    else:
        raise ValueError(kind)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst
