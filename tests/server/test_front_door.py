"""`duquant serve` as a production front door, against one real server process per module
(tiny random DuQuant checkpoint, CPU, `--api-key`, started with `duquant serve`'s defaults):

- GET /v1/duquant and the duquant_* metrics say what the engine actually loaded;
- the API key guards every /v1 route (and the model routes vLLM leaves open), OpenAI-shaped 401;
- malformed requests get an OpenAI error JSON with a 4xx, and the server keeps serving;
- a client that hangs up mid-stream aborts its request in the engine;
- 100 concurrent streaming clients, 30 of them hanging up mid-stream: the others get every token,
  the running/waiting gauges return to 0, the server's memory stays put;
- SIGTERM: in-flight streams finish completely, new requests get a 503 JSON or a refused
  connection, the server exits 0. This test stops the module's server, so it comes last.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from serve_helpers import CHAT_TEMPLATE, ServerProcess

httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.engine

MODEL = "tiny-duquant"
KEY = "front-door-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONTEXT = 8192  # this module's tiny model's max_position_embeddings (fixture below)
# Server memory (RSS summed over the API server, engine core and worker) may grow by this much
# over the concurrency test: allocator caches and buffers of 100 connections, no leak. Measured
# growth here: 2–18 MiB on a ~3.5 GiB process tree.
RSS_TOLERANCE = 64 * 2**20


@pytest.fixture(scope="module")
def front_door_checkpoint(tmp_path_factory):
    """This module's own tiny Llama checkpoint, with a context long enough that a hung-up
    request would run for seconds of engine time if its abort were lost."""
    from duquant_serve.cli import main
    from duquant_serve.testing.tiny import QUICK_QUANT_ARGS, make_tiny_model

    d = tmp_path_factory.mktemp("front_door_model")
    src = make_tiny_model(d / "llama", "llama", max_positions=CONTEXT)
    out = d / "llama-dq"
    assert main(["-q", "quantize", str(src), "--out", str(out), "--tp-shards", "2",
                 *QUICK_QUANT_ARGS]) == 0
    return src, out


@pytest.fixture(scope="module")
def server(front_door_checkpoint, tmp_path_factory):
    d = tmp_path_factory.mktemp("front_door")
    (d / "chat.jinja").write_text(CHAT_TEMPLATE)
    records = d / "runtime"
    records.mkdir()
    srv = ServerProcess(
        front_door_checkpoint[1],
        ["--served-model-name", MODEL, "--max-model-len", str(CONTEXT), "--enforce-eager",
         "--api-key", KEY, "--chat-template", str(d / "chat.jinja")],
        d / "server.log", env={"DUQUANT_RUNTIME_DIR": str(records)})
    srv.records = records
    print(f"\nserver healthy after {srv.wait_healthy():.1f}s")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, timeout=60) as c:
        yield c


def _assert_openai_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    err = body.get("error")
    assert isinstance(err, dict), body
    assert isinstance(err.get("message"), str) and err["message"], body
    assert isinstance(err.get("type"), str) and err["type"], body
    assert err.get("code") == status, body
    assert "param" in err, body
    return err


# ---------------------------------------------------------------------------------------------
# GET /v1/duquant and metrics
# ---------------------------------------------------------------------------------------------


def _config(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "config.json").read_text())


def test_duquant_endpoint_reports_config_and_kernels(http, server, front_door_checkpoint):
    from duquant_serve.kernels.select import KERNELS

    ck = front_door_checkpoint[1]
    r = http.get("/v1/duquant", headers=AUTH)
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["object"] == "duquant.info"
    assert info["models"] == [MODEL]
    assert Path(info["checkpoint"]).resolve() == Path(ck).resolve()
    qc = _config(ck)["quantization_config"]
    for k in ("quant_method", "w_bits", "a_bits", "block_size", "tp_shards", "format_version",
              "permutation", "lwc", "act_group_size"):
        assert info["quantization_config"][k] == qc[k], k

    kernels = info["kernels"]
    assert kernels["available"], kernels
    n_layers = _config(ck)["num_hidden_layers"]
    assert set(kernels["layers"]) == {
        f"model.layers.{i}.{m}" for i in range(n_layers)
        for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}
    assert set(kernels["layers"].values()) <= set(KERNELS)
    assert kernels["counts"] == dict(collections.Counter(kernels["layers"].values()))
    per_rank = collections.Counter()
    for layers in kernels["ranks"].values():
        for e in layers.values():
            per_rank[e["kernel"]] += e["weight_bytes"]
            assert e["weight_bytes"] > 0 and e["in_features"] > 0 and e["out_features"] > 0
    assert kernels["weight_bytes"] == dict(per_rank)
    # What the engine logged it runs (one kernel for all layers here, CPU: the torch reference).
    (kernel,) = set(kernels["layers"].values())
    assert f"linears run on kernel {kernel}" in server.log.read_text()


def _metrics(http) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    r = http.get("/metrics")
    assert r.status_code == 200
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def test_duquant_metrics_next_to_vllms(http, front_door_checkpoint):
    info = http.get("/v1/duquant", headers=AUTH).json()
    fams = _metrics(http)
    assert "vllm:num_requests_running" in fams  # vLLM's own, same endpoint
    qc = _config(front_door_checkpoint[1])["quantization_config"]
    (sample,) = fams["duquant_quantization_info"].samples
    assert sample.value == 1
    assert sample.labels["model_name"] == MODEL
    for k in ("w_bits", "a_bits", "block_size", "tp_shards", "format_version", "method",
              "act_group_size"):
        assert sample.labels[k] == str(qc[k]), k
    layers = {s.labels["kernel"]: s.value for s in fams["duquant_linear_layers"].samples}
    assert layers == {k: float(n) for k, n in info["kernels"]["counts"].items()}
    nbytes = {s.labels["kernel"]: s.value for s in fams["duquant_linear_weight_bytes"].samples}
    assert nbytes == {k: float(n) for k, n in info["kernels"]["weight_bytes"].items()}


# ---------------------------------------------------------------------------------------------
# API key
# ---------------------------------------------------------------------------------------------


def test_api_key_guards_every_v1_route(http):
    spec = http.get("/openapi.json").json()  # vLLM serves its route list without a key
    checked = 0
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1"):
            continue
        url = path.replace("{", "").replace("}", "")  # /v1/responses/{response_id} → a value
        for method in ops:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                r = http.request(method.upper(), url, headers=headers, json={})
                err = _assert_openai_error(r, 401)
                assert "API key" in err["message"], (method, path)
            checked += 1
    assert checked >= 8 and "/v1/duquant" in spec["paths"]


def test_api_key_guards_model_routes_outside_v1(http):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    for path in ("/invocations", "/tokenize", "/detokenize"):
        _assert_openai_error(http.post(path, json=body), 401)
    assert http.post("/tokenize", json=body, headers=AUTH).status_code == 200
    for path in ("/health", "/metrics", "/ping", "/version"):  # probes and scrapers: no key
        assert http.get(path).status_code == 200, path


def test_openai_client_with_wrong_key(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.models.list()
    assert e.value.status_code == 401


# ---------------------------------------------------------------------------------------------
# Malformed requests: each its own test id, each an OpenAI error with a 4xx
# ---------------------------------------------------------------------------------------------

C, CHAT = "/v1/completions", "/v1/chat/completions"
OK = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
USER = [{"role": "user", "content": "hi"}]


def _c(**kw):
    return {"json": {**OK, **kw}}


def _chat(**kw):
    return {"json": {"model": MODEL, "messages": USER, "max_tokens": 2, **kw}}


JSON = {"Content-Type": "application/json"}
MALFORMED = [
    # (id, method, path, request kwargs, expected status)
    ("invalid_json", "POST", C, {"content": b'{"model": ', "headers": JSON}, 400),
    ("body_not_utf8", "POST", C, {"content": b'\xff\xfe{"a": 1}', "headers": JSON}, 400),
    ("body_is_array", "POST", C, {"content": b"[1, 2]", "headers": JSON}, 400),
    ("body_is_null", "POST", C, {"content": b"null", "headers": JSON}, 400),
    ("empty_body", "POST", C, {"content": b"", "headers": JSON}, 400),
    ("wrong_content_type", "POST", C, {"content": json.dumps(OK).encode(), "headers": {"Content-Type": "text/plain"}}, 400),
    ("missing_prompt", "POST", C, {"json": {"model": MODEL, "max_tokens": 2}}, 400),
    ("missing_messages", "POST", CHAT, {"json": {"model": MODEL, "max_tokens": 2}}, 400),
    ("empty_messages", "POST", CHAT, _chat(messages=[]), 400),
    ("messages_not_a_list", "POST", CHAT, _chat(messages="hi"), 400),
    ("message_without_role", "POST", CHAT, _chat(messages=[{"content": "hi"}]), 400),
    ("message_content_wrong_type", "POST", CHAT, _chat(messages=[{"role": "user", "content": 5}]), 400),
    ("prompt_wrong_type", "POST", C, _c(prompt={"text": "hi"}), 400),
    ("prompt_token_out_of_vocab", "POST", C, _c(prompt=[999_999]), 400),
    ("prompt_negative_token", "POST", C, _c(prompt=[-5]), 400),
    ("prompt_longer_than_context", "POST", C, _c(prompt="x" * (CONTEXT + 100)), 400),
    ("max_tokens_negative", "POST", C, _c(max_tokens=-1), 400),
    ("max_tokens_zero", "POST", C, _c(max_tokens=0), 400),
    ("max_tokens_huge", "POST", C, _c(max_tokens=10**8), 400),
    ("max_tokens_string", "POST", C, _c(max_tokens="many"), 400),
    ("max_tokens_fractional", "POST", C, _c(max_tokens=2.5), 400),
    ("chat_max_completion_tokens_negative", "POST", CHAT, _chat(max_completion_tokens=-4), 400),
    ("unknown_model", "POST", C, _c(model="gpt-9"), 404),
    ("n_zero", "POST", C, _c(n=0), 400),
    ("n_too_large", "POST", C, _c(n=100_000), 400),
    ("stop_not_a_string", "POST", C, _c(stop=5), 400),
    ("stop_list_of_ints", "POST", C, _c(stop=[1, 2]), 400),
    ("stop_token_ids_out_of_vocab", "POST", C, _c(stop_token_ids=[10**11]), 400),
    ("logprobs_negative", "POST", C, _c(logprobs=-3), 400),
    ("logprobs_too_many", "POST", C, _c(logprobs=1000), 400),
    ("chat_top_logprobs_too_many", "POST", CHAT, _chat(logprobs=True, top_logprobs=99), 400),
    ("prompt_logprobs_too_many", "POST", C, _c(prompt_logprobs=100), 400),
    ("temperature_negative", "POST", C, _c(temperature=-1), 400),
    ("temperature_string", "POST", C, _c(temperature="hot"), 400),
    ("top_p_out_of_range", "POST", C, _c(top_p=5), 400),
    ("top_k_negative", "POST", C, _c(top_k=-7), 400),
    ("presence_penalty_out_of_range", "POST", C, _c(presence_penalty=10), 400),
    ("seed_overflow", "POST", C, _c(seed=2**70), 400),
    ("logit_bias_out_of_vocab", "POST", C, _c(logit_bias={"999999": 5}), 400),
    ("logit_bias_key_not_a_token", "POST", C, _c(logit_bias={"abc": 5}), 400),
    ("min_tokens_above_max_tokens", "POST", C, _c(min_tokens=5), 400),
    ("stream_options_without_stream", "POST", C, _c(stream_options={"include_usage": True}), 400),
    ("response_format_unknown", "POST", CHAT, _chat(response_format={"type": "xml"}), 400),
    ("tool_without_function", "POST", CHAT, _chat(tools=[{"type": "function"}]), 400),
    # What vLLM alone accepted but the OpenAI API rejects (request_schema.py): an undefined role
    # used to generate until the context limit.
    ("role_not_in_openai_api", "POST", CHAT, _chat(messages=[{"role": "wizard", "content": "hi"}]), 400),
    ("content_part_unknown_type", "POST", CHAT, _chat(messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]), 400),
    ("tool_message_without_id", "POST", CHAT, _chat(messages=[{"role": "tool", "content": "4"}]), 400),
    ("temperature_above_2", "POST", C, _c(temperature=2.5), 400),
    ("five_stop_sequences", "POST", C, _c(stop=["a", "b", "c", "d", "e"]), 400),
    ("completion_logprobs_above_5", "POST", C, _c(logprobs=6), 400),
    ("misspelt_parameter", "POST", C, _c(max_token=2), 400),
    ("unknown_route", "POST", "/v1/nope", _c(), 404),
    ("wrong_method", "GET", C, {}, 405),
    ("no_api_key", "POST", C, {"json": OK, "headers": {"Authorization": ""}}, 401),
    ("wrong_api_key", "POST", C, {"json": OK, "headers": {"Authorization": "Bearer wrong"}}, 401),
]


@pytest.mark.parametrize("method,path,kwargs,status", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_request_gets_openai_error(http, method, path, kwargs, status):
    kwargs = dict(kwargs)
    headers = {**AUTH, **kwargs.pop("headers", {})}
    headers = {k: v for k, v in headers.items() if v}  # "" removes the key
    r = http.request(method, path, headers=headers, **kwargs)
    _assert_openai_error(r, status)


def test_normal_completion_after_malformed_requests(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0)
    r = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=8,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 8
    assert r.choices[0].finish_reason == "length" and r.choices[0].text
    assert server.proc.poll() is None


# ---------------------------------------------------------------------------------------------
# 100 concurrent streams, 30 hanging up mid-stream
# ---------------------------------------------------------------------------------------------

N_CLIENTS, DROP_EVERY = 100, (0, 1, 2)  # clients i with i % 10 in DROP_EVERY hang up: 30 %
# A hung-up stream asks for as many tokens as the context allows: the longer it would run, the
# clearer it is that its abort, not its end, stopped it.
N_TOKENS, DROP_MAX_TOKENS = 8, CONTEXT - 32
HANG_UPS, CALIBRATION_TOKENS = 4, 512


def _tree_rss(pid: int) -> int:
    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])


def _sample(fams: dict, name: str, **labels) -> float:
    fam = fams[name.removesuffix("_total")] if name.endswith("_total") else fams[name]
    return sum(s.value for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def _sse_data(r) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent-event response. Lines end at \\n (or \\r\\n) only:
    httpx's aiter_lines also splits at U+2028, U+0085 and the like, which JSON leaves unescaped
    in generated text (the tiny model's byte-level vocabulary emits them now and then), and cut
    a chunk in two mid-JSON (seen twice in about 3000 streams)."""
    buf = b""
    async for part in r.aiter_bytes():
        *lines, buf = (buf + part).split(b"\n")
        for line in lines:
            if line.startswith(b"data: "):
                yield line[len(b"data: "):].rstrip(b"\r").decode()


async def _stream(c, i: int, drop: bool, drop_after: int = 2, max_tokens: int | None = None) -> dict:
    if max_tokens is None:
        max_tokens = DROP_MAX_TOKENS if drop else N_TOKENS
    body = {"model": MODEL, "prompt": f"client {i} says", "stream": True, "ignore_eos": True,
            "max_tokens": max_tokens, "return_token_ids": True,
            "stream_options": {"include_usage": True}}
    out = {"tokens": 0, "chunks": 0, "usage": None, "finish": None, "done": False}
    async with c.stream("POST", "/v1/completions", json=body, headers=AUTH) as r:
        out["status"] = r.status_code
        async with contextlib.aclosing(_sse_data(r)) as events:
            async for data in events:
                if data == "[DONE]":
                    out["done"] = True
                    continue
                chunk = json.loads(data)
                out["chunks"] += 1
                out["usage"] = chunk.get("usage") or out["usage"]
                for ch in chunk.get("choices", []):
                    out["tokens"] += len(ch.get("token_ids") or [])
                    out["finish"] = ch.get("finish_reason") or out["finish"]
                if drop and out["chunks"] >= drop_after:
                    return out  # leaving the block closes the connection mid-stream
    return out


async def _storm(base: str) -> list[dict]:
    limits = httpx.Limits(max_connections=N_CLIENTS + 10)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as c:
        return await asyncio.gather(*[_stream(c, i, i % 10 in DROP_EVERY)
                                      for i in range(N_CLIENTS)])


def _wait_idle(http, timeout_s: float = 60, poll_s: float = 0.5) -> dict:
    """Metrics once the engine has nothing running or waiting."""
    deadline = time.monotonic() + timeout_s
    while True:
        fams = _metrics(http)
        running = _sample(fams, "vllm:num_requests_running")
        waiting = _sample(fams, "vllm:num_requests_waiting")
        if running == 0 and waiting == 0:
            return fams
        assert time.monotonic() < deadline, f"gauges stuck: running={running} waiting={waiting}"
        time.sleep(poll_s)


def test_hang_up_aborts_the_request(server, http):
    """A client that hangs up mid-stream stops its request in the engine itself, not only in the
    API server (which forgets the request at once, so its own counters cannot tell).

    The engine's running gauge is its own truth: after the hang-ups it must reach 0 well before
    the engine could have generated the requests' remaining tokens. That time is calibrated in
    the same run by timing full streams, so the check holds on a slow or loaded machine too.
    Few streams, so that the API server keeps pace with the engine (under the 100-stream storm
    below, the engine may finish a request before the API server has even sent its second
    chunk: nothing is left to abort then)."""
    _wait_idle(http)

    async def streams(n: int, drop: bool, max_tokens: int) -> list[dict]:
        async with httpx.AsyncClient(base_url=server.base, timeout=120) as c:
            return await asyncio.gather(*[_stream(c, 1000 + i, drop, drop_after=1,
                                                  max_tokens=max_tokens) for i in range(n)])

    start = _wait_idle(http)
    t0 = time.monotonic()
    full = asyncio.run(streams(HANG_UPS, False, CALIBRATION_TOKENS))
    per_token = (time.monotonic() - t0) / CALIBRATION_TOKENS  # per decode step, 4 streams, end to end
    assert all(r["tokens"] == CALIBRATION_TOKENS for r in full)

    # The baseline counts the calibration requests' own "length" finishes: the gauges can reach
    # 0 before the success counter has them (seen twice in full-suite runs on the loaded
    # machine, where the engine was idle 0.03 s after the hang-ups, yet the counter rose by 4).
    deadline = time.monotonic() + 30
    while True:
        before = _wait_idle(http)
        counted = (_sample(before, "vllm:request_success_total", finished_reason="length")
                   - _sample(start, "vllm:request_success_total", finished_reason="length"))
        if counted >= HANG_UPS:
            break
        assert time.monotonic() < deadline, f"only {counted:.0f} of {HANG_UPS} full streams counted"
        time.sleep(0.2)
    results = asyncio.run(streams(HANG_UPS, True, DROP_MAX_TOKENS))
    t_hang_up = time.monotonic()
    assert all(r["status"] == 200 and r["chunks"] == 1 and r["finish"] is None for r in results)
    fams = _wait_idle(http, poll_s=0.05)
    idle_after = time.monotonic() - t_hang_up
    would_take = per_token * (DROP_MAX_TOKENS - 1)
    print(f"\nengine idle {idle_after:.2f}s after {HANG_UPS} hang-ups; their remaining tokens "
          f"would take it {would_take:.1f}s")
    assert idle_after < would_take / 4, "the engine kept generating for hung-up requests"
    finished = (_sample(fams, "vllm:request_success_total", finished_reason="length")
                - _sample(before, "vllm:request_success_total", finished_reason="length"))
    assert finished == 0, f"{finished:.0f} of {HANG_UPS} hung-up requests ran to max_tokens"


def test_concurrent_streams_with_disconnects(server, http):
    asyncio.run(_storm(server.base))  # warm-up at the same concurrency: buffers, caches
    # The warm-up's hung-up requests are aborted asynchronously: count from when they are gone.
    before = _wait_idle(http)
    rss_before = _tree_rss(server.pid)
    t0 = time.perf_counter()
    results = asyncio.run(_storm(server.base))
    print(f"\n{N_CLIENTS} streams in {time.perf_counter() - t0:.1f}s")

    dropped = [r for i, r in enumerate(results) if i % 10 in DROP_EVERY]
    completed = [r for i, r in enumerate(results) if i % 10 not in DROP_EVERY]
    assert len(dropped) == 30 and len(completed) == 70
    assert all(r["status"] == 200 and r["chunks"] == 2 for r in dropped)
    for r in completed:
        assert r["status"] == 200 and r["done"] and r["finish"] == "length", r
        assert r["tokens"] == N_TOKENS and r["usage"]["completion_tokens"] == N_TOKENS, r

    fams = _wait_idle(http)
    # The 70 finished by length; of the 30 hung-up ones, those the engine finished before the
    # API server delivered their second chunk did too (test_hang_up_aborts_the_request checks
    # the abort itself, without this load). Reported, not asserted: it measures the API
    # server's lag behind the engine on this machine.
    finished = (_sample(fams, "vllm:request_success_total", finished_reason="length")
                - _sample(before, "vllm:request_success_total", finished_reason="length"))
    assert len(completed) <= finished <= N_CLIENTS
    print(f"hung-up requests finished before their hang-up reached the engine: "
          f"{finished - len(completed):.0f} of {len(dropped)}")

    rss_after = _tree_rss(server.pid)
    print(f"server RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB")
    assert rss_after - rss_before <= RSS_TOLERANCE
    assert http.get("/health").status_code == 200


# ---------------------------------------------------------------------------------------------
# SIGTERM: drain in-flight streams, refuse new requests. Stops the server: keep it last.
# ---------------------------------------------------------------------------------------------

DRAIN_TOKENS = 1000  # seconds of decoding: buffered chunks on a loaded machine must not end it
# A closed server: the connection is refused, or (a connection that reached the listening
# socket's backlog as it closed) reset before any response: no request was served either way.
CLOSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)


async def _shutdown_scenario(server) -> tuple[list[dict], list[tuple[float, object]], float]:
    first_chunk = [asyncio.Event() for _ in range(4)]

    async def in_flight(c, i):
        body = {"model": MODEL, "prompt": f"drain {i}", "stream": True, "ignore_eos": True,
                "max_tokens": DRAIN_TOKENS, "return_token_ids": True,
                "stream_options": {"include_usage": True}}
        out = {"tokens": 0, "usage": None, "finish": None, "done": False, "last": None}
        async with c.stream("POST", "/v1/completions", json=body, headers=AUTH) as r:
            out["status"] = r.status_code
            async for data in _sse_data(r):
                out["last"] = time.monotonic()
                if data == "[DONE]":
                    out["done"] = True
                    continue
                chunk = json.loads(data)
                out["usage"] = chunk.get("usage") or out["usage"]
                for ch in chunk.get("choices", []):
                    out["tokens"] += len(ch.get("token_ids") or [])
                    out["finish"] = ch.get("finish_reason") or out["finish"]
                first_chunk[i].set()
        return out

    async def late_requests():
        """A new connection every 0.2 s until one is refused (or 90 s)."""
        seen = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                async with httpx.AsyncClient(base_url=server.base, timeout=30) as c:
                    r = await c.post("/v1/completions", headers=AUTH, json=OK)
                seen.append((time.monotonic(), r))
            except CLOSED as e:
                seen.append((time.monotonic(), e))
                break
            await asyncio.sleep(0.2)
        return seen

    async with httpx.AsyncClient(base_url=server.base, timeout=120) as c:
        streams = [asyncio.create_task(in_flight(c, i)) for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_chunk)), 60)
        t_sig = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        late = asyncio.create_task(late_requests())
        return await asyncio.gather(*streams), await late, t_sig


def test_sigterm_drains_in_flight_and_refuses_new_requests(server):
    streams, late, t_sig = asyncio.run(_shutdown_scenario(server))
    # The signal goes out once all 4 streams have their first chunk; on a loaded machine one of
    # them may finish all its tokens before another's first chunk arrives. It must still be
    # complete; at least one stream must have been in flight across the signal.
    in_flight = [s for s in streams if s["last"] > t_sig]
    print(f"\n{len(in_flight)} of {len(streams)} streams in flight at SIGTERM")
    assert in_flight, "every stream ended before SIGTERM: nothing was in flight"
    for s in streams:
        assert s["status"] == 200 and s["done"] and s["finish"] == "length", s
        assert s["tokens"] == DRAIN_TOKENS and s["usage"]["completion_tokens"] == DRAIN_TOKENS

    refusals_503 = 0
    for _, r in late:
        if isinstance(r, Exception):
            continue
        _assert_openai_error(r, 503)
        assert r.json()["error"]["type"] == "ServiceUnavailableError"
        refusals_503 += 1
    assert isinstance(late[-1][1], CLOSED), "server still accepting after 90 s"
    assert refusals_503 >= 1  # the drain window (engine teardown) is seconds long

    rc = server.proc.wait(timeout=60)
    exit_after = time.monotonic() - t_sig
    print(f"\nexit {rc} {exit_after:.1f}s after SIGTERM; {refusals_503} requests refused with 503")
    assert rc == 0
    assert exit_after < 60
    log = server.log.read_text()
    assert "mode=drain" in log  # `duquant serve`'s default --shutdown-timeout
    assert "cannot schedule new futures" not in log  # vLLM's 500 during drain never happened
    assert not server.records.exists()  # the kernel records are removed with the server
