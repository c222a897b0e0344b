"""duquant_serve/kernels/device_state.py: the state the split kernels keep across launches."""

from __future__ import annotations

import pytest
import torch

from duquant_serve.kernels import device_state


def test_arrival_counters_are_made_once_per_owner_and_device():
    a = device_state.arrival_counters(device_state.SPLIT_K_GEMM, "cpu")
    assert a.dtype == torch.int32 and a.numel() == device_state.COUNTER_SLOTS[
        device_state.SPLIT_K_GEMM] and int(a.abs().sum()) == 0
    # The same tensor every time (captured CUDA graphs hold its address); each owner its own.
    assert device_state.arrival_counters(device_state.SPLIT_K_GEMM, torch.device("cpu")) is a
    b = device_state.arrival_counters(device_state.SPLIT_PROLOGUE, "cpu")
    assert b.data_ptr() != a.data_ptr()
    with pytest.raises(KeyError):
        device_state.arrival_counters("nobody", "cpu")


def test_create_counters_only_on_cuda(monkeypatch):
    # prepare_common calls it for every layer; off CUDA nothing is made.
    monkeypatch.setattr(device_state, "_counters", {})
    device_state.create_counters("cpu")
    assert device_state._counters == {}
    assert device_state.sm_count(torch.device("cpu")) is None
