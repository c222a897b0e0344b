"""The plugin's entry point and registration."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest


def test_entry_point_names_register():
    eps = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert eps.get("duquant") == "duquant_serve.vllm_plugin:register"


def test_importing_the_plugin_package_does_not_import_vllm():
    code = "import sys, duquant_serve.vllm_plugin; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_register_is_idempotent():
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.quantization import (
        QUANTIZATION_METHODS,
        get_quantization_config,
    )

    from duquant_serve.vllm_plugin import register
    from duquant_serve.vllm_plugin.config import DuQuantVllmConfig

    register()
    register()
    assert QUANTIZATION_METHODS.count("duquant") == 1
    assert get_quantization_config("duquant") is DuQuantVllmConfig
