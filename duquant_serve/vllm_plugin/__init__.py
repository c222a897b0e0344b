"""vLLM plugin: serve DuQuant W4A4 checkpoints with vLLM's own engine and server.

vLLM finds `register` through the entry point ``vllm.general_plugins: duquant`` and calls it in
the API server, the engine core and every worker process. It registers the quantization config
``"duquant"`` (config.py), which vLLM then selects by itself from a checkpoint's
``config.json`` (``quantization_config.quant_method == "duquant"``); each linear layer gets a
`DuQuantLinearMethod` (linear.py).

Importing this package does not import vLLM: only `register()` does.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """Register the ``duquant`` quantization method with vLLM. Idempotent (vLLM calls it once per
    process, tests and `duquant serve` may call it again)."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.layers.quantization import register_quantization_config

    from .compile_cache import enable_compile_cache_loading
    from .config import DuQuantVllmConfig

    register_quantization_config(DuQuantVllmConfig.NAME)(DuQuantVllmConfig)
    enable_compile_cache_loading()  # every vLLM process: the worker is the one that loads
    _registered = True


__all__ = ["register"]
