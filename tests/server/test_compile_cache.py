"""vLLM's compile cache through `duquant serve` (vllm_plugin/compile_cache.py): the second start
of a compiled (not --enforce-eager) server loads the model compiled by the first, and a cached
artifact holds no checkpoint tensors (a checkpoint with other transforms under the same config
loads it and answers exactly as a fresh compile of its own)."""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest
from serve_helpers import ServerProcess

pytestmark = pytest.mark.engine

LOADED = "Directly load AOT compilation"
PROMPT = {"model": "t", "prompt": "hello world, this is a test of the compile cache",
          "max_tokens": 1, "temperature": 0, "logprobs": 0, "echo": True}


def test_complete_bundled_artifact_adds_only_a_missing_method():
    from duquant_serve.vllm_plugin.compile_cache import complete_bundled_artifact

    class Artifacts:
        pass

    class Loaded:
        _artifacts = Artifacts()

    def bundled(*a):
        return a

    fn = Loaded()
    fn._artifacts.compiled_fn = bundled
    assert complete_bundled_artifact(fn) is fn
    assert fn._artifacts.compiled_fn.finalize_loading(object()) is None

    class Finalizing:
        def finalize_loading(self, cfg):
            return "vllm's own"

    fn._artifacts.compiled_fn = Finalizing()
    complete_bundled_artifact(fn)
    assert fn._artifacts.compiled_fn.finalize_loading(None) == "vllm's own"  # left alone


def _prompt_logprobs(checkpoint, log, cache_root) -> tuple[list[float], str]:
    srv = ServerProcess(checkpoint, ["--served-model-name", "t", "--max-model-len", "512"], log,
                        env={"VLLM_CACHE_ROOT": str(cache_root)})
    try:
        srv.wait_healthy()
        req = urllib.request.Request(srv.base + "/v1/completions", data=json.dumps(PROMPT).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            lp = json.load(r)["choices"][0]["logprobs"]["token_logprobs"][1:]
    finally:
        srv.stop()
    return lp, log.read_text(errors="replace")


def test_second_start_loads_the_compiled_model_and_keeps_no_tensors(tmp_path):
    from duquant_serve.cli import main
    from duquant_serve.testing.tiny import QUICK_QUANT_ARGS, make_tiny_model

    src = make_tiny_model(tmp_path / "src", "llama")
    a, b = tmp_path / "a", tmp_path / "b"
    for out, seed in ((a, "0"), (b, "5")):
        assert main(["-q", "quantize", str(src), "--out", str(out), "--seed", seed,
                     *QUICK_QUANT_ARGS]) == 0
    cache = tmp_path / "cache"
    first, log1 = _prompt_logprobs(a, tmp_path / "a1.log", cache)
    assert LOADED not in log1  # an empty cache: compiled
    second, log2 = _prompt_logprobs(a, tmp_path / "a2.log", cache)
    assert LOADED in log2, log2[-3000:]
    assert "Compiling model again" not in log2
    assert second == first
    # b's tensors in a's folder under a's config.json (a checkpoint rewritten in place): the
    # same cache key, so a's artifact is loaded; its answer must be b's own, as a fresh
    # compile (empty cache) gives it.
    for f in b.iterdir():
        if f.name != "config.json":
            shutil.copy(f, a / f.name)
    cached, log3 = _prompt_logprobs(a, tmp_path / "b1.log", cache)
    assert LOADED in log3
    fresh, log4 = _prompt_logprobs(a, tmp_path / "b2.log", tmp_path / "fresh_cache")
    assert LOADED not in log4
    assert cached == fresh
    assert cached != first
