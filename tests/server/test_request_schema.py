"""OpenAI-strict request checks (request_schema.py): each kind the OpenAI API rejects is refused
with the field named; what OpenAI clients and vLLM's own extras send passes. The same checks
against the real server: test_front_door.py (MALFORMED)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from duquant_serve.server import middleware as mw
from duquant_serve.server.request_schema import (
    CHAT_PATH,
    COMPLETION_PATH,
    RequestError,
    check_request,
)

USER = [{"role": "user", "content": "hi"}]


def chat(**kw):
    return {"model": "m", "messages": USER, **kw}


def completion(**kw):
    return {"model": "m", "prompt": "hi", **kw}


REJECTED = [
    # (id, path, body, param named in the error)
    ("unknown_role", CHAT_PATH, chat(messages=[{"role": "wizard", "content": "hi"}]),
     "messages[0].role"),
    ("role_not_a_string", CHAT_PATH, chat(messages=[{"role": 3, "content": "hi"}]),
     "messages[0].role"),
    ("message_not_an_object", CHAT_PATH, chat(messages=["hi"]), "messages[0]"),
    ("unknown_content_part", CHAT_PATH,
     chat(messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}]),
     "messages[0].content[0].type"),
    ("image_part_in_system", CHAT_PATH,
     chat(messages=[{"role": "system", "content": [
         {"type": "image_url", "image_url": {"url": "x"}}]}]), "messages[0].content[0].type"),
    ("text_part_without_text", CHAT_PATH,
     chat(messages=[{"role": "user", "content": [{"type": "text"}]}]),
     "messages[0].content[0].text"),
    ("part_without_type", CHAT_PATH,
     chat(messages=[{"role": "user", "content": [{"text": "hi"}]}]), "messages[0].content[0]"),
    ("content_wrong_type", CHAT_PATH, chat(messages=[{"role": "user", "content": {"a": 1}}]),
     "messages[0].content"),
    ("user_content_null", CHAT_PATH, chat(messages=[{"role": "user", "content": None}]),
     "messages[0].content"),
    ("name_not_a_string", CHAT_PATH, chat(messages=[{"role": "user", "content": "x", "name": 1}]),
     "messages[0].name"),
    ("tool_without_tool_call_id", CHAT_PATH, chat(messages=[{"role": "tool", "content": "4"}]),
     "messages[0].tool_call_id"),
    ("bad_assistant_tool_call", CHAT_PATH,
     chat(messages=[{"role": "assistant", "tool_calls": [{"id": "1", "type": "function"}]}]),
     "messages[0].tool_calls[0]"),
    ("function_without_name", CHAT_PATH, chat(messages=[{"role": "function", "content": "x"}]),
     "messages[0].name"),
    ("empty_messages", CHAT_PATH, chat(messages=[]), "messages"),
    ("missing_model", CHAT_PATH, {"messages": USER}, "model"),
    ("model_not_a_string", COMPLETION_PATH, completion(model=5), "model"),
    ("misspelt_parameter", COMPLETION_PATH, completion(max_token=5), "max_token"),
    ("temperature_above_2", COMPLETION_PATH, completion(temperature=2.5), "temperature"),
    ("temperature_bool", CHAT_PATH, chat(temperature=True), "temperature"),
    ("top_p_negative", CHAT_PATH, chat(top_p=-0.1), "top_p"),
    ("presence_penalty_above_2", CHAT_PATH, chat(presence_penalty=2.5), "presence_penalty"),
    ("frequency_penalty_string", COMPLETION_PATH, completion(frequency_penalty="1"),
     "frequency_penalty"),
    ("n_above_128", CHAT_PATH, chat(n=129), "n"),
    ("five_stop_sequences", COMPLETION_PATH, completion(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("stream_not_bool", COMPLETION_PATH, completion(stream="yes"), "stream"),
    ("stream_options_usage_not_bool", CHAT_PATH,
     chat(stream=True, stream_options={"include_usage": "yes"}), "stream_options"),
    ("completion_logprobs_above_5", COMPLETION_PATH, completion(logprobs=6), "logprobs"),
    ("chat_logprobs_integer", CHAT_PATH, chat(logprobs=3), "logprobs"),
    ("top_logprobs_without_logprobs", CHAT_PATH, chat(top_logprobs=2), "top_logprobs"),
    ("logit_bias_above_100", COMPLETION_PATH, completion(logit_bias={"5": 101}), "logit_bias"),
    ("user_not_a_string", CHAT_PATH, chat(user=42), "user"),
    ("prompt_empty_list", COMPLETION_PATH, completion(prompt=[]), "prompt"),
    ("prompt_mixed_list", COMPLETION_PATH, completion(prompt=["a", 1]), "prompt"),
    ("missing_prompt", COMPLETION_PATH, {"model": "m"}, "prompt"),
    ("echo_not_bool", COMPLETION_PATH, completion(echo=1), "echo"),
    ("best_of_zero", COMPLETION_PATH, completion(best_of=0), "best_of"),
    ("tool_type_not_function", CHAT_PATH,
     chat(tools=[{"type": "code", "function": {"name": "f"}}]), "tools[0]"),
    ("tool_name_with_space", CHAT_PATH,
     chat(tools=[{"type": "function", "function": {"name": "my tool"}}]),
     "tools[0].function.name"),
    ("tool_choice_unknown", CHAT_PATH, chat(tool_choice="always"), "tool_choice"),
]


@pytest.mark.parametrize("path,body,param", [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_rejected_with_the_field_named(path, body, param):
    with pytest.raises(RequestError) as e:
        check_request(path, body)
    assert e.value.param == param
    assert param.split("[")[0].split(".")[0] in str(e.value)


ACCEPTED = [
    ("plain_chat", CHAT_PATH, chat()),
    ("every_role", CHAT_PATH, chat(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "really"}]},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "function", "name": "f", "content": None},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}])),
    ("sampling_at_limits", CHAT_PATH, chat(temperature=2, top_p=0, n=128, presence_penalty=-2,
                                           frequency_penalty=2, seed=-1, stop=["a", "b", "c", "d"],
                                           logprobs=True, top_logprobs=20,
                                           logit_bias={"5": -100}, max_completion_tokens=8,
                                           stream=True, stream_options={"include_usage": True},
                                           user="u", tool_choice="auto", parallel_tool_calls=False)),
    ("nulls_are_defaults", COMPLETION_PATH, completion(temperature=None, stop=None, n=None,
                                                       logprobs=None, suffix=None)),
    ("vllm_extras", COMPLETION_PATH, completion(top_k=5, min_p=0.1, ignore_eos=True,
                                                return_token_ids=True, prompt_logprobs=0,
                                                repetition_penalty=1.1, logprobs=5, echo=True)),
    ("openai_fields_vllm_ignores", CHAT_PATH, chat(store=False, metadata={"a": "b"},
                                                   service_tier="auto")),
    ("token_prompts", COMPLETION_PATH, completion(prompt=[[1, 2], [3]])),
    ("tools", CHAT_PATH, chat(tools=[{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})),
    ("not_an_object_is_vllms_to_answer", COMPLETION_PATH, [1, 2]),
]


@pytest.mark.parametrize("path,body", [r[1:] for r in ACCEPTED], ids=[r[0] for r in ACCEPTED])
def test_accepted(path, body):
    check_request(path, body)


def _through_middleware(path: str, body: bytes, chunks: int = 1):
    """POST `body` (in `chunks` pieces) through the middleware to an app that echoes what it
    read → (status, response JSON, app called)."""
    seen: dict = {}

    async def app(scope, receive, send):
        parts, more = [], True
        while more:
            m = await receive()
            parts.append(m.get("body", b""))
            more = m.get("more_body", False)
        seen["body"] = b"".join(parts)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    size = -(-len(body) // chunks)
    pieces = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    queue = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
             for i, p in enumerate(pieces)]
    sent: list[dict] = []

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST", "root_path": "", "headers": [],
             "app": SimpleNamespace(state=SimpleNamespace(args=SimpleNamespace(api_key=None)))}
    asyncio.run(mw.DuQuantMiddleware(app)(scope, receive, send))
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:])), seen


def test_middleware_refuses_before_the_app(monkeypatch):
    monkeypatch.setitem(mw._state, "draining", False)
    body = json.dumps(chat(messages=[{"role": "wizard", "content": "hi"}])).encode()
    status, doc, seen = _through_middleware(CHAT_PATH, body)
    assert status == 400 and not seen
    assert doc["error"]["param"] == "messages[0].role" and doc["error"]["code"] == 400


def test_middleware_replays_an_accepted_body_intact(monkeypatch):
    monkeypatch.setitem(mw._state, "draining", False)
    body = json.dumps(completion(prompt="x" * 5000, top_k=3)).encode()
    status, doc, seen = _through_middleware(COMPLETION_PATH, body, chunks=7)
    assert status == 200 and doc == {"ok": True}
    assert seen["body"] == body


def test_middleware_leaves_undecodable_bodies_to_vllm(monkeypatch):
    monkeypatch.setitem(mw._state, "draining", False)
    status, _, seen = _through_middleware(COMPLETION_PATH, b'{"model": ')
    assert status == 200 and seen["body"] == b'{"model": '
