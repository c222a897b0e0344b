"""`DuQuantVllmConfig`: vLLM's view of a DuQuant checkpoint's ``quantization_config``.

It parses the config through `DuQuantConfig.from_dict` (the only reader of raw keys), refuses
what the kernels cannot run (anything but W4A4, a tensor-parallel size that does not divide
``tp_shards``), validates a local checkpoint up front with `duquant_serve.checkpoint` (so a bad
checkpoint fails with a message naming the tensor before vLLM builds anything), and hands each
linear layer its method.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)

from ..checkpoint import VALIDATED_ENV, CheckpointError, check_tp_size, load_checkpoint
from ..core.config import QUANT_METHOD, ConfigError, DuQuantConfig
from ..core.topology import PACKED_MODULES

logger = logging.getLogger(__name__)

# Bit widths the kernels (duquant_serve.kernels) implement today.
SERVABLE_BITS = ((4, 4),)
# vLLM's fused linears and the checkpoint (Hugging Face) modules they are built from, in shard
# order; used when the model has not filled `packed_modules_mapping` (it normally does).
DEFAULT_PACKED_MODULES = PACKED_MODULES


class DuQuantVllmConfig(QuantizationConfig):
    """vLLM quantization config ``"duquant"`` wrapping a `DuQuantConfig`."""

    NAME = QUANT_METHOD

    def __init__(self, qcfg: DuQuantConfig) -> None:
        super().__init__()
        self.qcfg = qcfg
        self.checkpoint_path: str | None = None
        self._tp_checked = False

    def __repr__(self) -> str:
        return f"DuQuantVllmConfig({self.qcfg})"

    # -- what vLLM asks of every quantization config -------------------------------------------

    def get_name(self) -> str:
        return self.NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.float32, torch.float16, torch.bfloat16]

    @classmethod
    def get_min_capability(cls) -> int:
        # The torch reference kernel runs on any device; faster kernels are chosen per layer by
        # kernels.select.choose_kernel, which knows their own capability rules.
        return 0

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # quantization_config lives in config.json

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DuQuantVllmConfig:
        try:
            qcfg = DuQuantConfig.from_dict(config)
        except ConfigError as e:
            raise ValueError(f"duquant: invalid quantization_config in config.json: {e}") from e
        if (qcfg.w_bits, qcfg.a_bits) not in SERVABLE_BITS:
            raise ValueError(
                f"duquant: this checkpoint is W{qcfg.w_bits}A{qcfg.a_bits}, but the serving "
                "kernels implement only "
                + ", ".join(f"W{w}A{a}" for w, a in SERVABLE_BITS)
                + "; evaluate other widths offline with `duquant eval`")
        return cls(qcfg)

    def maybe_update_config(self, model_name: str, hf_config: Any = None,
                            revision: str | None = None) -> None:
        """vLLM passes the model path here once, in the process that builds the engine config:
        the earliest point at which a local checkpoint can be checked tensor by tensor."""
        path = Path(model_name)
        if not path.is_dir():
            logger.info("duquant: %s is not a local directory; tensors are checked while "
                        "loading only", model_name)
            return
        self.checkpoint_path = str(path.resolve())
        if os.environ.get(VALIDATED_ENV) == self.checkpoint_path:
            return
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(f"duquant: checkpoint {model_name} refused: {e}") from e

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        if not isinstance(layer, LinearBase):
            return None  # embeddings (and lm_head, a vocab embedding) and attention stay as is
        self.check_tensor_parallel()
        if not self._is_quantized(prefix):
            return UnquantizedLinearMethod()
        from .linear import DuQuantLinearMethod

        return DuQuantLinearMethod(self)

    # -- DuQuant specifics ---------------------------------------------------------------------

    def check_tensor_parallel(self, tp_size: int | None = None) -> None:
        """Row-parallel permutations stay inside `tp_shards` contiguous shards, so a rank's input
        slice must be a union of whole checkpoint shards: TP must divide tp_shards."""
        if tp_size is None:
            if self._tp_checked:
                return
            from vllm.distributed import get_tensor_model_parallel_world_size

            tp_size = get_tensor_model_parallel_world_size()
        check_tp_size(tp_size, self.qcfg.tp_shards)
        self._tp_checked = True

    def fused_modules(self, name: str) -> list[str] | None:
        """Checkpoint module names fused into vLLM module `name` (e.g. qkv_proj → q/k/v)."""
        mapping = self.packed_modules_mapping or DEFAULT_PACKED_MODULES
        return mapping.get(name) or DEFAULT_PACKED_MODULES.get(name)

    def _is_quantized(self, prefix: str) -> bool:
        parent, _, name = prefix.rpartition(".")
        parts = self.fused_modules(name)
        names = [f"{parent}.{p}" if parent else p for p in parts] if parts else [prefix]
        skipped = [self._skipped(n) for n in names]
        if any(skipped) and not all(skipped):
            raise CheckpointError(
                f"duquant: modules_not_quantized keeps only some of {names} in 16 bits, but vLLM "
                f"fuses them into {prefix}: all or none must be quantized")
        return not skipped[0]

    def _skipped(self, module: str) -> bool:
        return any(module == s or module.endswith("." + s) for s in self.qcfg.modules_not_quantized)

