"""Parse and check what of an OpenAI request body the gateway routes and bills by, and build the body the
upstream gets from what was checked (edge/fieldnames.py says why the raw bytes are never forwarded)."""

from __future__ import annotations

from typing import Any

import orjson

from edge import fieldnames
from edge.context import RequestContext
from edge.errors import BadRequest


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    # orjson reads 1,024 levels deep but writes only 254, and the body is written again to go upstream;
    # a body cannot nest deeper than it has brackets, so only a bracket-heavy one is looked at.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _depth(payload) > MAX_DEPTH:
        raise BadRequest(f"The request body nests more than {MAX_DEPTH} levels deep.", code="invalid_json")
    return payload


MAX_DEPTH = 200
# A completion budget beyond any model's context; larger values are refused, not held.
MAX_COMPLETION_TOKENS = 1_000_000


def _depth(payload: Any) -> int:
    deepest, stack = 0, [(payload, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return deepest


def _model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if model is None:
        raise BadRequest("You must provide a model parameter.", code="missing_required_parameter", param="model")
    if not isinstance(model, str) or not model or len(model) > 200:
        raise BadRequest("`model` must be a non-empty string.", code="invalid_type", param="model")
    return model


def _positive_int(payload: dict[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"`{key}` must be a whole number of at least 1.", code="invalid_type", param=key)
    if value > MAX_COMPLETION_TOKENS:
        raise BadRequest(f"`{key}` must be at most {MAX_COMPLETION_TOKENS:,}.", code="invalid_value", param=key)
    return value


def _flag(obj: dict[str, Any], key: str, param: str) -> bool:
    """A strict boolean: true, false or absent/null (false); `"no"`, 0 or 1 are refused."""
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"`{param}` must be true or false.", code="invalid_type", param=param)
    return bool(value)


def parse_chat(ctx: RequestContext) -> None:
    payload = parse_json_object(ctx.body)
    fieldnames.check_spelling(payload, fieldnames.CHAT)
    ctx.model_name = _model(payload)
    messages = payload.get("messages")
    if messages is None:
        raise BadRequest("You must provide a messages parameter.", code="missing_required_parameter", param="messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty array.", code="invalid_type", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(
                f"`messages[{i}]` must be an object with a string `role`.",
                code="invalid_type",
                param=f"messages[{i}]",
            )
        fieldnames.check_spelling(message, fieldnames.MESSAGE, f"messages[{i}].")
    stream = _flag(payload, "stream", "stream")
    options = payload.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequest("`stream_options` must be an object.", code="invalid_type", param="stream_options")
        fieldnames.check_spelling(options, fieldnames.STREAM_OPTIONS, "stream_options.")
        ctx.include_usage = _flag(options, "include_usage", "stream_options.include_usage")
    n = payload.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        # Every choice would be generated and billed against a hold for one.
        raise BadRequest(
            "Only one choice per request is supported: leave `n` out or set it to 1.",
            code="unsupported_parameter",
            param="n",
        )
    a = _positive_int(payload, "max_completion_tokens")
    b = _positive_int(payload, "max_tokens")
    # Ollama's `_debug_render_only` answers with the model's whole template and system prompt instead of a
    # completion: an operator's tool, not a customer's.
    payload.pop("_debug_render_only", None)
    ctx.payload = payload
    ctx.stream = stream
    ctx.max_tokens = a if a is not None else b


def parse_embeddings(ctx: RequestContext) -> None:
    payload = parse_json_object(ctx.body)
    fieldnames.check_spelling(payload, fieldnames.EMBEDDINGS)
    ctx.model_name = _model(payload)
    given = payload.get("input")
    if given is None:
        raise BadRequest("You must provide an input parameter.", code="missing_required_parameter", param="input")
    ok = isinstance(given, str) or (
        isinstance(given, list) and given and all(isinstance(x, (str, list)) for x in given)
    )
    if not ok:
        raise BadRequest(
            "`input` must be a string or a non-empty array of strings.", code="invalid_type", param="input"
        )
    ctx.payload = payload
    ctx.stream = False
    ctx.max_tokens = 0


def upstream_body(ctx: RequestContext) -> tuple[bytes, bool]:
    """The bytes the upstream gets, and whether the client asked for the usage chunk.

    Always re-serialised from the checked payload: the model is the routed one, the completion budget the
    hold paid for travels as `max_tokens` (the only cap Ollama reads) and as `max_completion_tokens` too when
    the client used it, and a stream always asks for usage (stripped again for a client that did not).
    """
    payload = ctx.payload
    payload["model"] = ctx.upstream_model or ctx.model_name
    if ctx.endpoint == "chat":
        budget = ctx.completion_budget
        payload["max_tokens"] = budget
        if "max_completion_tokens" in payload:
            payload["max_completion_tokens"] = budget
        payload["stream"] = ctx.stream
        if ctx.stream:
            payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        else:
            payload.pop("stream_options", None)
    return orjson.dumps(payload), ctx.include_usage or not ctx.stream


# What the upstream reads as the prompt: every text under these fields (tool definitions and calls, names,
# reasoning and images included), but not the labels `role` and `type`.
_PROMPT_FIELDS = ("messages", "tools", "input", "response_format")
_LABELS = frozenset({"role", "type"})


def prompt_bytes(payload: dict[str, Any]) -> int:
    """UTF-8 bytes of the prompt's text: every string under the prompt's fields; in embeddings' token-id
    arrays each id counts one. Walked without recursion: bodies may nest as deep as the parser allows."""
    total = 0
    stack: list[Any] = [payload.get(name) for name in _PROMPT_FIELDS]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item.encode())
        elif isinstance(item, dict):
            stack.extend(v for k, v in item.items() if k not in _LABELS)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += 1
    return total


def prompt_estimate(payload: dict[str, Any]) -> int:
    """The prompt's tokens as the gateway estimates them when no upstream counted them (the README's rule for
    cut streams, and the rate limiter's token bound): ceil(UTF-8 bytes of its text / 4) + 4 per message."""
    messages = payload.get("messages")
    count = len(messages) if isinstance(messages, list) else 0
    return -(-prompt_bytes(payload) // 4) + 4 * count
