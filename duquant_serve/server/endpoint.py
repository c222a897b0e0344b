"""DuQuant additions to vLLM's own API server: ``GET /v1/duquant`` and ``duquant_*`` metrics.

A vLLM endpoint plugin (entry point ``vllm.endpoint_plugins: duquant``; vLLM loads those only
when ``VLLM_PLUGINS`` names them, which `duquant serve` does). vLLM adds the route to its own
FastAPI app before its middleware, so ``--api-key`` guards it like every ``/v1`` route, and
sets up the state once the engine has loaded the model, i.e. after every layer chose its kernel.

``GET /v1/duquant`` →::

    {"object": "duquant.info", "models": ["tiny"], "checkpoint": "/path",
     "quantization_config": {"w_bits": 4, "a_bits": 4, "block_size": 128, "tp_shards": 2,
                             "format_version": 3, ...},
     "kernels": {"available": true, "layers": {"model.layers.0.mlp.down_proj": "torch_ref", ...},
                 "counts": {"torch_ref": 8}, "weight_bytes": {"torch_ref": 561152},
                 "ranks": {"0": {layer: {"kernel", "in_features", "out_features",
                                         "block_size", "weight_bytes"}}}}}

Metrics, in vLLM's registry (so on its ``/metrics``, multiprocess mode included):
``duquant_quantization_info`` (1, labels: the config), ``duquant_linear_layers{kernel}`` and
``duquant_linear_weight_bytes{kernel}`` (summed over ranks).
"""

from __future__ import annotations

import atexit
import os
from argparse import Namespace
from typing import Any

from ..vllm_plugin.runtime_info import RUNTIME_DIR_ENV, read_kernel_report, remove_records

ROUTE = "/v1/duquant"
INFO_LABELS = ("model_name", "w_bits", "a_bits", "block_size", "tp_shards", "format_version",
               "lwc", "permutation", "method", "act_group_size")
_gauges: dict[str, Any] = {}


def _gauge(name: str, doc: str, labels: tuple[str, ...]) -> Any:
    """One Gauge per process (prometheus_client refuses a second registration of a name).
    "mostrecent": with several API-server processes (multiprocess mode) they all report the
    same values, so one is right."""
    if name not in _gauges:
        from prometheus_client import Gauge

        _gauges[name] = Gauge(name, doc, labelnames=labels, multiprocess_mode="mostrecent")
    return _gauges[name]


def _quant_config(engine_client: Any) -> dict[str, Any] | None:
    """The checkpoint's quantization_config as parsed by DuQuantConfig (the one reader of its
    keys), or None when the served model is not a DuQuant checkpoint."""
    from ..core.config import ConfigError, DuQuantConfig

    vllm_config = getattr(engine_client, "vllm_config", None)
    qcfg = getattr(getattr(vllm_config, "quant_config", None), "qcfg", None)
    if isinstance(qcfg, DuQuantConfig):
        return qcfg.to_dict()
    hf = getattr(getattr(engine_client, "model_config", None), "hf_config", None)
    raw = getattr(hf, "quantization_config", None)
    if isinstance(raw, dict):
        try:
            return DuQuantConfig.from_dict(raw).to_dict()
        except ConfigError:
            return None
    return None


def kernel_report() -> dict[str, Any]:
    """The engine's per-layer kernel choices, read now (they are written while loading)."""
    directory = os.environ.get(RUNTIME_DIR_ENV)
    if not directory:
        return {"available": False,
                "reason": f"{RUNTIME_DIR_ENV} is not set (`duquant serve` sets it)"}
    report = read_kernel_report(directory)
    if not report["layers"]:
        return {"available": False, "reason": f"no DuQuant layer recorded in {directory}"}
    return {"available": True, **report}


def build_info(state: Any) -> dict[str, Any]:
    return {"object": "duquant.info", "models": getattr(state, "duquant_models", []),
            "checkpoint": getattr(state, "duquant_checkpoint", None),
            "quantization_config": getattr(state, "duquant_quant_config", None),
            "kernels": kernel_report()}


def set_metrics(model_name: str, quant_config: dict[str, Any] | None,
                kernels: dict[str, Any]) -> None:
    if quant_config is not None:
        info = _gauge("duquant_quantization_info",
                      "DuQuant checkpoint quantization settings (value 1; labels carry them)",
                      INFO_LABELS)
        values = {k: str(quant_config.get(k, "")).lower() for k in INFO_LABELS[1:]}
        info.labels(model_name=model_name, **values).set(1)
    if kernels.get("available"):
        layers = _gauge("duquant_linear_layers", "DuQuant linear layers per kernel path",
                        ("model_name", "kernel"))
        nbytes = _gauge("duquant_linear_weight_bytes",
                        "Bytes of prepared DuQuant linear tensors per kernel, summed over ranks",
                        ("model_name", "kernel"))
        for kernel, n in kernels["counts"].items():
            layers.labels(model_name=model_name, kernel=kernel).set(n)
            nbytes.labels(model_name=model_name, kernel=kernel).set(kernels["weight_bytes"][kernel])


class DuQuantEndpoint:
    """vLLM `EndpointPlugin` (vllm/plugins/endpoint_plugins/interface.py)."""

    name = "duquant"
    required_tasks = None  # any model vLLM serves may hold DuQuant linears

    def attach_router(self, app: Any) -> None:
        from fastapi.responses import JSONResponse

        # No annotations: FastAPI reads them as parameters/response model, and under
        # `from __future__ import annotations` it cannot resolve names imported here.
        async def duquant_info():
            return JSONResponse(build_info(app.state))

        app.add_api_route(ROUTE, duquant_info, methods=["GET"], response_class=JSONResponse)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        names = list(getattr(args, "served_model_name", None) or [getattr(args, "model", "")])
        state.duquant_models = names
        state.duquant_checkpoint = getattr(args, "model", None)
        state.duquant_quant_config = _quant_config(engine_client) if engine_client else None
        set_metrics(names[0], state.duquant_quant_config, kernel_report())
        directory = os.environ.get(RUNTIME_DIR_ENV)
        if directory:
            # The engine processes are gone by the time this process exits.
            atexit.register(remove_records, directory)
