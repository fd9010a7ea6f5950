"""The failure policy: how many tries a failed request gets, and which failures mark an upstream down.

What holds, in one process and across workers and hosts alike (the counts live in the slot store: Redis
when configured, else this process):

- A connection that cannot be opened (refused, no route, no such host, connect timeout) says nothing about
  the request, which never left: it says the upstream is unwell. Such an attempt is tried again up to
  `retry_attempts` in all, and each counts: `down_after_failures` of them with no success in between mark
  the upstream down for `down_cooldown_seconds`, as they always did.
- Anything an upstream did with a request it received (an error status, a connection dropped after the
  request went out, a timeout) may be the request's own doing: an input that crashes Ollama's model runner
  is answered 500 every time, whoever sends it. Such a request is tried again at most `answer_retries`
  times (one by default: a runner that crashed for another reason is restarted and serves the second try;
  a second failure of the same request is taken to be its input's). Those attempts never count. When the
  request is over, it counts once, for its account, on each local upstream that failed it and did not end
  up serving it; an account counts once however many of its requests fail. When `down_after_accounts`
  accounts (at least 2) each had a request fail on it within `down_window_seconds`, with no success in between,
  one worker (a lease in the store makes it one) probes the upstream (`probe.py`): the gateway's own
  one-token request to the same model, first in line for a slot. Served, the failures were the requests'
  own and the count starts again; failed, refused or not answered within `probe_timeout_seconds`, the upstream is
  marked down. So no customer, nor several accounts of one attacker, at any rate and in any burst, marks
  an upstream down for the others with inputs of their own; a dead or hung model runner still is.
  A line that stays full for `probe_timeout_seconds` gives no verdict: something is being served. A probe takes
  at most twice `probe_timeout_seconds` (its slot, then its answer), so it never holds up a shutdown for long.
- A busy answer (429/503) is retried up to `retry_attempts` (it says the upstream will take the request
  later, nothing about the request) and counts like any other received request's failure.
- A success on the upstream clears both counts; marking it down clears them too.
- A request whose own failure ended it is answered with that failure (502 `upstream_error`), not with the
  503 of an outage: nothing is wrong for anyone else.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from redis.exceptions import RedisError

from edge.context import Model, RequestContext, Upstream
from edge.errors import UpstreamFailure
from plugins.failover.attempt import Attempt, new_ticket
from plugins.failover.backoff import Backoff
from plugins.failover.probe import answers
from plugins.failover.slots import SlotStore

if TYPE_CHECKING:
    from edge.gateway import Gateway
    from plugins.failover import Plugin

log = logging.getLogger("resayil.failover")

Kind = Literal["connect", "busy", "answer"]


def failure_kind(error: UpstreamFailure) -> Kind:
    """`connect` when the request never reached the upstream, `busy` for its 429/503, else `answer`."""
    if error.code == "upstream_busy":
        return "busy"
    # Only a connection that could not be opened is the upstream's alone: anything after the request went
    # out may be its input's doing, which no customer can be allowed to turn into a down mark.
    if not error.reached:
        return "connect"
    return "answer"


class Health:
    """Applies the policy above to one request's failures, over the plugin's slot store."""

    def __init__(self, *, settings: Plugin.Settings, slots: SlotStore, gateway: Gateway) -> None:
        self.settings = settings
        self.slots = slots
        self.gateway = gateway
        s = settings
        self.backoff = Backoff(
            attempts=s.retry_attempts, base_s=s.retry_backoff_seconds, max_s=s.retry_backoff_max_seconds
        )
        # The probe goes first in line: ahead of every tier.
        self.probe_priority = max((tier.priority for tier in gateway.config.tiers.values()), default=0) + 1
        # How long a probe may be under way (a wait for a slot, then up to two answers) before another may start.
        self.probe_lease_s = 3 * s.probe_timeout_seconds + 5
        # Per worker, the model each local upstream last served: the probe's second opinion.
        self.last_served: dict[str, Model] = {}

    async def attempt_failed(self, *, attempt: Attempt, upstream: Upstream, kind: Kind) -> bool:
        """Count a failed attempt; True when it marked the upstream down."""
        if upstream.kind != "local":
            return False
        if kind != "connect":
            attempt.failed_on.add(upstream.name)  # counted once, when the request settles
            return False
        s = self.settings
        return await self.slots.failed(
            upstream=upstream.name, threshold=s.down_after_failures, cooldown_s=s.down_cooldown_seconds
        )

    def delay(self, *, failures: int, kind: Kind) -> float | None:
        """Seconds to wait before the next attempt after `failures` failed ones, or None: no more."""
        if kind == "answer" and failures > self.settings.answer_retries:
            return None
        return self.backoff.delay(failures=failures)

    async def settled(self, ctx: RequestContext, attempt: Attempt) -> None:
        """Count the request, once, against each local upstream that failed it and did not serve it."""
        if not attempt.failed_on and ctx.outcome != "upstream_timeout":
            if ctx.outcome == "ok" and ctx.model is not None and ctx.model.upstream.kind == "local":
                self.last_served[ctx.model.upstream.name] = ctx.model
            return  # the usual case, on every request: nothing to count
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
            probe = await self.slots.failed_request(
                upstream=name,
                account=str(ctx.principal.account_id),
                threshold=s.down_after_accounts,
                window_s=s.down_window_seconds,
                probe_s=self.probe_lease_s,
            )
            model = self._probe_model(name, ctx.model)
            if probe and model is not None:
                self.gateway.spawn(self.probe(model))
            elif probe:
                await self.slots.probed(upstream=name, healthy=True, cooldown_s=s.down_cooldown_seconds)

    def _probe_model(self, upstream: str, asked: Model | None) -> Model | None:
        """The model the failing request asked for, when it runs there; else any model of that upstream."""
        if asked is not None and asked.upstream.name == upstream:
            return asked
        return next((m for m in self.gateway.models.values() if m.upstream.name == upstream), None)

    async def probe(self, model: Model) -> None:
        """Probe the model's upstream with a slot of its own, then report: healthy, or marked down."""
        s, name = self.settings, model.upstream.name
        ticket = new_ticket("probe")
        healthy = True  # no slot within the longest wait: the line is being served, no verdict
        try:
            try:
                entry = await self.slots.enter(
                    upstream=name, ticket=ticket, priority=self.probe_priority, spill_depth=None
                )
                if entry.state == "queued":
                    entry = await self.slots.wait(upstream=name, ticket=ticket, max_wait_s=s.probe_timeout_seconds)
                if entry.state == "acquired":
                    healthy = await answers(
                        session=self.gateway.session, model=model, timeout_s=s.probe_timeout_seconds, request_id=ticket
                    )
                    # The failing requests chose the model (perhaps a large one that is slow to load, or one
                    # that is broken): the upstream is down only if a model it served lately fails too.
                    served = self.last_served.get(name)
                    if not healthy and served is not None and served is not model:
                        model = served
                        healthy = await answers(
                            session=self.gateway.session,
                            model=served,
                            timeout_s=s.probe_timeout_seconds,
                            request_id=ticket,
                        )
            finally:
                await self.slots.release(upstream=name, ticket=ticket, healthy=healthy)
            down = await self.slots.probed(upstream=name, healthy=healthy, cooldown_s=s.down_cooldown_seconds)
        except RedisError as exc:  # the probe's lease runs out and the next failing request probes again
            log.warning("failover probe could not report", extra={"fields": {"error": type(exc).__name__}})
            return
        fields = {"upstream": name, "model": model.name, "accounts": s.down_after_accounts}
        if down:
            log.warning(
                "upstream marked down: several accounts' requests failed and so did the probe", extra={"fields": fields}
            )
        else:
            log.info("failed requests were their own: the probe was served", extra={"fields": fields})
