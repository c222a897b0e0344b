"""`DuQuantLinearMethod`: checkpoint-layout parameters in, one kernel call out.

create_weights registers the checkpoint's tensors (duquant_serve/checkpoint.py) per TP rank:

    qweight       uint8   [N_p, K_p/2]  packed along the input dim (K_p = K / tp for row-parallel)
    weight_scale  float32 [N_p]         weight_zero float32 [N_p]
    input_rot1    float32 [b, b]        input_rot2 float32 [b, b]
    input_perm    int32   [K_p]         rank-local gather indices
    input_smooth  float32 [K_p]         only where the checkpoint has it (optional tensor)

qweight / weight_scale / weight_zero are sliced along the output dim by vLLM's own layer loaders
(q/k/v and gate/up offsets, GQA replication); the row-parallel input slice of qweight likewise.
The input transform has no output dim: a fused layer (qkv_proj, gate_up_proj) receives one copy
per shard, and our loader checks every copy against the first instead of letting the last win.
Row-parallel layers (o_proj, down_proj) take this rank's slice of input_perm — the checkpoint
keeps each of its tp_shards shards' permutation inside the shard, so subtracting the rank's
offset gives local indices — and of input_smooth. Each of those shards holds one or more
activation quantization groups (DuQuantConfig.activation_groups, core/reference.py); a rank
runs each of its shards as one kernel linear (its groups in one block-scaled GEMM, or one
linear per group on kernels without native groups), sums its shards in tree order, and vLLM's
all-reduce sums the ranks: the same numbers at every TP size.

process_weights_after_loading checks every tensor arrived, picks the kernel with
`kernels.select.choose_kernel` and prepares it once (`kernel.prepare_groups`); apply() is one
`kernel.apply_groups` call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.logger import init_logger
from vllm.model_executor.layers.linear import (
    LinearMethodBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.utils import set_weight_attrs

from ..checkpoint import CheckpointError, check_tensor, tensor_error
from ..core.reference import QuantizedLinear
from ..core.topology import PACKED_MODULES
from ..core.transform import InputTransform, input_layout
from ..kernels.base import LayerSpec, device_capability
from ..kernels.select import choose_kernel
from . import runtime_info

if TYPE_CHECKING:  # config.py builds this method: the import runs one way only
    from .config import DuQuantVllmConfig

# Under vLLM's logger tree so the line shows in the server log with vLLM's own format.
logger = init_logger("vllm.duquant")

WEIGHT_PARAMS = ("qweight", "weight_scale", "weight_zero")
TRANSFORM_PARAMS = ("input_rot1", "input_perm", "input_rot2")
OPTIONAL_PARAMS = ("input_smooth",)
_DTYPES = {"qweight": torch.uint8, "weight_scale": torch.float32, "weight_zero": torch.float32,
           "input_rot1": torch.float32, "input_rot2": torch.float32, "input_perm": torch.int32,
           "input_smooth": torch.float32}
# Prepared (kernel-layout) tensors are kept as non-persistent buffers under this prefix so
# the module owns them (memory accounting, .to()); PreparedLinear points at the same tensors.
_BUF = "duquant_"


@dataclass
class _LayerState:
    """Bookkeeping of one DuQuant layer while its checkpoint tensors arrive."""

    prefix: str  # vLLM module name, e.g. model.layers.0.self_attn.qkv_proj
    shard_modules: dict[Any, str]  # shard id (None, "q", 0, ...) → checkpoint module name
    row_parallel: bool
    in_features: int  # full K (checkpoint)
    in_per_rank: int  # K_p
    tp_rank: int
    act_groups: int  # activation groups on this rank (DuQuantConfig.activation_groups / tp)
    shards: int  # row-parallel shards on this rank (DuQuantConfig.input_shards / tp)
    block: int
    full_out: dict[Any, int]  # shard id → checkpoint N of that module
    loaded: set[tuple[str, Any]] = field(default_factory=set)
    transform_from: dict[str, Any] = field(default_factory=dict)  # param → shard loaded first

    def tensor(self, shard: Any, param: str) -> str:
        return f"{self.shard_modules[shard]}.{param}"


# Same refusal shape as the offline loader, marked as coming from the plugin.
_err = functools.partial(tensor_error, prefix="duquant: ")
_check = functools.partial(check_tensor, prefix="duquant: ")


class DuQuantLinearMethod(LinearMethodBase):
    """W4A4 DuQuant linear for vLLM's Column/Merged/QKV/RowParallelLinear layers."""

    def __init__(self, quant_config: DuQuantVllmConfig) -> None:
        self.quant_config = quant_config
        self.qcfg = quant_config.qcfg

    # -- parameters in the checkpoint layout ---------------------------------------------------

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        layer_loader: Callable = extra_weight_attrs.pop("weight_loader")
        state = self._layer_state(layer, input_size_per_partition, input_size, output_size)
        layer.duquant_state = state
        n_p, k_p = sum(output_partition_sizes), input_size_per_partition
        if k_p % 2 or k_p % state.block:
            raise CheckpointError(
                f"duquant: {state.prefix}: input width per rank {k_p} must be even and a multiple "
                f"of the rotation block {state.block}")
        b = state.block

        def add(name: str, data: torch.Tensor, loader: Callable, **attrs: Any) -> None:
            p = torch.nn.Parameter(data, requires_grad=False)
            layer.register_parameter(name, p)
            set_weight_attrs(p, {**extra_weight_attrs, **attrs, "weight_loader": loader})

        # Sliced by vLLM's layer loader (output dim, and input dim for row-parallel layers);
        # packed_dim (input) != output_dim, so vLLM's packing adjustments leave the rows alone.
        add("qweight", torch.empty(n_p, k_p // 2, dtype=torch.uint8),
            self._weight_loader(layer, "qweight", layer_loader),
            output_dim=0, input_dim=1, packed_dim=1, packed_factor=2)
        for name in ("weight_scale", "weight_zero"):
            add(name, torch.empty(n_p, dtype=torch.float32),
                self._weight_loader(layer, name, layer_loader), output_dim=0)
        # No output_dim: the same transform per shard, loaded (and compared) by our loader.
        add("input_rot1", torch.empty(b, b, dtype=torch.float32),
            self._transform_loader(layer, "input_rot1"))
        add("input_perm", torch.empty(k_p, dtype=torch.int32),
            self._transform_loader(layer, "input_perm"))
        add("input_rot2", torch.empty(b, b, dtype=torch.float32),
            self._transform_loader(layer, "input_rot2"))
        # Optional in the checkpoint: registered always (vLLM rejects a tensor that has no
        # parameter), dropped after loading if it never arrived.
        add("input_smooth", torch.ones(k_p, dtype=torch.float32),
            self._transform_loader(layer, "input_smooth"))

    def _layer_state(self, layer: torch.nn.Module, k_p: int, k: int, n: int) -> _LayerState:
        prefix: str = getattr(layer, "prefix", "") or "<linear>"
        parent, _, name = prefix.rpartition(".")
        join = (lambda m: f"{parent}.{m}" if parent else m)  # noqa: E731
        parts = self.quant_config.fused_modules(name)
        row_parallel = isinstance(layer, RowParallelLinear)
        if isinstance(layer, QKVParallelLinear):
            parts = parts or DEFAULT_QKV
            heads, kv_heads = layer.total_num_heads, layer.total_num_kv_heads
            shard_modules = dict(zip(("q", "k", "v"), map(join, parts), strict=True))
            full_out = {"q": heads * layer.head_size, "k": kv_heads * layer.head_size,
                        "v": kv_heads * layer.v_head_size}
        elif isinstance(layer, MergedColumnParallelLinear):
            if not parts or len(parts) != len(layer.output_sizes):
                raise CheckpointError(f"duquant: cannot tell which checkpoint modules vLLM fused "
                                      f"into {prefix} (packed_modules_mapping has {parts})")
            shard_modules = {i: join(p) for i, p in enumerate(parts)}
            full_out = dict(enumerate(layer.output_sizes))
        else:
            shard_modules, full_out = {None: prefix}, {None: n}
        try:
            total, block = input_layout(self.qcfg, k, row_parallel)
        except ValueError as e:
            raise CheckpointError(f"duquant: {prefix}: {e}") from e
        # k / k_p is the TP size for row-parallel layers (k_p = k otherwise); get_quant_method
        # already refused a TP size that does not divide tp_shards, and groups never straddle a
        # shard, so this is a whole number >= 1.
        groups = total * k_p // k
        shards = self.qcfg.input_shards(row_parallel) * k_p // k
        return _LayerState(prefix=prefix, shard_modules=shard_modules, row_parallel=row_parallel,
                           in_features=k, in_per_rank=k_p, tp_rank=getattr(layer, "tp_rank", 0),
                           act_groups=groups, shards=shards, block=block, full_out=full_out)

    # -- weight loaders ------------------------------------------------------------------------

    def _shard(self, st: _LayerState, shard_id: Any, param: str) -> Any:
        if shard_id not in st.shard_modules:
            raise _err(f"{st.prefix}.{param}",
                       f"arrived as shard {shard_id!r}, but this layer has shards "
                       f"{list(st.shard_modules)} (DuQuant checkpoints store q/k/v and gate/up "
                       "as separate modules)")
        return shard_id

    def _weight_loader(self, layer: torch.nn.Module, param: str, layer_loader: Callable) -> Callable:
        """Check the checkpoint tensor (named error), then let vLLM's layer loader slice it."""

        def load(p: torch.nn.Parameter, w: torch.Tensor, shard_id: Any = None) -> None:
            st: _LayerState = layer.duquant_state
            shard = self._shard(st, shard_id, param)
            n = st.full_out[shard]
            shape = (n, st.in_features // 2) if param == "qweight" else (n,)
            _check(w, st.tensor(shard, param), shape, _DTYPES[param])
            if shard is None:
                layer_loader(p, w)
            else:
                layer_loader(p, w, shard)
            st.loaded.add((param, shard))

        return load

    def _transform_loader(self, layer: torch.nn.Module, param: str) -> Callable:
        """Load one copy of an input-transform tensor: the rank's slice for row-parallel layers,
        and for fused layers a bit-for-bit comparison with the copy loaded first."""

        def load(p: torch.nn.Parameter, w: torch.Tensor, shard_id: Any = None) -> None:
            st: _LayerState = layer.duquant_state
            shard = self._shard(st, shard_id, param)
            name = st.tensor(shard, param)
            b, k = st.block, st.in_features
            _check(w, name, (b, b) if param.startswith("input_rot") else (k,), _DTYPES[param])
            value = w
            if st.row_parallel and param in ("input_perm", "input_smooth"):
                lo = st.tp_rank * st.in_per_rank
                value = w[lo:lo + st.in_per_rank]
                if param == "input_perm":
                    value = value - lo
                    if value.numel() and (int(value.min()) < 0 or int(value.max()) >= st.in_per_rank):
                        raise _err(name, f"moves channels across tensor-parallel shards (rank "
                                         f"{st.tp_rank} owns inputs {lo}..{lo + st.in_per_rank - 1})")
            if param in st.transform_from:
                first = st.transform_from[param]
                if not torch.equal(p.data, value.to(p.dtype)):
                    raise _err(name, f"fused input transform differs from {st.tensor(first, param)} "
                                     f"(vLLM fuses these linears into {st.prefix}, so they must "
                                     "share one transform)")
            else:
                p.data.copy_(value)
                st.transform_from[param] = shard
            st.loaded.add((param, shard))

        return load

    # -- after loading: check, choose the kernel, prepare once ---------------------------------

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        st: _LayerState = layer.duquant_state
        # Format 4 stores a fused layer's transform once, with its first shard (checkpoint.py).
        transform_shards = (list(st.shard_modules)[:1] if self.qcfg.format_version >= 4
                            else list(st.shard_modules))
        for param in WEIGHT_PARAMS + TRANSFORM_PARAMS:
            for shard in (st.shard_modules if param in WEIGHT_PARAMS else transform_shards):
                if (param, shard) not in st.loaded:
                    raise _err(st.tensor(shard, param), "missing")
        have_smooth = [s for s in transform_shards if ("input_smooth", s) in st.loaded]
        if have_smooth and len(have_smooth) != len(transform_shards):
            lacking = next(s for s in transform_shards if s not in have_smooth)
            raise _err(st.tensor(lacking, "input_smooth"),
                       f"missing while {st.tensor(have_smooth[0], 'input_smooth')} has one (vLLM "
                       f"fuses these linears into {st.prefix}, so they must share one transform)")

        qweight = layer.qweight.data
        bias = self._fused_bias(layer)
        smooth = layer.input_smooth.data if have_smooth else None
        spec = LayerSpec(  # what the kernel sees: one row-parallel shard and its groups
            in_features=st.in_per_rank // st.shards, out_features=qweight.shape[0],
            block_size=st.block, act_groups=st.act_groups // st.shards,
            w_bits=self.qcfg.w_bits, a_bits=self.qcfg.a_bits, has_smooth=smooth is not None,
            has_bias=bias is not None, act_dtype=layer.params_dtype,
            device_type=qweight.device.type, capability=device_capability(qweight.device))
        kernel = choose_kernel(spec, layer_name=st.prefix)
        logger.info_once("duquant: W%dA%d linears run on kernel %s", spec.w_bits, spec.a_bits,
                         kernel.name)
        logger.debug("duquant: %s → %s %s", st.prefix, kernel.name, spec)
        transform = InputTransform(layer.input_rot1.data, layer.input_perm.data.long(),
                                   layer.input_rot2.data, smooth)
        rank_linear = QuantizedLinear(qweight, layer.weight_scale.data, layer.weight_zero.data,
                                      transform, bias, self.qcfg.w_bits, self.qcfg.a_bits,
                                      self.qcfg.act_clip_ratio, act_groups=st.act_groups,
                                      shards=st.shards)
        prepared = kernel.prepare_groups(spec, rank_linear, device=qweight.device)
        # The checkpoint-layout parameters are replaced by the kernel's own tensors.
        for name in WEIGHT_PARAMS + TRANSFORM_PARAMS + OPTIONAL_PARAMS:
            delattr(layer, name)
        for g, p in enumerate(prepared):
            for name, t in _prepared_tensors(p).items():
                layer.register_buffer(f"{_BUF}g{g}_{name}", t, persistent=False)
        layer.duquant_kernel = kernel
        layer.duquant_prepared = prepared
        runtime_info.record_layer(st.prefix, kernel.name, spec, prepared)  # for GET /v1/duquant
        del layer.duquant_state

    @staticmethod
    def _fused_bias(layer: torch.nn.Module) -> torch.Tensor | None:
        """The bias vLLM would pass to apply(): the kernel adds it in its epilogue instead (as
        core.reference does), so apply() ignores its bias argument. vLLM passes none when the
        layer returns its bias separately (skip_bias_add) and on row-parallel ranks > 0 (the
        all-reduce would add it tp times)."""
        bias = getattr(layer, "bias", None)
        if bias is None or getattr(layer, "skip_bias_add", False):
            return None
        if isinstance(layer, RowParallelLinear) and getattr(layer, "tp_rank", 0) > 0:
            return None
        return bias.data

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        # `bias` is already inside the prepared kernel (_fused_bias). Custom-op calls only (one
        # per activation group, a fixed list), so torch.compile traces it.
        return layer.duquant_kernel.apply_groups(layer.duquant_prepared, x)


DEFAULT_QKV = PACKED_MODULES["qkv_proj"]


def _prepared_tensors(p: Any) -> dict[str, torch.Tensor]:
    return p.tensors()
