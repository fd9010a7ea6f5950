"""What one request holds and has tried, kept in `ctx.extras["failover"]` from its slot claim to settle."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from plugins.failover.slots import Entry, make_ticket


def new_ticket(tier: str) -> str:
    """A queue member no other request has."""
    return make_ticket(tier=tier, token=os.urandom(8).hex())


@dataclass(slots=True)
class Attempt:
    """Per-request state in `ctx.extras["failover"]`: what the request holds and what it tried."""

    ticket: str
    # The local upstream whose slot or place in line this request may hold; None once given back.
    upstream: str | None = None
    # The Kuwait day whose cloud count this request took; None when it took none or gave it back.
    cloud_day: str | None = None
    # Failed attempts on the current upstream (tenacity decides from it), and every upstream tried.
    failures: int = 0
    tried: list[str] = field(default_factory=list)
    # Local upstreams that failed this request after receiving it: counted once, when the request settles.
    failed_on: set[str] = field(default_factory=set)
    # The answer to a slot claim the rate limiter ran in `admit` (`resayil_redis_claim`), for `route`.
    claimed: Entry | None = None
