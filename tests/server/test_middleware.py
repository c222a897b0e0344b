"""DuQuantMiddleware on a stub ASGI app (no vLLM): error reshaping, drain refusal, API key on the
routes vLLM leaves open, and the SIGTERM chain. The same behaviour against the real server is in
test_front_door.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from types import SimpleNamespace

import pytest

from duquant_serve.server import middleware as mw


def _stub_app(status: int = 200, chunks: tuple[bytes, ...] = (b"{}",),
              content_type: bytes = b"application/json"):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type), (b"x-kept", b"1")]})
        for i, c in enumerate(chunks):
            await send({"type": "http.response.body", "body": c, "more_body": i < len(chunks) - 1})
    return app


def _call(app, path: str = "/v1/completions", method: str = "POST", headers=(), api_key=None):
    """Run one request through DuQuantMiddleware(app) → (status, headers dict, body bytes)."""
    sent: list[dict] = []
    state = SimpleNamespace(args=SimpleNamespace(api_key=api_key))
    scope = {"type": "http", "path": path, "method": method, "root_path": "",
             "headers": list(headers), "app": SimpleNamespace(state=state)}

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    asyncio.run(mw.DuQuantMiddleware(app)(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


@pytest.fixture(autouse=True)
def _not_draining(monkeypatch):
    monkeypatch.setitem(mw._state, "draining", False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)


@pytest.mark.parametrize("status,raw,message", [
    (404, b'{"detail":"Not Found"}', "Not Found"),
    (405, b'{"detail":"Method Not Allowed"}', "Method Not Allowed"),
    (401, b'{"error":"Unauthorized"}', mw.UNAUTHORIZED),
    (400, b'{"detail":[{"loc":["body"],"msg":"bad"}]}', '[{"loc": ["body"], "msg": "bad"}]'),
    (500, b"Internal Server Error", "Internal Server Error"),
    (502, b"", "Bad Gateway"),
])
def test_error_bodies_become_openai_errors(status, raw, message):
    body = json.loads(mw.openai_error_body(status, raw))
    assert body == {"error": {"message": message, "type": body["error"]["type"], "param": None,
                              "code": status}}
    assert body["error"]["type"]


def test_openai_errors_are_left_alone():
    raw = b'{"error":{"message":"max_tokens must be at least 1","type":"BadRequestError","param":"max_tokens","code":400}}'
    assert mw.openai_error_body(400, raw) is None


def test_middleware_rewrites_error_and_fixes_length():
    status, headers, body = _call(_stub_app(404, (b'{"detail":', b'"Not Found"}')))
    assert status == 404
    assert json.loads(body)["error"]["message"] == "Not Found"
    assert int(headers[b"content-length"]) == len(body)
    assert headers[b"x-kept"] == b"1"  # other headers survive


def test_middleware_passes_success_and_streams_through():
    chunks = (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n")
    status, headers, body = _call(_stub_app(200, chunks, b"text/event-stream"))
    assert (status, body) == (200, b"".join(chunks))
    assert headers[b"content-type"] == b"text/event-stream"


def test_draining_refuses_new_requests_but_not_metrics(monkeypatch):
    monkeypatch.setitem(mw._state, "draining", True)
    for path in ("/v1/completions", "/health", "/v1/duquant"):
        status, headers, body = _call(_stub_app(), path)
        assert status == 503, path
        assert json.loads(body)["error"]["type"] == "ServiceUnavailableError"
        assert headers[b"connection"] == b"close"
    assert _call(_stub_app(), "/metrics", "GET")[0] == 200


@pytest.mark.parametrize("path,authorized_without_key", [
    ("/invocations", False), ("/tokenize", False), ("/scale_elastic_ep", False),
    ("/health", True), ("/metrics", True), ("/ping", True), ("/version", True),
    ("/v1/completions", True),  # left to vLLM's own check
])
def test_api_key_on_routes_vllm_leaves_open(path, authorized_without_key):
    status, _, body = _call(_stub_app(), path, api_key=["sekret"])
    if authorized_without_key:
        assert status == 200
    else:
        assert status == 401
        assert json.loads(body)["error"]["message"] == mw.UNAUTHORIZED
    wrong = _call(_stub_app(), path, headers=[(b"authorization", b"Bearer nope")], api_key=["sekret"])
    assert wrong[0] == status
    right = _call(_stub_app(), path, headers=[(b"authorization", b"Bearer sekret")],
                  api_key=["other", "sekret"])
    assert right[0] == 200


def test_no_key_configured_means_open(monkeypatch):
    assert _call(_stub_app(), "/invocations")[0] == 200
    monkeypatch.setenv("VLLM_API_KEY", "envkey")  # vLLM's fallback when --api-key is absent
    assert _call(_stub_app(), "/invocations")[0] == 401


def test_sigterm_chain_marks_draining_and_calls_previous_handler():
    calls = []
    old = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
    try:
        mw._chain_shutdown_signals()
        mw._chain_shutdown_signals()  # idempotent: chained once
        os.kill(os.getpid(), signal.SIGTERM)
        assert mw.draining()
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_sigterm_default_is_left_alone():
    old = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        mw._chain_shutdown_signals()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, old)
