"""OpenAI-strict checks of /v1/completions and /v1/chat/completions request bodies.

vLLM validates most fields, but accepts some bodies the OpenAI API answers 400: a message role
the API does not define (vLLM then renders it into the prompt and generates until the context
limit), content parts of unknown types, out-of-range sampling values (temperature 5, more than
4 stop sequences, completion logprobs above 5), misspelt parameters (silently ignored). These
checks follow the OpenAI API reference for the fields it defines; vLLM's own extra fields
(top_k, ignore_eos, return_token_ids, …: every field of vLLM's request models) stay accepted
and are left to vLLM. `check_request` raises RequestError naming the field (`param`).
"""

from __future__ import annotations

import functools
import re
from typing import Any

CHAT_PATH, COMPLETION_PATH = "/v1/chat/completions", "/v1/completions"

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# Content part types each role may send (OpenAI chat API).
PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

# Parameters the OpenAI API defines (beyond the checked ones) that vLLM's request models lack;
# accepted and left to vLLM, which ignores them.
OPENAI_ONLY = {
    CHAT_PATH: ("audio", "function_call", "functions", "metadata", "modalities", "prediction",
                "prompt_cache_key", "safety_identifier", "service_tier", "store", "verbosity",
                "web_search_options"),
    COMPLETION_PATH: ("best_of",),
}


class RequestError(ValueError):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(lo: float, hi: float):
    def rule(v: Any) -> str | None:
        if not _is_num(v) or not lo <= v <= hi:
            return f"must be a number between {lo:g} and {hi:g}"
        return None
    return rule


def _integer(lo: int, hi: int | None = None):
    def rule(v: Any) -> str | None:
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            return f"must be an integer >= {lo}" + ("" if hi is None else f" and <= {hi}")
        return None
    return rule


def _of_type(kind: type, name: str):
    def rule(v: Any) -> str | None:
        return None if isinstance(v, kind) else f"must be {name}"
    return rule


def _stop(v: Any) -> str | None:
    if isinstance(v, str):
        return None
    if isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v):
        return None
    return "must be a string or a list of at most 4 strings"


def _logit_bias(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "must be an object mapping token ids to biases"
    for k, b in v.items():
        if not re.fullmatch(r"\d+", str(k)):
            return f"key {k!r} is not a token id"
        if not _is_num(b) or not -100 <= b <= 100:
            return f"bias of token {k} must be a number between -100 and 100"
    return None


def _stream_options(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "must be an object"
    for key in ("include_usage", "continuous_usage_stats"):
        if key in v and not isinstance(v[key], bool):
            return f"field {key!r} must be a boolean"
    return None


def _prompt(v: Any) -> str | None:
    if isinstance(v, str):
        return None
    if isinstance(v, list) and v:
        if all(isinstance(p, str) for p in v) or all(_is_int(t) for t in v):
            return None
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in v):
            return None
    return ("must be a string, a list of strings, a list of token ids or a list of lists of "
            "token ids (none empty)")


COMMON = {
    "model": _of_type(str, "a string"),
    "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2),
    "logit_bias": _logit_bias,
    "max_tokens": _integer(0),
    "n": _integer(1, 128),
    "seed": _integer(-(2**63), 2**64 - 1),
    "stop": _stop,
    "stream": _of_type(bool, "a boolean"),
    "stream_options": _stream_options,
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "user": _of_type(str, "a string"),
}
COMPLETION = {
    "prompt": _prompt,
    "best_of": _integer(1, 20),
    "echo": _of_type(bool, "a boolean"),
    "logprobs": _integer(0, 5),
    "suffix": _of_type(str, "a string"),
}
CHAT = {
    "logprobs": _of_type(bool, "a boolean"),
    "top_logprobs": _integer(0, 20),
    "max_completion_tokens": _integer(0),
    "parallel_tool_calls": _of_type(bool, "a boolean"),
    "reasoning_effort": _of_type(str, "a string"),
}


def _check_fields(body: dict, rules: dict) -> None:
    for name, rule in rules.items():
        v = body.get(name)
        if v is None:  # absent or null: the default
            continue
        if (why := rule(v)) is not None:
            raise RequestError(f"'{name}' {why}, got {v!r:.80}", name)


def _check_parts(parts: list, role: str, where: str) -> None:
    allowed = PART_TYPES[role]
    for j, part in enumerate(parts):
        p = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RequestError(f"'{p}' must be an object with a string 'type'", p)
        kind = part["type"]
        if kind not in allowed:
            raise RequestError(f"'{p}.type' {kind!r} is not a content part type of role "
                               f"{role!r} (expected one of {', '.join(allowed)})", f"{p}.type")
        field = {"text": "text", "refusal": "refusal"}.get(kind)
        if field and not isinstance(part.get(field), str):
            raise RequestError(f"'{p}.{field}' must be a string", f"{p}.{field}")
        if kind == "image_url":
            url = part.get("image_url")
            if not isinstance(url, dict) or not isinstance(url.get("url"), str):
                raise RequestError(f"'{p}.image_url' must be an object with a string 'url'",
                                   f"{p}.image_url")


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise RequestError(f"'{where}' must be a list", where)
    for j, call in enumerate(calls):
        p = f"{where}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(call, dict) or not isinstance(call.get("id"), str)
                or call.get("type") != "function" or not isinstance(fn, dict)
                or not isinstance(fn.get("name"), str)
                or not isinstance(fn.get("arguments"), str)):
            raise RequestError(f"'{p}' must be {{'id': str, 'type': 'function', 'function': "
                               "{'name': str, 'arguments': str}}", p)


def _check_message(m: Any, i: int) -> None:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise RequestError(f"'{where}' must be an object", where)
    role = m.get("role")
    if role not in ROLES:
        raise RequestError(f"'{where}.role' {role!r} is not a message role (expected one of "
                           f"{', '.join(ROLES)})", f"{where}.role")
    if "name" in m and not isinstance(m["name"], str):
        raise RequestError(f"'{where}.name' must be a string", f"{where}.name")
    content = m.get("content")
    if role == "function":
        if not isinstance(m.get("name"), str):
            raise RequestError(f"'{where}.name' is required for role 'function'", f"{where}.name")
        if content is not None and not isinstance(content, str):
            raise RequestError(f"'{where}.content' must be a string or null", f"{where}.content")
        return
    if role == "tool" and not isinstance(m.get("tool_call_id"), str):
        raise RequestError(f"'{where}.tool_call_id' (a string) is required for role 'tool'",
                           f"{where}.tool_call_id")
    if role == "assistant":
        if "tool_calls" in m and m["tool_calls"] is not None:
            _check_tool_calls(m["tool_calls"], f"{where}.tool_calls")
        if content is None:
            return  # a turn that only called tools (or was refused) has no content
    if isinstance(content, str):
        return
    if isinstance(content, list):
        _check_parts(content, role, f"{where}.content")
        return
    raise RequestError(f"'{where}.content' must be a string or a list of content parts",
                       f"{where}.content")


def _check_tools(body: dict) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise RequestError("'tools' must be a list", "tools")
        for j, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
                raise RequestError(f"'tools[{j}]' must be {{'type': 'function', 'function': "
                                   "{...}}", f"tools[{j}]")
            if not isinstance(fn.get("name"), str) or not TOOL_NAME.match(fn["name"]):
                raise RequestError(f"'tools[{j}].function.name' must match ^[a-zA-Z0-9_-]{{1,64}}$",
                                   f"tools[{j}].function.name")
            if "parameters" in fn and not isinstance(fn["parameters"], dict):
                raise RequestError(f"'tools[{j}].function.parameters' must be an object",
                                   f"tools[{j}].function.parameters")
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        return
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function"
            and isinstance(fn, dict) and isinstance(fn.get("name"), str)):
        raise RequestError("'tool_choice' must be 'none', 'auto', 'required' or "
                           "{'type': 'function', 'function': {'name': str}}", "tool_choice")


@functools.cache
def known_fields(path: str) -> frozenset[str]:
    """Every parameter accepted at `path`: vLLM's request model fields and the OpenAI ones it
    lacks."""
    if path == CHAT_PATH:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as R
    else:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest as R
    return frozenset(R.model_fields) | frozenset(OPENAI_ONLY[path])


def check_request(path: str, body: Any, fields: frozenset[str] | None = None) -> None:
    """Raise RequestError if `body` (decoded JSON) is a request the OpenAI API rejects at
    `path`. Bodies that are not objects are left to vLLM (it answers them 400 already).
    `fields`: the accepted parameter names (default: known_fields(path))."""
    if not isinstance(body, dict):
        return
    fields = known_fields(path) if fields is None else fields
    unknown = sorted(k for k in body if k not in fields)
    if unknown:
        raise RequestError(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    if "model" not in body:
        raise RequestError("'model' is required", "model")
    _check_fields(body, COMMON)
    if path == COMPLETION_PATH:
        if body.get("prompt") is None and body.get("prompt_embeds") is None:
            raise RequestError("'prompt' is required", "prompt")
        _check_fields(body, COMPLETION)
        return
    _check_fields(body, CHAT)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        _check_message(m, i)
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    _check_tools(body)
