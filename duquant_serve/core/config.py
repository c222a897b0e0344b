"""The one versioned description of a DuQuant checkpoint's quantization settings.

`DuQuantConfig` is written into ``config.json`` as ``quantization_config`` by the offline
pipeline and parsed back by every reader (checkpoint validator, eval, vLLM plugin). It is the
only code that reads raw keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

QUANT_METHOD = "duquant"
# 2: row-parallel activations are quantized per tp_shards group (core/reference.py). A version-1
# checkpoint means the same as version 2 when tp_shards == 1, and is refused otherwise.
# 3: adds `method` (how transforms and weights were made); tensors and run-time math as in 2.
# 4: a fused group's input transform (q/k/v, gate/up) is stored once, on its first linear.
# 5: adds `act_group_size` (per-token activation ranges over channel groups at every linear);
# absent means 0, the version-4 behaviour.
FORMAT_VERSION = 5
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3, 4, 5)
# The narrowest activation group and rotation block (core/transform.choose_block_size).
MIN_GROUP = 8
# (weight bits, activation bits) pairs the pipeline and the reference kernels implement.
SUPPORTED_BITS = ((4, 4), (4, 8), (6, 6), (8, 8))
PERMUTATIONS = ("zigzag", "none")
# Quantization methods of the offline pipeline (offline_quant/pipeline.py's METHOD_TABLE has one
# row per name; a test keeps the two equal). All write the same tensors; only how they were
# chosen differs.
METHODS = ("rtn", "smoothquant", "hadamard", "hadamard-gptq", "duquant", "duquant-lwc",
           "duquant-gptq", "duquant-opt")
CHANNEL_SELECT = ("column", "row")


def largest_power_of_two_divisor(n: int, at_most: int, at_least: int = MIN_GROUP) -> int:
    """The largest power of two in [at_least, at_most] dividing n, 0 if none (`at_most` a power
    of two). Activation groups (here) and rotation blocks (transform.choose_block_size) are
    both sized this way."""
    p = at_most
    while p >= at_least:
        if n % p == 0:
            return p
        p //= 2
    return 0


class ConfigError(ValueError):
    """A quantization config that cannot be honoured."""


@dataclass(frozen=True)
class DuQuantConfig:
    """Settings of a DuQuant W{w_bits}A{a_bits} checkpoint.

    Args:
        w_bits / a_bits: weight / activation bits (asymmetric integer codes 0..2^bits-1).
        block_size: configured rotation block; each linear input uses the largest power of two
            <= this that divides its (shard) width, recorded by the shape of its rotations.
        rotation_steps: greedy steps N of Algorithm 1 (paper: 256).
        permutation: "zigzag" (paper) or "none" (ablation: smoothing + one rotation).
        channel_select: how the greedy step picks the outlier channel: "column" (paper) or
            "row" (the reference code's row-index-modulo-block quirk).
        smooth_alpha: SmoothQuant migration strength (paper: 0.6, 0.5 with LWC).
        act_clip_ratio: per-token min/max multiplier for activations (paper: 0.9).
        weight_clip_ratio: per-channel min/max multiplier for weights without LWC (paper: 0.8).
        lwc: learnable weight clipping was used (per-row clip factors are baked into scales);
            true exactly when method is "duquant-lwc".
        method: how the transforms and weight codes were made (METHODS; docs/offline-quant.md).
            Informational: every method writes the same tensors with the same run-time meaning.
            Absent before format 3, where it is "duquant-lwc" if lwc else "duquant".
        tp_shards: row-parallel (o_proj, down_proj) inputs are cut into this many contiguous
            shards: permutations stay inside a shard and each shard has its own per-token
            activation range, so any tensor-parallel size dividing it serves the checkpoint
            with the same numbers as one GPU.
        act_group_size: 0 — one per-token activation range per input (per tp_shards shard of a
            row-parallel input). A power of two >= 8 — every linear input (each shard) is cut
            into groups of the largest power of two <= this dividing its width, each with its
            own per-token range; permutations stay inside a group and rotation blocks are no
            wider than a group (`activation_groups`). Absent before format 5, where it is 0.
        modules_not_quantized: module-name suffixes kept in 16 bits.
        seed: RNG seed of the random orthogonal factors (reproducible transforms).
    """

    w_bits: int = 4
    a_bits: int = 4
    block_size: int = 128
    rotation_steps: int = 256
    permutation: str = "zigzag"
    channel_select: str = "column"
    smooth_alpha: float = 0.6
    act_clip_ratio: float = 0.9
    weight_clip_ratio: float = 0.8
    lwc: bool = False
    method: str = "duquant"
    tp_shards: int = 1
    act_group_size: int = 0
    modules_not_quantized: tuple[str, ...] = ("lm_head",)
    seed: int = 0
    format_version: int = FORMAT_VERSION
    quant_method: str = field(default=QUANT_METHOD, init=False)

    def __post_init__(self) -> None:
        if (self.w_bits, self.a_bits) not in SUPPORTED_BITS:
            raise ConfigError(
                f"unsupported bits W{self.w_bits}A{self.a_bits}; supported: "
                + ", ".join(f"W{w}A{a}" for w, a in SUPPORTED_BITS)
            )
        b = self.block_size
        if b < 2 or b & (b - 1):
            raise ConfigError(f"block_size must be a power of two >= 2, got {b}")
        if self.rotation_steps < 0:
            raise ConfigError(f"rotation_steps must be >= 0, got {self.rotation_steps}")
        if self.permutation not in PERMUTATIONS:
            raise ConfigError(f"permutation must be one of {PERMUTATIONS}, got {self.permutation!r}")
        if self.channel_select not in CHANNEL_SELECT:
            raise ConfigError(
                f"channel_select must be one of {CHANNEL_SELECT}, got {self.channel_select!r}"
            )
        if not 0.0 <= self.smooth_alpha <= 1.0:
            raise ConfigError(f"smooth_alpha must lie in [0, 1], got {self.smooth_alpha}")
        for name in ("act_clip_ratio", "weight_clip_ratio"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"{name} must lie in (0, 1], got {v}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.lwc != (self.method == "duquant-lwc"):
            raise ConfigError(f"lwc={self.lwc} contradicts method {self.method!r} "
                              "(lwc is true exactly for duquant-lwc)")
        if self.tp_shards < 1:
            raise ConfigError(f"tp_shards must be >= 1, got {self.tp_shards}")
        g = self.act_group_size
        if type(g) is not int or (g != 0 and (g < MIN_GROUP or g & (g - 1))):
            raise ConfigError(f"act_group_size must be 0 (whole input) or a power of two >= "
                              f"{MIN_GROUP}, got {g!r}")
        if self.format_version not in SUPPORTED_FORMAT_VERSIONS:
            raise ConfigError(
                f"unknown DuQuant format_version {self.format_version}; this build reads "
                f"{SUPPORTED_FORMAT_VERSIONS}"
            )
        if self.format_version == 1 and self.tp_shards > 1:
            raise ConfigError(
                f"format_version 1 checkpoint with tp_shards={self.tp_shards}: version 1 quantized "
                "row-parallel activations over whole rows, which tensor parallelism cannot "
                "reproduce; re-quantize with this build (format_version 2)"
            )
        if self.format_version < 5 and g:
            raise ConfigError(f"act_group_size={g} needs format_version 5, not "
                              f"{self.format_version}")
        object.__setattr__(self, "modules_not_quantized", tuple(self.modules_not_quantized))

    def input_shards(self, row_parallel: bool) -> int:
        """Row-parallel shards a linear input is cut into: tp_shards for row-parallel linears
        (o_proj, down_proj), 1 otherwise. Shard outputs are summed in the output dtype
        (core.reference), the groups inside one shard before any rounding."""
        return self.tp_shards if row_parallel else 1

    def activation_groups(self, width: int, row_parallel: bool) -> int:
        """How many per-token activation ranges a linear input of `width` channels has: the
        one rule the pipeline, the checkpoint reader and every runtime follow. Groups are
        contiguous, equal and never straddle a tensor-parallel shard."""
        shards = self.input_shards(row_parallel)
        if width < 1 or width % shards:
            raise ConfigError(f"input width {width} cannot be split into {shards} equal shards")
        if not self.act_group_size:
            return shards
        shard = width // shards
        g = largest_power_of_two_divisor(shard, self.act_group_size)
        if not g:
            raise ConfigError(f"no activation group between {MIN_GROUP} and "
                              f"{self.act_group_size} channels divides the input width {shard}"
                              + (f" (one of {shards} shards)" if shards > 1 else ""))
        return width // g

    @property
    def packed(self) -> bool:
        """Weights of <= 4 bits are stored two codes per byte."""
        return self.w_bits <= 4

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modules_not_quantized"] = list(self.modules_not_quantized)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DuQuantConfig:
        if d.get("quant_method") != QUANT_METHOD:
            raise ConfigError(
                f"quantization_config.quant_method is {d.get('quant_method')!r}, expected {QUANT_METHOD!r}"
            )
        if "format_version" not in d:
            raise ConfigError("quantization_config has no format_version")
        if d["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
            raise ConfigError(
                f"unknown DuQuant format_version {d['format_version']!r}; this build reads "
                f"{SUPPORTED_FORMAT_VERSIONS}"
            )
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - known - {"quant_method"})
        if unknown:
            raise ConfigError(f"quantization_config has unknown keys {unknown}")
        kwargs = {k: d[k] for k in known if k in d}
        if "method" in kwargs and d["format_version"] < 3:
            raise ConfigError(f"quantization_config has `method`, which format_version "
                              f"{d['format_version']} does not define")
        if "method" not in kwargs:  # format < 3 (or a hand-written config): what lwc implies
            kwargs["method"] = "duquant-lwc" if d.get("lwc") is True else "duquant"
        try:
            return cls(**kwargs)
        except TypeError as e:  # wrong value types surface as TypeError in comparisons
            raise ConfigError(f"malformed quantization_config: {e}") from e
