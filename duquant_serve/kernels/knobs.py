"""The kernel layer's operator switches: read from the environment and checked once, when a
kernel is chosen and prepared (select.py, base.LinearKernel.prepare), then carried in the
prepared state to the launchers. Nothing reads the environment per call, and a misspelt value
fails at load with the variable's name, not at the first forward.

    DUQUANT_KERNEL=name               force one kernel (select.py)
    DUQUANT_DISABLED_KERNELS=a,b      remove kernels from consideration
    DUQUANT_KERNEL_SELFTEST=0         skip the load-time self-test (selftest.py)
    DUQUANT_ENABLE_UNVALIDATED=1      offer kernels never run on a GPU (select.py)
    DUQUANT_SPLIT_K=0                 never split K in the Triton GEMM (triton_gemm.py)
    DUQUANT_PROLOGUE_PRECISION=p      Triton prologue dot precision (triton_prologue.PRECISIONS)
    DUQUANT_PROLOGUE_PHASE3=reload    Triton prologue: reload the rotated rows, not recompute
    DUQUANT_PROLOGUE_DECODE=split     Triton prologue: the split decode kernel at M <= 16
    DUQUANT_TUNED_CONFIGS=dir         tuned GEMM tile tables searched before the shipped ones
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

PRECISIONS = ("tf32x3", "tf32", "fp16", "ieee")  # "" chooses by token count (triton_prologue)
PHASE3 = ("recompute", "reload")
DECODE = ("tiled", "split")


class KnobError(ValueError):
    """An environment switch with a value the kernel layer does not know."""


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    v = env.get(name, "").strip() or default
    if v not in allowed:
        raise KnobError(f"{name}={v!r}: use one of {', '.join(allowed)}")
    return v


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    v = env.get(name, "").strip()
    if not v:
        return default
    if v not in ("0", "1"):
        raise KnobError(f"{name}={v!r}: use 1 or 0")
    return v == "1"


@dataclass(frozen=True)
class KernelKnobs:
    kernel: str = ""  # forced kernel name, "" for the priority order
    disabled: tuple[str, ...] = ()
    selftest: bool = True
    unvalidated: bool = False
    split_k: bool = True
    prologue_precision: str = ""  # "" = by token count
    prologue_phase3: str = "recompute"
    prologue_decode: str = "tiled"
    tuned_configs: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KernelKnobs:
        env = os.environ if env is None else env
        return cls(
            kernel=env.get("DUQUANT_KERNEL", "").strip(),
            disabled=tuple(s.strip() for s in env.get("DUQUANT_DISABLED_KERNELS", "").split(",")
                           if s.strip()),
            selftest=_flag(env, "DUQUANT_KERNEL_SELFTEST", True),
            unvalidated=_flag(env, "DUQUANT_ENABLE_UNVALIDATED", False),
            split_k=_flag(env, "DUQUANT_SPLIT_K", True),
            prologue_precision=_choice(env, "DUQUANT_PROLOGUE_PRECISION", ("", *PRECISIONS), ""),
            prologue_phase3=_choice(env, "DUQUANT_PROLOGUE_PHASE3", PHASE3, "recompute"),
            prologue_decode=_choice(env, "DUQUANT_PROLOGUE_DECODE", DECODE, "tiled"),
            tuned_configs=env.get("DUQUANT_TUNED_CONFIGS", "").strip(),
        )

    def changed(self) -> dict[str, object]:
        """The switches set away from their defaults (for the kernel-choice log line)."""
        default = KernelKnobs()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}
