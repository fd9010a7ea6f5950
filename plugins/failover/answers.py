"""What a client sees of failover: the route header and the 503s, as pure functions.

What stays true: every refusal here is a `ServiceUnavailable` with a `retry-after` header (the edge's one
renderer writes its body), and a Redis failure is a 503 `queue_unavailable`, never a 500.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

from redis.exceptions import RedisError

from edge.errors import ServiceUnavailable
from plugins.failover.budget import CloudBudget
from plugins.failover.slots import Entry

log = logging.getLogger("resayil.failover")
ROUTE_HEADER = "x-resayil-route"


@contextlib.contextmanager
def shared_state() -> Iterator[None]:
    """Redis out of reach: a clear 503 instead of a 500; leases free whatever was half taken."""
    try:
        yield
    except RedisError as exc:
        log.warning("failover cannot reach Redis", extra={"fields": {"error": type(exc).__name__}})
        raise ServiceUnavailable(
            "The gateway cannot reach its shared request queue right now; please try again shortly.",
            code="queue_unavailable",
            headers={"retry-after": "5"},
        ) from None


def queue_timeout() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Every local model slot stayed busy for the longest wait allowed; please try again shortly.",
        code="queue_timeout",
        headers={"retry-after": "5"},
    )


def unavailable(entry: Entry) -> ServiceUnavailable:
    wait = max(1, math.ceil(entry.retry_after_s))
    return ServiceUnavailable(
        f"The local model server is not answering right now; please try again in {wait} seconds.",
        code="upstream_unavailable",
        headers={"retry-after": str(wait)},
    )


def budget_exhausted(budget: CloudBudget) -> ServiceUnavailable:
    wait = budget.seconds_to_midnight()
    return ServiceUnavailable(
        f"Today's cloud model capacity ({budget.cap} requests) is used up. It renews at midnight "
        f"Kuwait time, in about {max(1, round(wait / 3600))} hours; local models remain available.",
        code="cloud_budget_exhausted",
        headers={"retry-after": str(wait), "x-should-retry": "false"},
    )
