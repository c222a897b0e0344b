"""duquant_serve/kernels/select.py: priority, DUQUANT_KERNEL, DUQUANT_DISABLED_KERNELS, reasons."""

from __future__ import annotations

import logging

import pytest
import torch

from duquant_serve.kernels import cpu_int8, select
from duquant_serve.kernels import cutlass as cutlass_mod
from duquant_serve.kernels.base import LayerSpec

PROBE = cpu_int8.int_mm_cpu_slow  # the real speed probe (the fixture replaces it)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("DUQUANT_KERNEL", raising=False)
    monkeypatch.delenv("DUQUANT_DISABLED_KERNELS", raising=False)
    monkeypatch.delenv("DUQUANT_ENABLE_UNVALIDATED", raising=False)
    # A CPU whose torch._int_mm is fast (VNNI / AMX), whatever this machine has: the speed
    # probe's own tests below set it otherwise.
    monkeypatch.setattr(cpu_int8, "int_mm_cpu_slow", lambda: None)
    select._logged.clear()
    yield
    cutlass_mod._load.cache_clear()


CPU = LayerSpec(576, 960, 64, device_type="cpu")
H100 = LayerSpec(4096, 4096, 128, device_type="cuda", capability=(9, 0))
A100 = LayerSpec(4096, 4096, 128, device_type="cuda", capability=(8, 0))


def test_cpu_gets_int8_and_logs_once(caplog):
    with caplog.at_level(logging.INFO, logger="duquant_serve.kernels.select"):
        assert select.choose_kernel(CPU).name == "cpu_int8"
        assert select.choose_kernel(CPU).name == "cpu_int8"
    assert sum("selected kernel cpu_int8" in r.message for r in caplog.records) == 1


def test_activation_groups_pick_a_native_kernel_or_warn(caplog, monkeypatch):
    grouped = LayerSpec(576, 960, 64, device_type="cpu", act_groups=9)
    with caplog.at_level(logging.INFO, logger="duquant_serve.kernels.select"):
        assert select.choose_kernel(grouped).name == "cpu_int8"  # one block-scaled GEMM
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # A kernel without native groups serves each group alone, is chosen and tested on one
    # group's spec, and says so once.
    select._logged.clear()
    monkeypatch.setattr(cpu_int8.CpuInt8Kernel, "native_act_groups", False)
    with caplog.at_level(logging.INFO, logger="duquant_serve.kernels.select"):
        assert select.choose_kernel(grouped, "layers.0.qkv").name == "cpu_int8"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "9 activation groups as 9 separate linears" in warned[0]
    # On a GPU the block-scaled triton_groups is opt-in until validated: without the switch
    # the Triton kernel serves group by group (here: no GPU, so no self-test either).
    monkeypatch.setattr(cpu_int8.CpuInt8Kernel, "native_act_groups", True)
    h100 = LayerSpec(4096, 4096, 128, device_type="cuda", capability=(9, 0), act_groups=32)
    assert select.choose_kernel(h100).name == "triton"
    monkeypatch.setenv("DUQUANT_ENABLE_UNVALIDATED", "1")
    assert select.choose_kernel(h100).name == "triton_groups"


def test_cpu_without_a_fast_int_mm_gets_the_fp32_gemm(monkeypatch):
    # torch._int_mm missing, or slow (AVX2-only CPUs): the same integers from an fp32 GEMM.
    monkeypatch.setattr(cpu_int8, "int_mm_cpu_missing", lambda: "torch._int_mm does not run on CPU")
    assert select.choose_kernel(CPU).name == "cpu_fp32_gemm"
    monkeypatch.setattr(cpu_int8, "int_mm_cpu_missing", lambda: None)
    monkeypatch.setattr(cpu_int8, "int_mm_cpu_slow", lambda: "torch._int_mm is 33x slower")
    assert select.choose_kernel(CPU).name == "cpu_fp32_gemm"
    # Slow is a preference, not a refusal: it can run, and forcing it gets it.
    assert select.KERNELS["cpu_int8"].can_implement(CPU) == (True, None)
    assert "33x slower" in select.KERNELS["cpu_int8"].declines(CPU)
    monkeypatch.setenv("DUQUANT_KERNEL", "cpu_int8")
    assert select.choose_kernel(CPU).name == "cpu_int8"
    monkeypatch.delenv("DUQUANT_KERNEL")
    # With cpu_fp32_gemm disabled too, the reference serves, and the reasons say why.
    monkeypatch.setenv("DUQUANT_DISABLED_KERNELS", "cpu_fp32_gemm,torch_ref")
    with pytest.raises(select.NoKernelError, match="cpu_int8: torch._int_mm is 33x slower"):
        select.choose_kernel(CPU)
    monkeypatch.delenv("DUQUANT_DISABLED_KERNELS")
    ok, why = select.KERNELS["cpu_fp32_gemm"].can_implement(H100)
    assert not ok and "CPU only" in why
    # Beyond the width where fp32 partial sums of code products stay exact: refused.
    k = (cpu_int8.FP32_EXACT_MAX_K // 128 + 1) * 128
    wide = LayerSpec(k, 8, 128, device_type="cpu")
    ok, why = select.KERNELS["cpu_fp32_gemm"].can_implement(wide)
    assert not ok and "no longer be exact" in why


def test_cpu_falls_back_to_torch_ref(monkeypatch):
    # With both CPU GEMM kernels disabled the reference serves.
    monkeypatch.setenv("DUQUANT_DISABLED_KERNELS", "cpu_int8,cpu_fp32_gemm")
    assert select.choose_kernel(CPU).name == "torch_ref"
    ok, why = select.KERNELS["cpu_int8"].can_implement(H100)
    assert not ok and "CPU only" in why


@pytest.mark.parametrize("t_int,t_f32,slow", [(10.0, 1.0, True), (1.0, 1.0, False),
                                              (3.9, 1.0, False)])
def test_int_mm_speed_probe(monkeypatch, t_int, t_f32, slow):
    """The probe times torch._int_mm, then the fp32 GEMM; slower than INT_MM_SLOW_RATIO times
    the fp32 one is slow, with both times in the reason."""
    times = iter([t_int, t_f32])
    monkeypatch.setattr(cpu_int8, "_best_seconds", lambda fn: next(times))
    why = PROBE.__wrapped__()
    assert (why is not None) == slow
    if slow:
        assert "10x slower" in why and "10000.00 vs 1000.00 ms" in why


def test_int_mm_speed_probe_runs_here():
    """The real probe on this machine: no reason, or one with the measured times; it runs at
    model load, so it must leave the global RNG as it found it."""
    state = torch.get_rng_state()
    why = PROBE.__wrapped__()
    assert why is None or ("slower than an fp32 GEMM" in why and " ms at 64x512x512" in why)
    assert torch.equal(torch.get_rng_state(), state)


def test_forced_kernel_that_cannot_run_names_its_reason(monkeypatch):
    monkeypatch.setenv("DUQUANT_KERNEL", "triton")
    with pytest.raises(select.NoKernelError, match="triton: needs a CUDA device"):
        select.choose_kernel(CPU)


def test_unknown_kernel_name(monkeypatch):
    monkeypatch.setenv("DUQUANT_KERNEL", "marlin")
    with pytest.raises(ValueError, match="unknown kernel 'marlin'"):
        select.choose_kernel(CPU)


def test_all_disabled_lists_every_reason(monkeypatch):
    monkeypatch.setenv("DUQUANT_DISABLED_KERNELS", "torch_ref,cpu_int8,cpu_fp32_gemm")
    with pytest.raises(select.NoKernelError) as e:
        select.choose_kernel(CPU)
    msg = str(e.value)
    for name in ("cutlass_sm90", "cutlass_sm90_int8w", "cutlass_sm80", "triton", "cpu_int8",
                 "torch_ref"):
        assert f"{name}:" in msg
    assert "disabled by DUQUANT_DISABLED_KERNELS" in msg


def test_hopper_without_extension_falls_back_to_triton(monkeypatch, tmp_path):
    monkeypatch.setenv("DUQUANT_ENABLE_UNVALIDATED", "1")
    monkeypatch.setenv("DUQUANT_EXT_LIB", str(tmp_path / "missing.so"))
    monkeypatch.setattr(cutlass_mod, "_candidates", lambda: [tmp_path / "missing.so"])
    cutlass_mod._load.cache_clear()
    assert select.choose_kernel(H100).name == "triton"
    monkeypatch.setenv("DUQUANT_KERNEL", "cutlass_sm90")
    with pytest.raises(select.NoKernelError, match="libduquant_ext.so not loadable"):
        select.choose_kernel(H100)


def test_unvalidated_cutlass_is_opt_in(monkeypatch):
    for name in ("cutlass_sm90", "cutlass_sm90_int8w"):
        monkeypatch.setenv("DUQUANT_KERNEL", name)
        with pytest.raises(select.NoKernelError, match=f"{name}: compiled but never run on a GPU"):
            select.choose_kernel(H100)
    monkeypatch.delenv("DUQUANT_KERNEL")
    assert select.choose_kernel(H100).name == "triton"


def test_hopper_with_built_extension_prefers_cutlass(monkeypatch):
    monkeypatch.setenv("DUQUANT_ENABLE_UNVALIDATED", "1")
    cutlass_mod._load.cache_clear()
    if cutlass_mod.load_error() or "sm90a" not in cutlass_mod.built_archs():
        pytest.skip(f"extension not built here: {cutlass_mod.load_error()}")
    assert select.choose_kernel(H100).name == "cutlass_sm90"
    monkeypatch.setenv("DUQUANT_DISABLED_KERNELS", "cutlass_sm90")
    select._logged.clear()
    assert select.choose_kernel(H100).name == "cutlass_sm90_int8w"
    monkeypatch.setenv("DUQUANT_DISABLED_KERNELS", "cutlass_sm90,cutlass_sm90_int8w")
    assert select.choose_kernel(H100).name == "triton"
    # K % 32 != 0 (but % 16 == 0): the packed kernel's TMA rows need 16 bytes of 4-bit codes.
    monkeypatch.delenv("DUQUANT_DISABLED_KERNELS")
    odd_k = LayerSpec(4096 + 16, 4096, 16, device_type="cuda", capability=(9, 0))
    assert select.choose_kernel(odd_k).name == "cutlass_sm90_int8w"


def test_ampere_sm80_path_is_opt_in(monkeypatch):
    assert select.choose_kernel(A100).name == "triton"
    monkeypatch.setenv("DUQUANT_KERNEL", "cutlass_sm80")
    with pytest.raises(select.NoKernelError, match="cutlass_sm80: compiled but never run"):
        select.choose_kernel(A100)
    monkeypatch.delenv("DUQUANT_KERNEL")
    monkeypatch.setenv("DUQUANT_ENABLE_UNVALIDATED", "1")
    if cutlass_mod.load_error() is None:
        assert select.choose_kernel(A100).name == "cutlass_sm80"


def test_ada_and_sm86_get_triton():
    # Their 99 KB of shared memory per block fits the prologue since its dots read K slices
    # (16 KB; test_triton_aot.py compiles it for sm_89).
    for cap in ((8, 6), (8, 9)):
        spec = LayerSpec(4096, 4096, 128, device_type="cuda", capability=cap)
        assert select.choose_kernel(spec).name == "triton", cap


def test_spec_rejections():
    ok, why = select.KERNELS["triton"].can_implement(
        LayerSpec(4096 + 32, 4096, 32, device_type="cuda", capability=(9, 0)))
    assert not ok and "% 64" in why
    ok, why = select.KERNELS["triton"].can_implement(
        LayerSpec(4096, 4096, 128, device_type="cuda", capability=(7, 5)))
    assert not ok and "sm_80+" in why
    ok, why = select.KERNELS["triton"].can_implement(
        LayerSpec(4096, 4096, 128, act_dtype=torch.int8, device_type="cuda", capability=(9, 0)))
    assert not ok and "dtype" in why
    with pytest.raises(ValueError, match="power of two"):
        LayerSpec(576, 960, 48)
