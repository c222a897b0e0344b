"""duquant_serve/kernels/knobs.py: the operator switches are read and checked once, at kernel
choice and prepare, and reach the launchers through the prepared state."""

from __future__ import annotations

import logging

import pytest
import torch

from duquant_serve.kernels import gpu_common, select
from duquant_serve.kernels.base import LayerSpec
from duquant_serve.kernels.knobs import KernelKnobs, KnobError
from duquant_serve.kernels.linear_kernels import CpuInt8Kernel
from duquant_serve.kernels.random_cases import random_activations, random_linear

CPU = LayerSpec(192, 64, 64, act_dtype=torch.float32, device_type="cpu")
NAMES = ("DUQUANT_KERNEL", "DUQUANT_DISABLED_KERNELS", "DUQUANT_KERNEL_SELFTEST",
         "DUQUANT_ENABLE_UNVALIDATED", "DUQUANT_SPLIT_K", "DUQUANT_PROLOGUE_PRECISION",
         "DUQUANT_PROLOGUE_PHASE3", "DUQUANT_PROLOGUE_DECODE", "DUQUANT_TUNED_CONFIGS")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    select._logged.clear()


def test_defaults_and_what_changed():
    assert KernelKnobs.from_env({}) == KernelKnobs()
    assert KernelKnobs().changed() == {}
    k = KernelKnobs.from_env({"DUQUANT_DISABLED_KERNELS": " triton, cpu_int8 ,",
                              "DUQUANT_SPLIT_K": "0", "DUQUANT_PROLOGUE_DECODE": "split",
                              "DUQUANT_KERNEL_SELFTEST": "1"})
    assert k.disabled == ("triton", "cpu_int8") and not k.split_k
    assert k.changed() == {"disabled": ("triton", "cpu_int8"), "split_k": False,
                           "prologue_decode": "split"}


@pytest.mark.parametrize("name,value", [
    ("DUQUANT_SPLIT_K", "off"), ("DUQUANT_KERNEL_SELFTEST", "no"),
    ("DUQUANT_ENABLE_UNVALIDATED", "yes"), ("DUQUANT_PROLOGUE_PRECISION", "bf16"),
    ("DUQUANT_PROLOGUE_PHASE3", "twice"), ("DUQUANT_PROLOGUE_DECODE", "fused"),
])
def test_a_bad_switch_fails_the_kernel_choice_naming_it(monkeypatch, name, value):
    # At load, before any forward: the error names the variable and its value.
    monkeypatch.setenv(name, value)
    with pytest.raises(KnobError, match=f"{name}='{value}'"):
        select.choose_kernel(CPU)


def test_prepared_state_carries_the_switches_to_the_launch(monkeypatch):
    g = torch.Generator().manual_seed(0)
    lin = random_linear(64, 192, 64, False, False, g)
    args = (lin.qweight, lin.weight_scale, lin.weight_zero, lin.transform, None,
            lin.act_clip_ratio)
    monkeypatch.setenv("DUQUANT_PROLOGUE_DECODE", "split")
    monkeypatch.setenv("DUQUANT_PROLOGUE_PRECISION", "ieee")
    p = CpuInt8Kernel.prepare(CPU, *args)  # read from the environment at prepare
    assert (p.knobs.prologue_decode, p.knobs.prologue_precision) == ("split", "ieee")
    # After prepare the environment no longer matters: the launch uses the prepared switches.
    monkeypatch.setenv("DUQUANT_PROLOGUE_DECODE", "fused")
    seen = []
    real = torch.ops.duquant.prologue

    def spy(*a):
        seen.append(a[-3:])
        return real(*a)

    monkeypatch.setattr(torch.ops.duquant, "prologue", spy)
    x = random_activations(3, 192, g, torch.float32)
    gpu_common.prologue(p, x)
    assert seen == [("ieee", "recompute", "split")]
    # Explicit switches win over the environment.
    q = CpuInt8Kernel.prepare(CPU, *args, knobs=KernelKnobs(split_k=False))
    assert q.knobs == KernelKnobs(split_k=False)


def test_the_choice_log_names_switches_away_from_default(monkeypatch, caplog):
    monkeypatch.setenv("DUQUANT_SPLIT_K", "0")
    with caplog.at_level(logging.INFO, logger="duquant_serve.kernels.select"):
        select.choose_kernel(CPU)
    assert "switches {'split_k': False}" in caplog.text
