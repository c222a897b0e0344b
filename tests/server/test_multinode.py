"""Two nodes on one machine: vLLM's multiprocessing multi-node (`--nnodes 2`, node 1
`--headless`) with TP=2 across them, through `duquant serve`, gives the single-process engine's
greedy tokens. The same commands on two hosts are deploy/multinode.sh."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "vllm_plugin"))

from engine_helpers import (  # noqa: E402
    MAX_TOKENS,
    PROMPTS,
    greedy_reference,
    near_tie_divergences,
)
from serve_helpers import ServerProcess  # noqa: E402

from benchmarks.serve.servers import free_port  # noqa: E402


@pytest.mark.engine
def test_two_nodes_tp2_equal_the_offline_reference(tmp_path):
    from duquant_serve.cli import main
    from duquant_serve.testing.tiny import QUICK_QUANT_ARGS, make_tiny_model

    src = make_tiny_model(tmp_path / "llama", "llama")
    ck = tmp_path / "llama-dq"
    assert main(["-q", "quantize", str(src), "--out", str(ck), "--tp-shards", "2",
                 "--dtype", "float32", *QUICK_QUANT_ARGS]) == 0
    common = ["--tensor-parallel-size", "2", "--nnodes", "2", "--master-addr", "127.0.0.1",
              "--master-port", str(free_port()), "--enforce-eager", "--max-model-len", "256",
              "--dtype", "float32"]
    worker = ServerProcess(ck, [*common, "--node-rank", "1", "--headless"], tmp_path / "n1.log",
                           env={"VLLM_CPU_OMP_THREADS_BIND": "1"})
    head = ServerProcess(ck, [*common, "--node-rank", "0"], tmp_path / "n0.log",
                         env={"VLLM_CPU_OMP_THREADS_BIND": "0"})
    try:
        head.wait_healthy(timeout=400)
        got = []
        for prompt in PROMPTS:
            body = json.dumps({"model": "llama-dq", "prompt": prompt, "max_tokens": MAX_TOKENS,
                               "temperature": 0, "ignore_eos": True,
                               "return_token_ids": True}).encode()
            req = urllib.request.Request(head.base + "/v1/completions", body,
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                got.append(json.loads(r.read())["choices"][0]["token_ids"])
    finally:
        head.stop()
        worker.stop()
    # The first 64 tokens of 4 prompts; TP=2's reduction order may flip a near-tie (the exact
    # in-engine TP=2 and PP=2 comparisons are tests/vllm_plugin/test_engine.py).
    ties = {}
    for prompt, g, want in zip(PROMPTS, got, greedy_reference(ck), strict=True):
        assert len(g) == MAX_TOKENS
        if g != want:
            ties[prompt] = near_tie_divergences(ck, prompt, g)
    assert sum(len(t) for t in ties.values()) <= 2, f"too many near-ties to be chance: {ties}"

