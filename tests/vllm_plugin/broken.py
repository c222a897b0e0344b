"""Copies of a good checkpoint with one defect each (what the refusal tests load)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

LAYER = "model.layers.0"
MISSING = f"{LAYER}.self_attn.q_proj.input_rot1"  # the qkv group's one copy (format 4)
MISMATCHED = f"{LAYER}.mlp.up_proj.input_rot2"


def as_format3(tensors: dict, cfg: dict) -> None:
    """Rewrite a format-4 checkpoint as format 3: every fused linear with its own copy of the
    group's input transform (what older checkpoints hold)."""
    from duquant_serve.core.topology import FUSED_LEADER

    for key in [k for k in tensors if k.endswith(".qweight")]:
        m = key.removesuffix(".qweight")
        prefix, _, rel = m.partition(".layers.")
        layer, _, name = rel.partition(".")
        if name in FUSED_LEADER:
            leader = f"{prefix}.layers.{layer}.{FUSED_LEADER[name]}"
            for suf in ("input_rot1", "input_perm", "input_rot2", "input_smooth"):
                if f"{leader}.{suf}" in tensors:
                    tensors[f"{m}.{suf}"] = tensors[f"{leader}.{suf}"].clone()
    cfg["quantization_config"]["format_version"] = 3
    # Format 3 has no activation groups; group-local permutations are valid without them.
    cfg["quantization_config"].pop("act_group_size", None)


def make_broken(src: Path, dst: Path, kind: str) -> Path:
    """kind: "missing" (drops MISSING), "mismatch" (rewritten as format 3, where each fused
    linear has its own transform copy, and MISMATCHED differs from gate_proj's, still
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
        as_format3(tensors, cfg)
        cfg_file.write_text(json.dumps(cfg, indent=2))
        r = tensors[MISMATCHED].clone()
        tensors[MISMATCHED] = r[[1, 0, *range(2, r.shape[0])]].contiguous()
    else:
        raise ValueError(kind)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst
