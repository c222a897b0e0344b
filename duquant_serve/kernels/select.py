"""The one place that decides which kernel runs a quantized linear.

    choose_kernel(spec) → the first kernel class in PRIORITY whose `can_implement` agrees (on
    `kernel_spec(spec)`: one activation group where the kernel does not run groups natively):
        triton_groups > cutlass_sm90 > cutlass_sm90_int8w > cutlass_sm80 > triton > cpu_int8
        > cpu_fp32_gemm > torch_ref   (triton_groups: activation-group layers only,
        unvalidated: opt-in; cpu_int8 declines where torch._int_mm has no fast path, unless
        forced: `LinearKernel.declines`)
    DUQUANT_KERNEL=name           forces one kernel (error with its reason if it cannot run)
    DUQUANT_DISABLED_KERNELS=a,b  removes kernels from consideration
    DUQUANT_KERNEL_SELFTEST=0     skips the load-time self-test (selftest.py)
Those and the launchers' switches are read here once (knobs.py); a bad value fails the load.
A kernel that can implement the spec must also pass its self-test on the device (every kernel
but the reference itself, torch_ref). The choice is logged once per distinct LayerSpec, with
the self-test's error; when nothing fits, the error lists every kernel's rejection reason.
"""

from __future__ import annotations

import logging

from . import selftest
from .base import LayerSpec, LinearKernel
from .knobs import KernelKnobs
from .linear_kernels import (
    CpuFp32GemmKernel,
    CpuInt8Kernel,
    CutlassSm80Kernel,
    CutlassSm90Int8WeightKernel,
    CutlassSm90Kernel,
    TorchRefKernel,
    TritonGroupsKernel,
    TritonKernel,
)

logger = logging.getLogger(__name__)

PRIORITY: tuple[type[LinearKernel], ...] = (
    TritonGroupsKernel,
    CutlassSm90Kernel,
    CutlassSm90Int8WeightKernel,
    CutlassSm80Kernel,
    TritonKernel,
    CpuInt8Kernel,
    CpuFp32GemmKernel,
    TorchRefKernel,
)
KERNELS: dict[str, type[LinearKernel]] = {k.name: k for k in PRIORITY}

_logged: set[tuple[LayerSpec, str]] = set()


class NoKernelError(RuntimeError):
    """No kernel can run this layer; the message lists why, kernel by kernel."""


def choose_kernel(spec: LayerSpec, layer_name: str | None = None,
                  knobs: KernelKnobs | None = None) -> type[LinearKernel]:
    """LayerSpec → kernel class (stateless; call `prepare` then `apply` on it). `knobs`:
    the switches in force (default: read from the environment now)."""
    knobs = KernelKnobs.from_env() if knobs is None else knobs
    forced, disabled = knobs.kernel, knobs.disabled
    for name in [forced, *disabled]:
        if name and name not in KERNELS:
            raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}")
    reasons: list[str] = []
    candidates = [KERNELS[forced]] if forced else list(PRIORITY)
    for k in candidates:
        if k.name in disabled:
            reasons.append(f"{k.name}: disabled by DUQUANT_DISABLED_KERNELS")
            continue
        if not k.validated_on_gpu and not knobs.unvalidated:
            reasons.append(f"{k.name}: compiled but never run on a GPU (set "
                           "DUQUANT_ENABLE_UNVALIDATED=1 to use; benchmarks/gpu_session.py "
                           "--mode check validates it)")
            continue
        kspec = k.kernel_spec(spec)  # one activation group, where k does not run groups itself
        ok, why = k.can_implement(kspec)
        if ok and not forced:  # a faster kernel further down computes the same
            why = k.declines(kspec)
            ok = why is None
        err = float("nan")
        if ok and not k.is_reference and knobs.selftest:
            why, err = selftest.self_test(k, kspec, knobs)
            ok = why is None
            if not ok:
                logger.warning("duquant: kernel %s failed its self-test for %s: %s", k.name,
                               spec, why)
        if ok:
            key = (spec, k.name)
            if key not in _logged:
                _logged.add(key)
                if spec.act_groups > 1 and not k.native_act_groups:
                    logger.warning(
                        "duquant: %s runs its %d activation groups as %d separate linears on "
                        "kernel %s (slow); the block-scaled triton_groups kernel does them in "
                        "one GEMM but is opt-in until benchmarks/gpu_session.py validates it on "
                        "a GPU (DUQUANT_ENABLE_UNVALIDATED=1)", layer_name or "layer",
                        spec.act_groups, spec.act_groups, k.name)
                logger.info("duquant: selected kernel %s for %s (%s; self-test rel. error %.1e%s)",
                            k.name, layer_name or "layer", spec, err,
                            f"; switches {knobs.changed()}" if knobs.changed() else "")
            return k
        reasons.append(f"{k.name}: {why}")
    head = f"DUQUANT_KERNEL={forced} cannot run" if forced else "no duquant kernel can run"
    raise NoKernelError(f"{head} {layer_name or 'layer'} {spec}:\n  " + "\n  ".join(reasons))
