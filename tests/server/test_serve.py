"""`duquant serve`: refusals before vLLM starts, and the real OpenAI-compatible server on CPU
(started as a subprocess on 127.0.0.1, queried with the `openai` client, stopped by the test)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "vllm_plugin"))  # broken.py, conftest helpers

from broken import MISSING, make_broken  # noqa: E402
from serve_helpers import CHAT_TEMPLATE, ServerProcess  # noqa: E402

MODEL_NAME = "llama-dq"  # the served name defaults to the checkpoint folder's


@pytest.fixture(scope="module")
def dq_checkpoint(tmp_path_factory) -> Path:
    from duquant_serve.cli import main
    from duquant_serve.testing.tiny import make_tiny_model

    d = tmp_path_factory.mktemp("serve")
    src = make_tiny_model(d / "llama", "llama")
    out = d / "llama-dq"
    assert main(["-q", "quantize", str(src), "--out", str(out), "--tp-shards", "2", "--calib",
                 "random", "--nsamples", "4", "--calib-seqlen", "64", "--steps", "32"]) == 0
    return out


# ---------------------------------------------------------------------------------------------
# Refused before anything starts (exit 2, clear message)
# ---------------------------------------------------------------------------------------------


def _serve(capsys, checkpoint, *rest: str) -> tuple[int, str]:
    from duquant_serve.cli import main

    rc = main(["serve", str(checkpoint), *rest])
    return rc, capsys.readouterr().err


def test_refuses_missing_tensor(dq_checkpoint, tmp_path, capsys):
    bad = make_broken(dq_checkpoint, tmp_path / "bad", "missing")
    rc, err = _serve(capsys, bad)
    assert rc == 2
    assert f"duquant serve: error: tensor {MISSING}: missing" in err


def test_refuses_non_checkpoint(tmp_path, capsys):
    rc, err = _serve(capsys, tmp_path)
    assert rc == 2
    assert "has no config.json" in err


def test_refuses_tp_not_dividing_tp_shards(dq_checkpoint, capsys):
    for opts in (["--tensor-parallel-size", "3"], ["-tp=4"]):
        rc, err = _serve(capsys, dq_checkpoint, *opts)
        assert rc == 2, opts
        assert "does not divide the checkpoint's quantization_config.tp_shards=2" in err


def test_pipeline_parallel_on_cpu(dq_checkpoint, monkeypatch):
    from duquant_serve.server import launch

    monkeypatch.setattr(launch, "is_cpu_platform", lambda: True)
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    _, env = launch.build_command(dq_checkpoint, ["-tp", "2", "-pp", "2"], environ={})
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1|2|3"  # one core block per worker
    _, env = launch.build_command(dq_checkpoint, ["--pipeline-parallel-size=2"], environ={})
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3"
    # two nodes of TP 2: one worker here, no binding to split
    _, env = launch.build_command(dq_checkpoint, ["-tp", "2", "--nnodes", "2"], environ={})
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env
    with pytest.raises(launch.ServeError, match="drop --enforce-eager"):
        launch.build_command(dq_checkpoint, ["-pp", "2", "--enforce-eager"], environ={})
    with pytest.raises(launch.ServeError, match="need at least 8 CPU cores"):
        launch.build_command(dq_checkpoint, ["-tp", "2", "-pp", "4"], environ={})
    with pytest.raises(launch.ServeError, match="--pipeline-parallel-size must be an integer"):
        launch.build_command(dq_checkpoint, ["-pp", "two"], environ={})


def test_refuses_model_option(dq_checkpoint, capsys):
    rc, err = _serve(capsys, dq_checkpoint, "--model", "other")
    assert rc == 2
    assert "--model is set by `duquant serve`" in err


def test_command_and_cpu_defaults(dq_checkpoint):
    from duquant_serve.server.launch import build_command

    argv, env = build_command(dq_checkpoint, ["--port", "9"], environ={"VLLM_PLUGINS": "x"})
    # `vllm serve` arguments, the checkpoint as its positional model
    assert argv[0] == str(Path(dq_checkpoint).resolve())
    assert argv[argv.index("--served-model-name") + 1] == "llama-dq"  # the folder's name
    assert "--dtype" not in argv  # a bfloat16 checkpoint: vLLM's auto is right
    assert argv[-2:] == ["--port", "9"]
    assert env["DUQUANT_VALIDATED_CHECKPOINT"] == str(Path(dq_checkpoint).resolve())
    assert env["VLLM_PLUGINS"] == "x,duquant"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    argv, env = build_command(dq_checkpoint, ["-tp", "2", "--served-model-name", "a", "b"],
                              environ={"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert argv.count("--served-model-name") == 1  # the user's names win
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"  # the user's setting wins
    if len(os.sched_getaffinity(0)) >= 2:
        assert env["VLLM_CPU_OMP_THREADS_BIND"].count("|") == 1


def test_launcher_validates_without_importing_vllm(dq_checkpoint):
    """Start-up (issue 23): the launcher's checks run before vLLM's process starts, so what
    they import is paid on top of vLLM's own start; importing vLLM here cost 3.5 s."""
    import subprocess

    code = ("import sys; from duquant_serve.server.launch import build_command; "
            f"build_command({str(dq_checkpoint)!r}, []); "
            "print('vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_float32_checkpoint_served_in_float32_on_cpu(dq_checkpoint, tmp_path):
    import json
    import shutil

    from duquant_serve.server.launch import build_command

    f32 = shutil.copytree(dq_checkpoint, tmp_path / "f32")
    cfg = json.loads((f32 / "config.json").read_text())
    cfg["dtype"] = cfg["torch_dtype"] = "float32"
    (f32 / "config.json").write_text(json.dumps(cfg))
    argv, _ = build_command(f32, [], environ={})
    assert argv[argv.index("--dtype") + 1] == "float32"
    argv, _ = build_command(f32, ["--dtype=bfloat16"], environ={})
    assert "float32" not in argv  # the user's --dtype wins


def test_help_shows_ours_and_vllms(capsys):
    from duquant_serve.cli import main

    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: duquant serve CHECKPOINT")
    assert "usage: vllm serve" in out and "--help=ModelConfig" in out


def test_front_door_defaults_on_cpu_and_gpu(dq_checkpoint, monkeypatch):
    """On any device: drain on SIGTERM, the DuQuant middleware, and VLLM_PLUGINS naming every
    installed plugin plus ours (endpoint plugins load only when named). GPU: no CPU settings."""
    from importlib.metadata import entry_points

    from duquant_serve.server import launch

    argv, env = launch.build_command(dq_checkpoint, [], environ={})
    assert argv[argv.index("--middleware") + 1] == launch.MIDDLEWARE
    assert argv[argv.index("--shutdown-timeout") + 1] == launch.DRAIN_TIMEOUT_S
    installed = {ep.name for ep in entry_points(group="vllm.general_plugins")}
    assert set(env["VLLM_PLUGINS"].split(",")) == installed | {"duquant"}
    argv, _ = launch.build_command(dq_checkpoint, ["--shutdown-timeout=0"], environ={})
    assert "--shutdown-timeout" not in argv  # the user's value (abort) wins
    monkeypatch.setattr(launch, "is_cpu_platform", lambda: False)
    argv, env = launch.build_command(dq_checkpoint, [], environ={})
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and "--dtype" not in argv
    assert "--middleware" in argv and "--shutdown-timeout" in argv


def test_ray_backend_checks(dq_checkpoint, monkeypatch):
    """CPU: Ray refused before start (tests/server/test_multinode.py shows vLLM failing);
    GPU: served when Ray is importable, a clear error when it is not."""
    import importlib.util

    from duquant_serve.server import launch

    ray = ["--distributed-executor-backend", "ray"]
    monkeypatch.setattr(launch, "is_cpu_platform", lambda: True)
    with pytest.raises(launch.ServeError, match="does not run on vLLM's CPU backend"):
        launch.build_command(dq_checkpoint, ray, environ={})
    monkeypatch.setattr(launch, "is_cpu_platform", lambda: False)
    real = importlib.util.find_spec

    def ray_installed(yes):
        return lambda name, *a: (object() if yes else None) if name == "ray" else real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", ray_installed(True))
    argv, _ = launch.build_command(dq_checkpoint, ray, environ={})
    assert argv[-2:] == ray
    monkeypatch.setattr(importlib.util, "find_spec", ray_installed(False))
    with pytest.raises(launch.ServeError, match="needs Ray"):
        launch.build_command(dq_checkpoint, ray, environ={})


def test_fp8_kv_cache_note():
    from duquant_serve.server import launch

    assert launch.kv_cache_note(["--port", "9"]) is None
    assert launch.kv_cache_note(["--kv-cache-dtype", "auto"]) is None
    note = launch.kv_cache_note(["--kv-cache-dtype=fp8_e4m3"])
    assert note is not None and "scale 1.0" in note and "perplexity" in note


def test_start_up_note_only_when_cpu_compiles(monkeypatch):
    from duquant_serve.server import launch

    monkeypatch.setattr(launch, "is_cpu_platform", lambda: True)
    note = launch.start_up_note(["--port", "9"])
    assert note is not None and "compiles" in note and "--enforce-eager" in note
    assert launch.start_up_note(["--enforce-eager"]) is None
    monkeypatch.setattr(launch, "is_cpu_platform", lambda: False)
    assert launch.start_up_note([]) is None


# ---------------------------------------------------------------------------------------------
# The real server
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(dq_checkpoint, tmp_path_factory):
    pytest.importorskip("openai")
    d = tmp_path_factory.mktemp("server")
    (d / "chat.jinja").write_text(CHAT_TEMPLATE)
    srv = ServerProcess(dq_checkpoint, ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager",
                                        "--chat-template", str(d / "chat.jinja")],
                        d / "server.log")
    try:
        print(f"\nserver healthy after {srv.wait_healthy():.1f}s")
        yield srv.base
    finally:
        rc = srv.stop()
        log = srv.log.read_text()
        # SIGTERM is a clean stop: drained, exit 0, no traceback, no interpreter-exit noise.
        assert "[shutdown] API server: shutdown triggered" in log
        assert rc == 0, log[-3000:]
        assert "Traceback" not in log and "EngineDeadError" not in log, log[-3000:]
        assert "nanobind" not in log, log[-3000:]


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server + "/v1", api_key="unused")


pytestmark_engine = pytest.mark.engine


@pytest.mark.engine
def test_models_lists_the_checkpoint(client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]


@pytest.mark.engine
def test_completion_greedy_tokens_equal_offline_reference(client, dq_checkpoint):
    import torch

    from offline_quant.evaluate import load_checkpoint_model

    prompt, n = "The quick brown fox", 16
    r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=n, temperature=0,
                                  extra_body={"return_token_ids": True, "ignore_eos": True})
    assert r.usage.completion_tokens == n
    got = r.choices[0].token_ids
    model, tok, _ = load_checkpoint_model(dq_checkpoint)
    cur = tok(prompt)["input_ids"]
    with torch.no_grad():
        for _ in range(n):
            cur.append(int(model(torch.tensor([cur])).logits[0, -1].argmax()))
    assert got == cur[-n:]


@pytest.mark.engine
def test_completion_streaming_equals_non_streaming(client):
    kw = dict(model=MODEL_NAME, prompt="Hello world", max_tokens=12, temperature=0,
              extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert len(chunks) > 1
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full


@pytest.mark.engine
def test_chat_streaming_and_not(client):
    kw = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Say hi"}], max_tokens=12,
              temperature=0, extra_body={"ignore_eos": True})
    r = client.chat.completions.create(**kw)
    full = r.choices[0].message.content
    assert r.usage.completion_tokens == 12 and full
    parts = [c.choices[0].delta.content or "" for c in
             client.chat.completions.create(stream=True, **kw) if c.choices]
    assert "".join(parts) == full


@pytest.mark.engine
def test_bad_request_is_an_openai_error(client):
    import openai

    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_NAME, prompt="x" * 600, max_tokens=4)
