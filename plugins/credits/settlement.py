"""What `settle` makes of a request's hold: the charge, bounded by what the hold was taken for, and the
usage row that records it.

Whatever usage the upstream (or a plugin) reported, a request is charged at most (its prompt bound + its
completion budget) x the route's multiplier; a count that is not a non-negative integer charges that bound.
Either case is logged as an anomaly with the raw counts, and the usage row records the counts charged and
the HTTP status the client got.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from edge.context import RequestContext
from plugins.credits import pricing

if TYPE_CHECKING:
    from plugins.credits.leases import Ticket

log = logging.getLogger("resayil.credits")


@dataclass(frozen=True, slots=True)
class Hold:
    """What `reserve` took for one request (kept in ctx.extras["credits"] until `settle`)."""

    id: str
    account_id: int
    amount_milli: int
    multiplier: int
    completion_budget: int
    # The prompt's bound the hold was taken for (pricing.prompt_bound).
    prompt_bound: int
    # Taken from this worker's lease on the account (its id is then the charge's own), else a hold row.
    ticket: Ticket | None = None
    # Counted against spend scopes (a limited key or member): settling charges them too.
    scoped: bool = False


def bill(ctx: RequestContext, hold: Hold, *, day: date) -> tuple[int, dict[str, Any]]:
    """(milli-credits to charge, the usage row) for a settled request."""
    billed = pricing.bill(
        ctx.usage,
        prompt_bound=hold.prompt_bound,
        completion_budget=hold.completion_budget,
        multiplier=ctx.multiplier,
    )
    if billed.out_of_bounds:
        log.warning(
            "usage out of bounds: charged at most the request's bound",
            extra={
                "fields": {
                    "request_id": ctx.request_id,
                    "account": hold.account_id,
                    # repr: a count may be anything, and an integer past 64 bits is not JSON to every reader.
                    "prompt_tokens": repr(ctx.usage.prompt_tokens)[:40],
                    "completion_tokens": repr(ctx.usage.completion_tokens)[:40],
                    "charged_prompt_tokens": billed.prompt_tokens,
                    "charged_completion_tokens": billed.completion_tokens,
                }
            },
        )
    row = usage_row(ctx, prompt_tokens=billed.prompt_tokens, completion_tokens=billed.completion_tokens, day=day)
    return billed.milli, row


def usage_row(ctx: RequestContext, *, prompt_tokens: int, completion_tokens: int, day: date) -> dict[str, Any]:
    """The request's usage row, with the counts charged and the status the client got (ctx.status)."""
    principal = ctx.principal
    finished = ctx.finished_at or time.perf_counter()
    return {
        "request_id": ctx.request_id[:128],
        "user_id": principal.user_id if principal else None,
        "key_id": principal.key_id if principal else None,
        "model": (ctx.model_name or "")[:200],
        "endpoint": ctx.endpoint[:32],
        "route": ctx.route[:16] if ctx.upstream is not None else "none",
        "upstream": ctx.upstream.name[:64] if ctx.upstream is not None else None,
        "stream": ctx.stream,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "usage_source": ctx.usage.source,
        "multiplier": ctx.multiplier,
        "status": ctx.status,
        "outcome": ctx.outcome[:32],
        "latency_ms": int((finished - ctx.started) * 1000),
        "ttft_ms": int((ctx.first_byte_at - ctx.started) * 1000) if ctx.first_byte_at else None,
        "day": day,
    }
