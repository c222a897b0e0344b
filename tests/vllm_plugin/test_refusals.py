"""Malformed or unservable checkpoints are refused with a message naming the tensor (or the
setting), both up front (config time, before any engine starts) and by the weight loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
from broken import MISMATCHED, MISSING, make_broken
from engine_helpers import engine_env, run_engine, tail

pytest.importorskip("vllm")

MESSAGES = {
    "missing": f"tensor {MISSING}: missing",
    "mismatch": f"tensor {MISMATCHED}: fused input transform differs from "
                "model.layers.0.mlp.gate_proj",
    "w8a8": "this checkpoint is W8A8, but the serving kernels implement only W4A4",
}


@pytest.fixture(scope="module")
def broken(dq_checkpoint, tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    return {k: make_broken(dq_checkpoint, d / k, k) for k in ("missing", "mismatch", "tp1", "w8a8")}


def _engine_config(path: Path):
    """What LLM(...) and the API server do first: build vLLM's config (and our quantization
    config with it). No engine is started."""
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(path), dtype="float32", enforce_eager=True,
                      max_model_len=256).create_engine_config()


def test_good_checkpoint_selects_duquant_from_config_json(dq_checkpoint):
    cfg = _engine_config(dq_checkpoint)
    assert cfg.model_config.quantization == "duquant"
    assert type(cfg.quant_config).__name__ == "DuQuantVllmConfig"
    assert cfg.quant_config.qcfg.tp_shards == 2


@pytest.mark.parametrize("kind", ["missing", "mismatch", "w8a8"])
def test_refused_up_front(broken, kind):
    with pytest.raises(Exception, match=MESSAGES[kind]):
        _engine_config(broken[kind])


@pytest.mark.engine
@pytest.mark.parametrize("kind", ["missing", "mismatch"])
def test_refused_by_weight_loaders(broken, kind, tmp_path):
    """With the up-front check skipped (as for a checkpoint already validated by `duquant
    serve`, or one that is not a local directory), loading itself refuses: the fused copy is
    compared, never "last one wins"."""
    env = engine_env(DUQUANT_VALIDATED_CHECKPOINT=str(broken[kind].resolve()))
    proc, res = run_engine(broken[kind], tmp_path / "out.json", env=env)
    assert res is None
    assert "CheckpointError: duquant: " + MESSAGES[kind] in tail(proc, 20000), tail(proc)


def test_tp_size_must_divide_tp_shards():
    from duquant_serve.checkpoint import CheckpointError, check_tp_size

    check_tp_size(1, 2)
    check_tp_size(2, 2)
    check_tp_size(2, 4)
    with pytest.raises(CheckpointError, match=r"tensor-parallel size 2 does not divide .*"
                                              r"tp_shards=1.*--tensor-parallel-size in \[1\]"):
        check_tp_size(2, 1)
    with pytest.raises(CheckpointError, match="size 3 does not divide"):
        check_tp_size(3, 4)


@pytest.mark.engine
@pytest.mark.slow
def test_engine_at_wrong_tp_refuses(broken, tmp_path):
    """LLM(tensor_parallel_size=2) on a tp_shards=1 checkpoint: the workers refuse while
    building the model (vLLM does not show the TP size to the quantization config earlier;
    `duquant serve` refuses before starting, see tests/server)."""
    env = engine_env(VLLM_CPU_OMP_THREADS_BIND="0|1", VLLM_ENABLE_V1_MULTIPROCESSING="1")
    proc, res = run_engine(broken["tp1"], tmp_path / "out.json", "--tp", "2", env=env)
    assert res is None
    assert ("tensor-parallel size 2 does not divide the checkpoint's "
            "quantization_config.tp_shards=1") in tail(proc, 50000), tail(proc)


def test_partly_unquantized_fused_module_is_refused():
    from duquant_serve.checkpoint import CheckpointError
    from duquant_serve.core.config import DuQuantConfig
    from duquant_serve.vllm_plugin.config import DuQuantVllmConfig

    cfg = DuQuantVllmConfig(DuQuantConfig(modules_not_quantized=("lm_head", "q_proj")))
    assert cfg._is_quantized("model.layers.0.mlp.gate_up_proj")
    assert not cfg._is_quantized("lm_head")
    with pytest.raises(CheckpointError, match="all or none must be quantized"):
        cfg._is_quantized("model.layers.0.self_attn.qkv_proj")
