"""What a W4A4 linear kernel is: a `LayerSpec` goes in, a `LinearKernel` decides and runs.

The plugin (or a benchmark) describes one linear (per tensor-parallel shard) with a frozen
`LayerSpec`, asks `select.choose_kernel(spec)` for a kernel once, calls `kernel.prepare(...)`
once at load to turn checkpoint tensors into the kernel's own layout, then calls
`kernel.apply(prepared, x)` per forward. `apply` only calls `torch.ops.duquant.*` custom ops (on
CPU, `cpu_int8`: the plain torch functions behind them, which inductor can fuse), so it has no
Python branching on data, no printing and no I/O (torch.compile-safe).

Checkpoint tensors `prepare` expects (core/reference.py::QuantizedLinear):
    qweight      [N, K/2] uint8   two 4-bit codes per byte along K, low nibble = even k
    weight_scale [N] float32      weight_zero [N] float32 (integers, may lie outside 0..15)
    transform    InputTransform   r1, r2 [b, b] float32, perm [K] int64, smooth [K] float32 | None
    bias         [N] | None
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, fields

import torch

from ..core.reference import QuantizedLinear, tree_sum
from ..core.transform import InputTransform
from . import device_state
from .knobs import KernelKnobs


@dataclass(frozen=True)
class LayerSpec:
    """One quantized linear as a kernel sees it (shapes are per TP shard).

    capability: (major, minor) of the CUDA device, or None on CPU.
    act_groups: per-token activation ranges over contiguous in_features/act_groups channels,
        folded into one fp32 accumulator (core.reference.gemm_epilogue_groups_ref). Kernels
        with `native_act_groups` run them in one GEMM; the others run one linear per group
        (`LinearKernel.kernel_spec`).
    """

    in_features: int
    out_features: int
    block_size: int
    w_bits: int = 4
    a_bits: int = 4
    has_smooth: bool = False
    has_bias: bool = False
    act_dtype: torch.dtype = torch.bfloat16
    device_type: str = "cuda"
    capability: tuple[int, int] | None = None
    act_groups: int = 1

    def __post_init__(self) -> None:
        if self.in_features <= 0 or self.out_features <= 0:
            raise ValueError(f"bad linear shape {self.out_features}x{self.in_features}")
        b = self.block_size
        if b < 1 or b & (b - 1) or self.in_features % b:
            raise ValueError(
                f"block size {b} must be a power of two dividing in_features {self.in_features}"
            )
        if self.act_groups < 1 or self.in_features % (self.act_groups * b):
            raise ValueError(f"{self.act_groups} activation groups of whole {b}-blocks do not "
                             f"divide in_features {self.in_features}")

    @property
    def group_width(self) -> int:
        """Channels per activation group."""
        return self.in_features // self.act_groups

    def per_group(self) -> LayerSpec:
        """One activation group as a linear of its own (act_groups = 1)."""
        return dataclasses.replace(self, in_features=self.group_width, act_groups=1)


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """LayerSpec.capability of a device: (major, minor) on CUDA, None elsewhere."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))


@dataclass
class PreparedLinear:
    """Kernel-layout tensors of one linear, built once by `LinearKernel.prepare`.

    Fields a kernel does not use stay None. `tensors` lists everything resident on the device
    (for the weight-memory accounting of benchmarks).
    """

    spec: LayerSpec
    # [b, b] float32: column-major (Rᵀ row-major, what the Triton prologue reads), or row-major
    # where the prologue is the reference (cpu_int8, torch_ref)
    r1: torch.Tensor
    r2: torch.Tensor
    perm: torch.Tensor  # [K] int64 gather indices (reference order)
    inv_perm: torch.Tensor  # [K] int32 scatter indices (kernel order)
    smooth: torch.Tensor | None  # [K] float32
    qweight: torch.Tensor  # kernel layout: see each kernel's docstring
    weight_scale: torch.Tensor  # [N] float32
    weight_zero: torch.Tensor  # [N] float32
    weight_code_sum: torch.Tensor  # [N] int32: Σ_k qw[n, k]
    # [G, N] int32: Σ_k qw[n, k] over each activation group (spec.act_groups > 1 only)
    group_code_sum: torch.Tensor | None
    bias: torch.Tensor | None  # [N] act dtype
    act_clip_ratio: float
    # Per-channel epilogue constants a kernel precomputes (docs/epilogue algebra):
    epilogue_rhs: torch.Tensor | None = None  # cpu_int8: [2, N] fp32 (ops.epilogue_rhs)
    epilogue_u: torch.Tensor | None = None  # cutlass_sm90*: [N] fp32 sw
    epilogue_v: torch.Tensor | None = None  # [N] fp32 sw·(zw − shift)
    epilogue_w: torch.Tensor | None = None  # [N] fp32 sw·(Σqw − K·zw)
    # The operator switches in force when it was prepared; the launchers read these, never
    # the environment.
    knobs: KernelKnobs = KernelKnobs()
    # Which row-parallel shard of the rank's input it serves (`LinearKernel.apply_groups`).
    shard: int = 0

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor it holds, by field name (None fields left out)."""
        return {f.name: v for f in fields(self)
                if isinstance(v := getattr(self, f.name), torch.Tensor)}

    def resident_bytes(self) -> int:
        """Bytes resident on the device (perm is the reference-order copy, not the kernel's)."""
        return sum(t.numel() * t.element_size()
                   for name, t in self.tensors().items() if name != "perm")


class LinearKernel(abc.ABC):
    """A way to run y = W4A4_linear(x). Subclasses are stateless; state lives in PreparedLinear."""

    name: str = "abstract"
    # True for the kernel that *is* core.reference: nothing to self-test it against.
    is_reference: bool = False
    # False for a path compiled but never run on a GPU: select offers it only with
    # DUQUANT_ENABLE_UNVALIDATED=1 (a silent wrong answer is worse than a slower path). Flip it
    # once benchmarks/gpu_session.py --mode check passes on real hardware.
    validated_on_gpu: bool = True
    # True if `apply` runs LayerSpec.act_groups > 1 itself (one prologue with per-group ranges,
    # one block-scaled GEMM). Other kernels serve each group as its own linear.
    native_act_groups: bool = False

    @classmethod
    def kernel_spec(cls, spec: LayerSpec) -> LayerSpec:
        """The spec this kernel's prepare/apply see for a layer described by `spec`: itself, or
        one activation group of it where the kernel does not run groups natively."""
        return spec if cls.native_act_groups else spec.per_group()

    @classmethod
    @abc.abstractmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str | None]:
        """(True, None) or (False, why) — the reason is shown to the user when nothing fits."""

    @classmethod
    def declines(cls, spec: LayerSpec) -> str | None:
        """Why the priority order should pass this kernel over although it can run `spec` (a
        faster kernel further down computes the same), or None. Forcing it (DUQUANT_KERNEL)
        overrides this; `can_implement`'s refusals are not overridable."""
        return None

    @classmethod
    def tuned_counts(cls, spec: LayerSpec, device: torch.device,
                     knobs: KernelKnobs | None = None) -> tuple[int, ...]:
        """Token counts at which this layer's exact (N, K) runs code tuned for it on `device`
        (one per tuned tile config), or () if none does. The load-time self-test then builds
        the layer at full width, not at most selftest.MAX_N outputs, and runs these counts
        too, so every tuned config that will serve is checked."""
        return ()

    @classmethod
    def prepare(
        cls,
        spec: LayerSpec,
        qweight: torch.Tensor,
        weight_scale: torch.Tensor,
        weight_zero: torch.Tensor,
        transform: InputTransform,
        bias: torch.Tensor | None,
        act_clip_ratio: float,
        device: torch.device | str | None = None,
        knobs: KernelKnobs | None = None,
    ) -> PreparedLinear:
        """Checkpoint layout (module docstring) → kernel layout, on `device`, under the
        switches `knobs` (default: the environment's, read now). Called once. Kernels differ
        only in `weight_layout` and `finish_prepare`."""
        p = prepare_common(spec, qweight, weight_scale, weight_zero, transform, bias,
                           act_clip_ratio, device, cls.weight_layout(qweight.cpu()))
        p.knobs = KernelKnobs.from_env() if knobs is None else knobs
        return cls.finish_prepare(p)

    @classmethod
    def weight_layout(cls, qweight: torch.Tensor) -> torch.Tensor:
        """The checkpoint's packed codes [N, K/2] (on the CPU) → the weights `apply` reads.
        Default: kept packed."""
        return qweight

    @classmethod
    def finish_prepare(cls, p: PreparedLinear) -> PreparedLinear:
        """Anything else `apply` needs precomputed (epilogue constants, row-major rotations)."""
        return p

    @classmethod
    @abc.abstractmethod
    def apply(cls, p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] act dtype → y [..., N] act dtype. Custom ops (or their plain bodies) only."""

    @classmethod
    def prepare_groups(cls, spec: LayerSpec, layer: QuantizedLinear,
                       device: torch.device | str | None = None,
                       knobs: KernelKnobs | None = None) -> list[PreparedLinear]:
        """A checkpoint linear (one rank's) → the prepared kernel linears `apply_groups` runs:
        one per row-parallel shard (`QuantizedLinear.shards`) where the kernel runs activation
        groups natively, else one per activation group. `spec` describes one shard
        (act_groups = the shard's groups); the bias goes into the first part only."""
        if spec.in_features * layer.shards != layer.in_features or \
                spec.act_groups * layer.shards != layer.act_groups:
            raise ValueError(f"spec ({spec.in_features} inputs, {spec.act_groups} groups) × "
                             f"{layer.shards} shards != the layer's {layer.in_features} inputs in "
                             f"{layer.act_groups} groups")
        kspec = cls.kernel_spec(spec)
        parts = layer.shard_linears() if kspec.act_groups == spec.act_groups else layer.groups()
        per_shard = len(parts) // layer.shards
        return [dataclasses.replace(
                    cls.prepare(dataclasses.replace(kspec, has_bias=g.bias is not None),
                                g.qweight.contiguous(), g.weight_scale, g.weight_zero,
                                g.transform, g.bias, g.act_clip_ratio, device, knobs),
                    shard=i // per_shard)
                for i, g in enumerate(parts)]

    @classmethod
    def apply_groups(cls, ps: list[PreparedLinear], x: torch.Tensor) -> torch.Tensor:
        """The linear `prepare_groups` prepared: `apply` on each part's input slice; on kernels
        without native groups a shard's group outputs (each already in the output dtype) are
        added in fp32 and rounded again, within the output dtype's rounding of core.reference's
        single rounding; then the shards in core.reference.tree_sum order (what TP ranks and
        their all-reduce compute). One part: plain `apply`."""
        if len(ps) == 1:
            return cls.apply(ps[0], x)
        kg = ps[0].spec.in_features
        ys = [cls.apply(p, x[..., i * kg:(i + 1) * kg].contiguous()) for i, p in enumerate(ps)]
        shards = ps[-1].shard + 1
        if shards < len(ps):
            per = len(ps) // shards
            ys = [_sum_fp32(ys[s * per:(s + 1) * per]) for s in range(shards)]
        return tree_sum(ys)


def _sum_fp32(ys: list[torch.Tensor]) -> torch.Tensor:
    """Σ ys accumulated in fp32, rounded once to their dtype."""
    acc = ys[0].float()
    for y in ys[1:]:
        acc = acc + y.float()
    return acc.to(ys[0].dtype)


def prepare_common(
    spec: LayerSpec,
    qweight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero: torch.Tensor,
    transform: InputTransform,
    bias: torch.Tensor | None,
    act_clip_ratio: float,
    device: torch.device | str | None,
    kernel_qweight: torch.Tensor,
) -> PreparedLinear:
    """Shared part of every kernel's prepare: checks shapes, moves tensors, builds inverse perm."""
    from ..core.pack import unpack_weight_codes

    n, k = spec.out_features, spec.in_features
    if spec.w_bits != 4 or spec.a_bits != 4:
        raise ValueError(f"only W4A4 is implemented, got W{spec.w_bits}A{spec.a_bits}")
    if tuple(qweight.shape) != (n, k // 2) or qweight.dtype != torch.uint8:
        raise ValueError(f"qweight must be uint8 [{n}, {k // 2}], got {qweight.dtype} "
                         f"{tuple(qweight.shape)}")
    for name, t in (("weight_scale", weight_scale), ("weight_zero", weight_zero)):
        if tuple(t.shape) != (n,):
            raise ValueError(f"{name} must be [{n}], got {tuple(t.shape)}")
    if transform.width != k or transform.block_size != spec.block_size:
        raise ValueError(f"transform (width {transform.width}, block {transform.block_size}) "
                         f"does not match spec (K={k}, b={spec.block_size})")
    if spec.act_groups > 1:
        offset = transform.perm.cpu() - torch.arange(k) // spec.group_width * spec.group_width
        if int(offset.min()) < 0 or int(offset.max()) >= spec.group_width:
            raise ValueError(f"the permutation moves channels across the {spec.act_groups} "
                             "activation groups")
    if (transform.smooth is not None) != spec.has_smooth:
        raise ValueError("spec.has_smooth disagrees with the transform")
    if (bias is not None) != spec.has_bias:
        raise ValueError("spec.has_bias disagrees with the bias tensor")
    dev = torch.device(device) if device is not None else qweight.device
    # The split kernels' counters, made now: inside a CUDA-graph capture they could not be.
    device_state.create_counters(dev)
    codes = unpack_weight_codes(qweight.cpu(), spec.w_bits)
    perm = transform.perm.long().cpu()
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(k)
    return PreparedLinear(
        spec=spec,
        # Stored transposed so that the prologue's Rᵀ is a view, not a copy kernel per call.
        r1=transform.r1.float().to(dev).t().contiguous().t(),
        r2=transform.r2.float().to(dev).t().contiguous().t(),
        perm=perm.to(dev),
        inv_perm=inv.to(torch.int32).to(dev),
        smooth=None if transform.smooth is None else transform.smooth.float().to(dev),
        qweight=kernel_qweight.contiguous().to(dev),
        weight_scale=weight_scale.float().contiguous().to(dev),
        weight_zero=weight_zero.float().contiguous().to(dev),
        weight_code_sum=codes.sum(dim=-1, dtype=torch.int32).to(dev),
        group_code_sum=None if spec.act_groups == 1 else codes.reshape(
            n, spec.act_groups, -1).sum(dim=-1, dtype=torch.int32).t().contiguous().to(dev),
        bias=None if bias is None else bias.to(spec.act_dtype).contiguous().to(dev),
        act_clip_ratio=float(act_clip_ratio),
    )


def rotations_row_major(p: PreparedLinear) -> PreparedLinear:
    """R1/R2 row-major for kernels whose prologue is the reference: `block_rotate` makes them
    contiguous on every call otherwise (prepare_common stores them column-major, the layout the
    Triton prologue reads). Same values, so the same codes; ~15 µs less per linear per call."""
    return dataclasses.replace(p, r1=p.r1.contiguous(), r2=p.r2.contiguous())
