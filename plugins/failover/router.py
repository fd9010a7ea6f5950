"""How one request gets its upstream: a local slot in tier-priority order, or the cloud within the cap.

What stays true, for every request however it ends (answered, refused, cancelled, failed):

- it holds at most one local slot or place in line at a time (`Attempt.upstream`), and settle gives it
  back exactly once; set before the slot is asked for, so a request cancelled mid-call still gives back
  what it got;
- it counts once against the daily cloud cap however many attempts it takes (`Attempt.cloud_day`), and a
  cloud request that failed before any output gives its count back;
- it spills to the cloud only to its model's YAML fallback, only when that is a cloud model with an API
  key and the caller's tier allows cloud;
- a Redis failure on the way is a 503 (`answers.shared_state`), never a 500.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from edge.claims import RedisClaim
from edge.context import Model, RequestContext, Upstream
from edge.errors import UpstreamFailure
from plugins.failover import answers
from plugins.failover.attempt import Attempt, new_ticket
from plugins.failover.budget import CloudBudget
from plugins.failover.health import Health, Kind, failure_kind
from plugins.failover.redis_slots import CLAIM_LUA, RedisSlots
from plugins.failover.slots import Entry, SlotStore

if TYPE_CHECKING:
    from edge.gateway import Gateway
    from plugins.failover import Plugin

log = logging.getLogger("resayil.failover")


def usable_fallback(gateway: Gateway, model: Model) -> Model | None:
    """The model's YAML fallback when it runs on a cloud upstream that has a key (one without a key is not
    in use, as /readyz says)."""
    fallback = gateway.models.get(model.settings.fallback or "")
    if fallback is None or fallback.upstream.kind != "cloud" or not fallback.upstream.settings.api_key:
        return None
    return fallback


def usable_fallbacks(gateway: Gateway) -> dict[str, Model]:
    """Computed once: the cloud model each local model may spill to, if any is usable."""
    fallbacks = {name: fb for name, model in gateway.models.items() if (fb := usable_fallback(gateway, model))}
    for name, model in gateway.models.items():
        if model.settings.fallback and name not in fallbacks:
            log.warning(
                "model %s never spills: its fallback %s is not a cloud model with an API key",
                name,
                model.settings.fallback,
            )
    return fallbacks


class Router:
    """The plugin's request-path decisions over its slot store, cloud budget and failure policy."""

    def __init__(
        self,
        *,
        gateway: Gateway,
        settings: Plugin.Settings,
        slots: SlotStore,
        budget: CloudBudget,
        health: Health,
        fallbacks: dict[str, Model],
    ) -> None:
        self.gateway = gateway
        self.settings = settings
        self.slots = slots
        self.budget = budget
        self.health = health
        self.fallbacks = fallbacks

    def claim(self, ctx: RequestContext) -> RedisClaim | None:
        """A local model's slot or place in line, to be taken in the rate limiter's script."""
        model, principal = ctx.model, ctx.principal
        if not isinstance(self.slots, RedisSlots) or model is None or principal is None:
            return None
        if model.upstream.kind != "local" or ctx.upstream is not None:
            return None
        attempt = self._attempt(ctx)
        upstream, priority = model.upstream.name, self._priority(ctx)
        keys, args = self.slots.enter_call(
            upstream=upstream,
            ticket=attempt.ticket,
            priority=priority,
            spill_depth=self._spill_depth(self._fallback(ctx)),
        )
        slots = self.slots

        def accept(reply: list[Any]) -> None:
            entry = slots.entered(upstream=upstream, ticket=attempt.ticket, priority=priority, reply=reply)
            attempt.claimed = entry
            # Held or in line from now on: settle gives it back, even when the credits hold refuses.
            attempt.upstream = upstream if entry.state in ("acquired", "queued") else None

        def abandon() -> None:
            # Whether the claim ran is unknown: give its ticket back, and let `route` ask again with a new one.
            self.gateway.spawn(slots.release(upstream=upstream, ticket=attempt.ticket, healthy=False))
            attempt.ticket = new_ticket(principal.tier)

        return RedisClaim(CLAIM_LUA, keys, args, accept, abandon)

    async def route(self, ctx: RequestContext) -> None:
        if ctx.upstream is not None or ctx.model is None or ctx.principal is None:
            return
        attempt = self._attempt(ctx)
        with answers.shared_state():
            if ctx.model.upstream.kind != "cloud":
                await self._local(ctx, attempt, ctx.model)
            elif await self._take_cloud(attempt):
                self._use(ctx, ctx.model)
            else:
                raise answers.budget_exhausted(self.budget)

    def _attempt(self, ctx: RequestContext) -> Attempt:
        attempt = ctx.extras.get("failover")
        if not isinstance(attempt, Attempt):
            assert ctx.principal is not None
            attempt = Attempt(ticket=new_ticket(ctx.principal.tier))
            ctx.extras["failover"] = attempt
        return attempt

    async def _local(self, ctx: RequestContext, attempt: Attempt, model: Model) -> None:
        upstream = model.upstream.name
        fallback = self._fallback(ctx)
        # Set before asking: if the request is cancelled mid-call, settle still gives back what it got.
        attempt.upstream = upstream
        entry, attempt.claimed = attempt.claimed, None
        if entry is None:
            entry = await self.slots.enter(
                upstream=upstream,
                ticket=attempt.ticket,
                priority=self._priority(ctx),
                spill_depth=self._spill_depth(fallback),
            )
        if entry.state == "spill":
            attempt.upstream = None
            if fallback is not None and await self._spill(ctx, attempt, fallback):
                return
            attempt.upstream = upstream
            entry = await self.slots.enter(
                upstream=upstream, ticket=attempt.ticket, priority=self._priority(ctx), spill_depth=None
            )
        if entry.state == "queued":
            entry = await self.slots.wait(
                upstream=upstream, ticket=attempt.ticket, max_wait_s=self.settings.queue_max_wait_seconds
            )
        if entry.state == "acquired":
            self._use(ctx, model)
            return
        attempt.upstream = None
        if entry.state == "down":
            if fallback is not None and await self._spill(ctx, attempt, fallback):
                return
            raise answers.unavailable(entry)
        raise answers.queue_timeout()

    async def retry(self, ctx: RequestContext, error: UpstreamFailure) -> bool | None:
        attempt = ctx.extras.get("failover")
        upstream = ctx.upstream
        if not isinstance(attempt, Attempt) or upstream is None:
            return None
        with answers.shared_state():
            return await self._retry(ctx, attempt, upstream, failure_kind(error))

    async def _retry(self, ctx: RequestContext, attempt: Attempt, upstream: Upstream, kind: Kind) -> bool | None:
        attempt.failures += 1
        down = await self.health.attempt_failed(attempt=attempt, upstream=upstream, kind=kind)
        delay = None if down else self.health.delay(failures=attempt.failures, kind=kind)
        if delay is not None:
            await asyncio.sleep(delay)
            attempt.tried.append(upstream.name)
            return True
        if upstream.kind != "local":
            return None
        await self._leave_local(attempt, healthy=False)
        fallback = self._fallback(ctx)
        if fallback is not None and await self._spill(ctx, attempt, fallback):
            attempt.failures = 0
            return True
        if kind == "answer":
            return None  # this request's own failure, as far as anyone can tell: not an outage for all
        raise answers.unavailable(Entry("down", retry_after_s=self.settings.down_cooldown_seconds if down else 5))

    async def settle(self, ctx: RequestContext) -> None:
        attempt = ctx.extras.get("failover")
        if not isinstance(attempt, Attempt):
            return
        try:
            await self._leave_local(attempt, healthy=ctx.outcome == "ok")
            await self.health.settled(ctx, attempt)
        finally:
            if attempt.cloud_day is not None and ctx.usage.source == "none" and ctx.outcome != "ok":
                day, attempt.cloud_day = attempt.cloud_day, None
                await self.budget.give_back(day)

    async def _leave_local(self, attempt: Attempt, *, healthy: bool) -> None:
        if attempt.upstream is not None:
            upstream, attempt.upstream = attempt.upstream, None
            await self.slots.release(upstream=upstream, ticket=attempt.ticket, healthy=healthy)

    def _use(self, ctx: RequestContext, model: Model) -> None:
        ctx.upstream = model.upstream
        ctx.upstream_model = model.upstream_model
        ctx.route = model.upstream.kind
        ctx.multiplier = model.multiplier
        ctx.response_headers[answers.ROUTE_HEADER] = model.upstream.kind
        attempt = ctx.extras.get("failover")
        if isinstance(attempt, Attempt):
            attempt.tried.append(model.upstream.name)

    async def _spill(self, ctx: RequestContext, attempt: Attempt, fallback: Model) -> bool:
        if not await self._take_cloud(attempt):
            return False
        self._use(ctx, fallback)
        return True

    async def _take_cloud(self, attempt: Attempt) -> bool:
        if attempt.cloud_day is not None:
            return True  # one request counts once, however many attempts it takes
        attempt.cloud_day = await self.budget.take()
        return attempt.cloud_day is not None

    def _fallback(self, ctx: RequestContext) -> Model | None:
        """The cloud model this request may spill to: the tier allows cloud and the model names one."""
        assert ctx.model is not None and ctx.principal is not None
        tier = self.gateway.config.tiers.get(ctx.principal.tier)
        if tier is None or not tier.cloud:
            return None
        return self.fallbacks.get(ctx.model.name)

    def _spill_depth(self, fallback: Model | None) -> int | None:
        """How many may wait before a request with this fallback spills to it; None: it never spills."""
        return self.settings.spill_depth if fallback is not None else None

    def _priority(self, ctx: RequestContext) -> int:
        assert ctx.principal is not None
        tier = self.gateway.config.tiers.get(ctx.principal.tier)
        return tier.priority if tier is not None else 0
