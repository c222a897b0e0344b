"""What the Triton launchers keep per device: its SM count, and the arrival counters of the
kernels that split one output over several programs (the split decode prologue, the split-K
GEMM), where the last program to arrive finishes the work.

Counters are the one state kept across launches. Each launch leaves its counters at zero again
(its last program resets them), and kernels on one stream run in order, so every launch starts
from zero. Two streams running split kernels at the same time would share them; vLLM runs a
model's forward on one stream. They are made by an eager call (`prepare_common`, for every
layer it loads on a GPU), never inside a CUDA-graph capture, whose zero-fill would only run at
replay.
"""

from __future__ import annotations

import functools

import torch

# Arrival counters per owner: how many each needs (the split prologue, one per token it serves;
# the split-K GEMM, one per output tile of the grids it splits).
SPLIT_PROLOGUE = "split decode prologue"
SPLIT_K_GEMM = "split-K GEMM"
COUNTER_SLOTS = {SPLIT_PROLOGUE: 16, SPLIT_K_GEMM: 1024}

_counters: dict[tuple[str, torch.device], torch.Tensor] = {}


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int | None:
    """Streaming multiprocessors of a CUDA device; None off CUDA."""
    if device.type != "cuda":
        return None
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def arrival_counters(owner: str, device: torch.device | str) -> torch.Tensor:
    """`owner`'s COUNTER_SLOTS[owner] int32 counters on `device`, zero between launches. Made
    once and never replaced: captured CUDA graphs hold its address."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    count = _counters.get((owner, device))
    if count is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"the {owner}'s arrival counters must be created outside CUDA-graph capture: "
                "load layers with prepare_common, which makes them, or run one eager forward first")
        count = torch.zeros(COUNTER_SLOTS[owner], dtype=torch.int32, device=device)
        _counters[(owner, device)] = count
    return count


def create_counters(device: torch.device | str) -> None:
    """Every owner's counters on a CUDA `device`, made eagerly (prepare_common, at load)."""
    if torch.device(device).type == "cuda":
        for owner in COUNTER_SLOTS:
            arrival_counters(owner, device)
