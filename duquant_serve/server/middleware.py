"""ASGI middleware that `duquant serve` adds to vLLM's server (``--middleware``, outermost).

Four gaps of vLLM 0.32's server that it closes, and nothing else:

1. **Every error is OpenAI-shaped.** vLLM's own handlers answer ``{"error": {"message", "type",
   "param", "code"}}``, but a few answers come from elsewhere: the ``--api-key`` check
   (401 ``{"error": "Unauthorized"}``), Starlette's router (404/405 ``{"detail": ...}``) and
   FastAPI's body parser on undecodable bodies (400 ``{"detail": ...}``). An error response
   whose body is not already of that shape is rewritten to it (message kept, ``type`` the HTTP
   reason phrase and ``code`` the status, as vLLM's own HTTPException handler does).
2. **Requests arriving while the server drains are refused cleanly.** On SIGTERM/SIGINT vLLM
   (with ``--shutdown-timeout N > 0``, which `duquant serve` sets) lets in-flight requests
   finish but keeps accepting new ones and answers them 500 "cannot schedule new futures after
   shutdown". From the signal on, this answers every new request except ``/metrics`` with
   503 ``ServiceUnavailableError`` and ``Connection: close``; ``/health`` included, so a load
   balancer stops sending traffic. Once vLLM has drained, it closes its socket (connections
   are then refused).
3. **``--api-key`` guards every route that reaches the model.** vLLM checks the key only under
   ``/v1``, ``/v2``, ``/inference`` and ``/cohere``; ``/invocations`` (SageMaker's alias of
   the completion and chat routes), ``/tokenize``, ``/detokenize``, ``/generative_scoring``,
   ``/scale_elastic_ep`` … answer without it. With a key set (``--api-key`` or
   ``VLLM_API_KEY``), every path outside `PUBLIC_PATHS` (health, metrics, version, API docs)
   needs it here too, with the same 401.
4. **Requests are OpenAI-strict.** Bodies of POST /v1/completions and /v1/chat/completions are
   checked against the OpenAI API (request_schema.py) before vLLM sees them: an undefined
   message role, an unknown content part, an out-of-range value or a misspelt parameter gets
   400 naming the field (``param``) instead of a generation.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import threading
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from .request_schema import CHAT_PATH, COMPLETION_PATH, RequestError, check_request

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DRAIN_EXEMPT = ("/metrics",)  # monitoring may watch the drain
DRAIN_MESSAGE = "The server is shutting down and accepts no new requests; retry on another replica."

# Probes and scrapers that carry no key; everything else needs it once a key is set.
PUBLIC_PATHS = ("/health", "/ping", "/metrics", "/version", "/load", "/openapi.json", "/docs",
                "/redoc")
# What vLLM's own AuthenticationMiddleware already guards (vllm/entrypoints/serve/middleware).
VLLM_GUARDED = ("/v1", "/v2", "/inference", "/cohere")
UNAUTHORIZED = "Unauthorized: missing or wrong API key (send 'Authorization: Bearer <key>')"

_state = {"draining": False}


def draining() -> bool:
    return _state["draining"]


def _chain_shutdown_signals() -> None:
    """Note SIGTERM/SIGINT, then call the handler that was there (vLLM's: the event loop's
    signal hook). Must run after vLLM installed it (serve_http does so before uvicorn's
    lifespan starts) and in the main thread. Where no Python handler is installed, nothing is
    chained: the signal keeps its default effect."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)
        if not callable(prev) or getattr(prev, "duquant_chained", False):
            continue

        def handler(signum: int, frame: Any, prev: Callable[..., Any] = prev) -> None:
            _state["draining"] = True
            prev(signum, frame)

        handler.duquant_chained = True  # type: ignore[attr-defined]
        signal.signal(sig, handler)


def _error_json(status: int, message: str, err_type: str, param: str | None = None) -> bytes:
    """OpenAI's error shape, as vLLM's own handlers write it."""
    return json.dumps({"error": {"message": message, "type": err_type, "param": param,
                                 "code": int(status)}}).encode()


def openai_error_body(status: int, raw: bytes) -> bytes | None:
    """The OpenAI error JSON for an error response body, or None if it already is one."""
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict) and "message" in doc["error"]:
        return None
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if isinstance(doc, dict):
        detail: Any = doc.get("detail") or doc.get("error") or doc.get("message")
    else:
        detail = raw.decode("utf-8", "replace").strip()
    if detail and not isinstance(detail, str):
        detail = json.dumps(detail)
    message = detail or phrase
    if status == HTTPStatus.UNAUTHORIZED and message == "Unauthorized":
        message = UNAUTHORIZED
    return _error_json(status, message, phrase)


async def send_json_error(send: Send, status: int, message: str, err_type: str,
                          extra_headers: list[tuple[bytes, bytes]] | None = None,
                          param: str | None = None) -> None:
    status = int(status)
    body = _error_json(status, message, err_type, param)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _ErrorShaper:
    """`send` wrapper: responses >= 400 are held until their body is complete, then rewritten
    by `openai_error_body` if needed. Others (streams included) pass straight through."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        raw = b"".join(self.chunks)
        body = openai_error_body(self.start["status"], raw)
        start = self.start
        if body is None:
            body = raw
        else:
            keep = [(k, v) for k, v in start.get("headers", [])
                    if k.lower() not in (b"content-length", b"content-type")]
            start = {**start, "headers": [*keep, (b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode())]}
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body})


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


class DuQuantMiddleware:
    """Pure ASGI middleware (vLLM: ``--middleware duquant_serve.server.middleware.DuQuantMiddleware``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._key_hashes: list[bytes] | None = None  # read from vLLM's args on first request

    def _keys(self, scope: Scope) -> list[bytes]:
        if self._key_hashes is None:
            args = getattr(getattr(scope.get("app"), "state", None), "args", None)
            # vLLM's precedence: --api-key, else VLLM_API_KEY.
            keys = list(getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY")])
            self._key_hashes = [hashlib.sha256(k.encode()).digest() for k in keys if k]
        return self._key_hashes

    def _authorized(self, scope: Scope) -> bool:
        hashes = self._keys(scope)
        if not hashes:
            return True
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        # Compare with every key (no early exit): timing does not tell which one matched.
        return sum(secrets.compare_digest(digest, h) for h in hashes) > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            _chain_shutdown_signals()
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if _state["draining"] and not _under(path, DRAIN_EXEMPT):
            await send_json_error(send, HTTPStatus.SERVICE_UNAVAILABLE, DRAIN_MESSAGE,
                                  "ServiceUnavailableError", [(b"connection", b"close")])
            return
        if (scope.get("method") != "OPTIONS" and not _under(path, PUBLIC_PATHS + VLLM_GUARDED)
                and not self._authorized(scope)):
            await send_json_error(send, HTTPStatus.UNAUTHORIZED, UNAUTHORIZED, "Unauthorized")
            return
        if scope.get("method") == "HEAD":  # no body to reshape
            await self.app(scope, receive, send)
            return
        # Authentication first (vLLM's, inside the app, answers 401 to a missing key).
        if (scope.get("method") == "POST" and path in (CHAT_PATH, COMPLETION_PATH)
                and self._authorized(scope)):
            receive = await _checked_body(path, receive, send)
            if receive is None:
                return
        await self.app(scope, receive, _ErrorShaper(send))


async def _checked_body(path: str, receive: Receive, send: Send) -> Receive | None:
    """Read the whole request body and check it (request_schema.check_request). Refused: the
    400 is sent, → None. Otherwise → a `receive` that replays the body, then hands on to the
    client's (so vLLM still sees a disconnect). Undecodable bodies go on to vLLM, which
    already answers them with an OpenAI error."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client left before sending it all
            return _replay([message], receive)
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    try:
        check_request(path, body)
    except RequestError as e:
        await send_json_error(send, HTTPStatus.BAD_REQUEST, str(e), "BadRequestError",
                              param=e.param)
        return None
    return _replay([{"type": "http.request", "body": raw, "more_body": False}], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
