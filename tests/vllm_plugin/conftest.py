"""Fixtures of the vLLM plugin tests (helpers in engine_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # engine_helpers.py, broken.py

from engine_helpers import greedy_reference, quantize_tiny, run_engine, tail  # noqa: E402


@pytest.fixture(scope="session")
def dq_checkpoint(tmp_path_factory) -> Path:
    """A float32 tiny Llama (GQA, head_dim 64) quantized to a DuQuant W4A4 checkpoint with
    tp_shards=2 (o_proj gets online smoothing, down_proj a 64-block)."""
    return quantize_tiny(tmp_path_factory.mktemp("vllm_plugin"), "llama")


@pytest.fixture(scope="session")
def reference_tokens(dq_checkpoint: Path) -> list[list[int]]:
    return greedy_reference(dq_checkpoint)


@pytest.fixture(scope="session")
def eager_run(dq_checkpoint: Path, tmp_path_factory) -> dict:
    """One eager (--enforce-eager) engine on the tiny checkpoint, shared by the tests."""
    proc, res = run_engine(dq_checkpoint, tmp_path_factory.mktemp("eager") / "out.json")
    assert res is not None, tail(proc)
    return res


@pytest.fixture(scope="session")
def compiled_run(dq_checkpoint: Path, tmp_path_factory) -> dict:
    """One torch.compile'd engine (vLLM's default) on the tiny checkpoint, shared by the tests
    that compare against it."""
    proc, res = run_engine(dq_checkpoint, tmp_path_factory.mktemp("compiled") / "out.json",
                           "--compile")
    assert res is not None, tail(proc)
    return res
