"""What the GPU kernels share: availability checks (CUDA, Triton, the CUTLASS extension) and
the fused Triton prologue call."""

from __future__ import annotations

import importlib.util

import torch

from .base import LayerSpec, PreparedLinear

_ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def common_gpu_checks(spec: LayerSpec) -> str | None:
    if spec.device_type != "cuda":
        return f"needs a CUDA device, layer is on {spec.device_type!r}"
    if spec.capability is None:
        return "no CUDA capability known for the device"
    if spec.w_bits != 4 or spec.a_bits != 4:
        return f"only W4A4 (got W{spec.w_bits}A{spec.a_bits})"
    if spec.act_dtype not in _ACT_DTYPES:
        return f"activation dtype {spec.act_dtype} not in {_ACT_DTYPES}"
    if spec.block_size < 16:
        return f"rotation block {spec.block_size} < 16 (tensor-core dot minimum)"
    return None


def triton_missing() -> str | None:
    return None if importlib.util.find_spec("triton") else "triton is not installed"


def cutlass_missing(arch: str) -> str | None:
    """Why libduquant_ext.so cannot serve `arch` ("sm90a", "sm80"), or None."""
    from .cutlass import built_archs, load_error

    if load_error():
        return load_error()
    if arch not in built_archs():
        return f"libduquant_ext.so was built without {arch}"
    return None


def prologue(p: PreparedLinear, x2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Codes, scale, zero and Σq of x2 [M, K] (the fused Triton prologue on CUDA, run as the
    switches in `p.knobs` say)."""
    k = p.knobs
    return torch.ops.duquant.prologue(x2, p.r1, p.r2, p.perm, p.inv_perm, p.smooth,
                                      p.spec.a_bits, p.act_clip_ratio, k.prologue_precision,
                                      k.prologue_phase3, k.prologue_decode)
