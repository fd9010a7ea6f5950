"""The failure policy: how many tries a failed request gets, and which failures mark an upstream down.

What holds, in one process and across workers and hosts alike (the counts live in the slot store: Redis
when configured, else this process):

- A connection that cannot be opened (refused, no route, no such host, connect timeout) says nothing about
  the request, which never left: it says the upstream is unwell. Such an attempt is tried again up to
  `retry_attempts` in all, and each counts: `down_after_failures` of them with no success in between mark
  the upstream down for `down_cooldown_s`, as they always did.
- Anything an upstream did with a request it received (an error status, a connection dropped after the
  request went out, a timeout) may be the request's own doing: an input that crashes Ollama's model runner
  is answered 500 every time, whoever sends it. Such a request is tried again at most `answer_retries`
  times (one by default: a runner that crashed for another reason is restarted and serves the second try;
  a second failure of the same request is taken to be its input's). Those attempts never count. When the
  request is over, it counts once, for its account, on each local upstream that failed it and did not end
  up serving it; an account counts once however many of its requests fail. The upstream is marked down
  when `down_after_accounts` accounts (at least 2) each had a request fail on it within `down_window_s`,
  with no success in between. So one customer, at any rate and in any burst, never marks an upstream down
  for the others; several accounts failing together still do, as a dead model runner makes them.
- A busy answer (429/503) is retried up to `retry_attempts` (it says the upstream will take the request
  later, nothing about the request) and counts like any other received request's failure.
- A success on the upstream clears both counts; marking it down clears them too.
- A request whose own failure ended it is answered with that failure (502 `upstream_error`), not with the
  503 of an outage: nothing is wrong for anyone else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import aiohttp

from edge.context import RequestContext, Upstream
from edge.errors import UpstreamFailure
from plugins.failover.attempt import Attempt
from plugins.failover.backoff import Backoff
from plugins.failover.slots import SlotStore

if TYPE_CHECKING:
    from plugins.failover import Plugin

Kind = Literal["connect", "busy", "answer"]

# What aiohttp raises when no connection could be opened (ConnectionTimeoutError: the connect timeout only).
_NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, ConnectionRefusedError)


def failure_kind(error: UpstreamFailure) -> Kind:
    """`connect` when the request never reached the upstream, `busy` for its 429/503, else `answer`."""
    if error.code == "upstream_busy":
        return "busy"
    # The edge raises `upstream_unreachable` for every connection error, before or after the request went
    # out, inside the `except` of aiohttp's error: that error, the context, tells the two apart. Without
    # one the failure is taken as the request's, which no customer can turn into a down mark.
    cause = error.__cause__ or error.__context__
    if error.code == "upstream_unreachable" and isinstance(cause, _NOT_CONNECTED):
        return "connect"
    return "answer"


class Health:
    """Applies the policy above to one request's failures, over the plugin's slot store."""

    def __init__(self, *, settings: Plugin.Settings, slots: SlotStore) -> None:
        self.settings = settings
        self.slots = slots
        s = settings
        self.backoff = Backoff(attempts=s.retry_attempts, base_s=s.retry_backoff_s, max_s=s.retry_backoff_max_s)

    async def attempt_failed(self, *, attempt: Attempt, upstream: Upstream, kind: Kind) -> bool:
        """Count a failed attempt; True when it marked the upstream down."""
        if upstream.kind != "local":
            return False
        if kind != "connect":
            attempt.failed_on.add(upstream.name)  # counted once, when the request settles
            return False
        s = self.settings
        return await self.slots.failed(
            upstream=upstream.name, threshold=s.down_after_failures, cooldown_s=s.down_cooldown_s
        )

    def delay(self, *, failures: int, kind: Kind) -> float | None:
        """Seconds to wait before the next attempt after `failures` failed ones, or None: no more."""
        if kind == "answer" and failures > self.settings.answer_retries:
            return None
        return self.backoff.delay(failures=failures)

    async def settled(self, ctx: RequestContext, attempt: Attempt) -> None:
        """Count the request, once, against each local upstream that failed it and did not serve it."""
        failed = set(attempt.failed_on)
        upstream = ctx.upstream
        if upstream is not None and upstream.kind == "local":
            if ctx.outcome == "ok":
                failed.discard(upstream.name)
            elif ctx.outcome == "upstream_timeout":
                failed.add(upstream.name)
        if not failed or ctx.principal is None:
            return
        s = self.settings
        for name in sorted(failed):
            await self.slots.failed_request(
                upstream=name,
                account=str(ctx.principal.account_id),
                threshold=s.down_after_accounts,
                window_s=s.down_window_s,
                cooldown_s=s.down_cooldown_s,
            )
