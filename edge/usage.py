"""A request's token usage: read from the upstream's answer, estimated for a cut stream, and bounded by
what the request could use.

An upstream's counts are data from outside: a count that is not a whole number of at least zero, or more
than the request could have used (its prompt bound plus its completion budget), is an anomaly. It is
logged, and the request is charged its bound, never more, so one request can neither cost more than its
hold nor carry a value into a settlement batch that fails the batch for other accounts.
"""

from __future__ import annotations

import logging
from typing import Any

from edge.context import RequestContext, Usage
from edge.request import prompt_estimate

log = logging.getLogger("resayil.usage")
UPSTREAM, ESTIMATED, BOUNDED, NONE = "upstream", "estimated", "bounded", "none"


def _count(value: Any) -> int | None:
    """A token count as the upstream sent it: a whole number of at least zero, or None (an anomaly)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def from_upstream(usage: Any) -> Usage | None:
    """The upstream's `usage` object as a Usage; None when it sent none. Invalid counts become -1, which
    `bounded` turns into the request's bound."""
    if not isinstance(usage, dict):
        return None if usage is None else Usage(-1, -1, UPSTREAM)
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    return Usage(-1 if prompt is None else prompt, -1 if completion is None else completion, UPSTREAM)


def estimate(ctx: RequestContext, completion_chunks: int) -> Usage:
    """Usage for an answer the upstream did not count: the README's rule for cut streams.

    Prompt: ceil(UTF-8 bytes of the prompt text / 4) + 4 per message. Completion: one token per content
    chunk relayed to the client. Nothing relayed means nothing charged.
    """
    if completion_chunks <= 0:
        return Usage()
    return Usage(prompt_estimate(ctx.payload), completion_chunks, ESTIMATED)


def completion_chunks_of(answer: dict[str, Any]) -> int:
    """A whole answer's completion, estimated as for a stream: ceil(UTF-8 bytes of its text / 4)."""
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        text = message.get("content") if isinstance(message, dict) else None
        return -(-len(text.encode()) // 4) if isinstance(text, str) else 0
    return 0


def charge_the_bound(ctx: RequestContext, why: str) -> None:
    """Usage for a whole answer the upstream worked on and never delivered (the client left, or it took
    longer than `timeouts.total_seconds`): nothing counted it, and it may have run all along, so it is charged
    what it could use. Otherwise leaving before the answer would be a way to generate for free."""
    log.warning(why + ": charged its bound", extra={"fields": {"request_id": ctx.request_id}})
    ctx.usage = Usage(ctx.prompt_bound, ctx.completion_budget, BOUNDED)


def bounded(ctx: RequestContext) -> Usage:
    """`ctx.usage` within what the request could use: its prompt bound and its completion budget."""
    usage = ctx.usage
    if usage.source == NONE:
        return usage
    prompt_max, completion_max = ctx.prompt_bound, ctx.completion_budget
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    if 0 <= prompt <= prompt_max and 0 <= completion <= completion_max:
        return usage
    log.warning(
        "upstream usage out of bounds: charged the bound",
        extra={
            "fields": {
                "request_id": ctx.request_id,
                "upstream": ctx.upstream.name if ctx.upstream else None,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "prompt_bound": prompt_max,
                "completion_budget": completion_max,
            }
        },
    )
    return Usage(
        prompt_max if not 0 <= prompt <= prompt_max else prompt,
        completion_max if not 0 <= completion <= completion_max else completion,
        BOUNDED,
    )
