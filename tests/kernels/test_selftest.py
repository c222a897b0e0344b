"""duquant_serve/kernels/selftest.py: a kernel must reproduce core.reference on the device
before choose_kernel hands it out; one that does not is passed over, with its reason."""

from __future__ import annotations

import logging

import pytest
import torch

from duquant_serve.kernels import cpu_int8, select, selftest
from duquant_serve.kernels.base import LayerSpec
from duquant_serve.kernels.knobs import KernelKnobs
from duquant_serve.kernels.linear_kernels import CpuInt8Kernel

SPEC = LayerSpec(192, 40, 64, has_smooth=True, has_bias=True, act_dtype=torch.float32,
                 device_type="cpu")


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for var in ("DUQUANT_KERNEL", "DUQUANT_DISABLED_KERNELS", "DUQUANT_KERNEL_SELFTEST"):
        monkeypatch.delenv(var, raising=False)
    # cpu_int8 is the kernel these tests expect to be chosen: as on a CPU whose torch._int_mm
    # is fast, whatever this machine has (cpu_int8.int_mm_cpu_slow).
    monkeypatch.setattr(cpu_int8, "int_mm_cpu_slow", lambda: None)
    selftest._results.clear()
    select._logged.clear()
    yield
    selftest._results.clear()


class _Broken(CpuInt8Kernel):
    """cpu_int8 with one defect, chosen by `mode`."""

    name = "broken"
    mode = "scaled"
    calls = 0

    @classmethod
    def apply(cls, p, x):
        cls.calls += 1
        y = super().apply(p, x)
        if cls.mode == "scaled":
            return y * 1.1  # e.g. a wrong scale in the epilogue
        if cls.mode == "nan":  # e.g. an output column never written
            y = y.clone()
            y[..., 3] = float("nan")
            return y
        raise RuntimeError("launch failed")


def _install(monkeypatch, mode):
    monkeypatch.setattr(_Broken, "mode", mode)
    monkeypatch.setattr(_Broken, "calls", 0)
    monkeypatch.setattr(select, "PRIORITY", (_Broken, *select.PRIORITY))
    monkeypatch.setitem(select.KERNELS, "broken", _Broken)


def test_a_correct_kernel_passes():
    why, err = selftest.self_test(CpuInt8Kernel, SPEC)
    assert why is None and 0 <= err < 1e-5


@pytest.mark.parametrize("mode,fragment", [("scaled", "differs from core.reference at M=1"),
                                           ("nan", "non-finite output"),
                                           ("raise", "raised RuntimeError: launch failed")])
def test_a_wrong_kernel_is_passed_over(monkeypatch, caplog, mode, fragment):
    _install(monkeypatch, mode)
    with caplog.at_level(logging.INFO, logger="duquant_serve.kernels.select"):
        assert select.choose_kernel(SPEC).name == "cpu_int8"
    assert any("broken failed its self-test" in r.message and fragment in r.message
               for r in caplog.records)
    # Forced, it is refused with the self-test's reason.
    monkeypatch.setenv("DUQUANT_KERNEL", "broken")
    with pytest.raises(select.NoKernelError, match="broken: self-test: "):
        select.choose_kernel(SPEC)


def test_self_test_runs_once_per_spec(monkeypatch):
    _install(monkeypatch, "scaled")
    select.choose_kernel(SPEC)
    calls = _Broken.calls
    assert calls == 1  # stopped at its first M
    select.choose_kernel(SPEC)
    assert _Broken.calls == calls
    other = LayerSpec(256, 24, 128, act_dtype=torch.bfloat16, device_type="cpu")
    select.choose_kernel(other)
    assert _Broken.calls == calls + 1


def test_self_test_can_be_switched_off(monkeypatch):
    _install(monkeypatch, "scaled")
    monkeypatch.setenv("DUQUANT_KERNEL_SELFTEST", "0")
    assert select.choose_kernel(SPEC).name == "broken"
    assert _Broken.calls == 0


def test_spec_for_absent_hardware_is_not_run():
    if torch.cuda.is_available():
        pytest.skip("checks a machine without CUDA")
    spec = LayerSpec(4096, 4096, 128, device_type="cuda", capability=(9, 0))
    assert selftest.self_test(CpuInt8Kernel, spec) == (None, pytest.approx(float("nan"),
                                                                           nan_ok=True))


@pytest.mark.parametrize("tuned,width,ms", [
    ((), selftest.MAX_N, [1, 37, 300]),  # capped: costs no more than a small layer
    ((16, 1024), 3000, [1, 16, 37, 300, 1024]),  # tuned code: full width, every tuned count
])
def test_self_test_width_and_counts(monkeypatch, tuned, width, ms):
    seen, run_ms = [], []
    prepare = CpuInt8Kernel.prepare.__func__
    apply = CpuInt8Kernel.apply.__func__

    def spy_prepare(cls, spec, *args, **kw):
        seen.append(spec)
        return prepare(cls, spec, *args, **kw)

    def spy_apply(cls, p, x):
        run_ms.append(x.shape[0])
        return apply(cls, p, x)

    monkeypatch.setattr(CpuInt8Kernel, "prepare", classmethod(spy_prepare))
    monkeypatch.setattr(CpuInt8Kernel, "apply", classmethod(spy_apply))
    monkeypatch.setattr(CpuInt8Kernel, "tuned_counts", classmethod(lambda cls, spec, d, knobs: tuned))
    wide = LayerSpec(128, 3000, 64, act_dtype=torch.float32, device_type="cpu")
    assert selftest.self_test(CpuInt8Kernel, wide)[0] is None
    assert [s.out_features for s in seen] == [width]
    assert seen[0].in_features == 128 and seen[0].block_size == 64
    assert run_ms == ms


def test_triton_tuned_counts_come_from_the_table_for_the_shape(tmp_path, monkeypatch):
    import json

    from duquant_serve.kernels import triton_gemm, tuned
    from duquant_serve.kernels.linear_kernels import TritonKernel

    cfg = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=256, GROUP_M=1, num_warps=4, num_stages=4,
               SPLIT_K=1)
    (tmp_path / tuned.table_name("triton_gemm", "Fake GPU")).write_text(json.dumps(
        {"kernel": "triton_gemm", "device": "Fake GPU",
         "entries": [dict(n=4096, k=4096, m=m, config=cfg) for m in (256, 16)]}))
    monkeypatch.setenv("DUQUANT_TUNED_CONFIGS", str(tmp_path))
    knobs = KernelKnobs.from_env()  # what select reads at load
    spec = LayerSpec(4096, 4096, 128, device_type="cuda")
    other = LayerSpec(4096, 11008, 128, device_type="cuda")
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(triton_gemm, "_device_name", lambda d: "Fake GPU" if d.type == "cuda" else None)
    assert TritonKernel.tuned_counts(spec, cuda, knobs) == (16, 256)
    assert TritonKernel.tuned_counts(spec, cuda) == ()  # without the switch: shipped tables
    assert TritonKernel.tuned_counts(other, cuda, knobs) == ()
    assert TritonKernel.tuned_counts(spec, torch.device("cpu"), knobs) == ()
