"""Failover: a shared local queue with tier priority, spill-over to the cloud, and a daily cloud cap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from edge.claims import RedisClaim
from edge.context import Model, RequestContext, Upstream
from edge.errors import ServiceUnavailable, UpstreamFailure
from edge.hookspecs import hookimpl
from edge.settings import ConfigError
from plugins.failover.api import admin_routes
from plugins.failover.attempt import Attempt, new_ticket
from plugins.failover.budget import CloudBudget, CountStore, MemoryCounts, RedisCounts
from plugins.failover.health import Health, Kind, failure_kind
from plugins.failover.redis_slots import CLAIM_LUA, RedisSlots
from plugins.failover.slots import Entry, MemorySlots, SlotStore

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from edge.gateway import Gateway

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


def usable_fallback(gateway: Gateway, model: Model) -> Model | None:
    """The model's YAML fallback when it runs on a cloud upstream that has a key (one without a key is not
    in use, as /readyz says)."""
    fallback = gateway.models.get(model.settings.fallback or "")
    if fallback is None or fallback.upstream.kind != "cloud" or not fallback.upstream.settings.api_key:
        return None
    return fallback


class Plugin:
    """Admits requests to each local upstream up to its parallel slots, queued by tier priority; spills
    Pro and Enterprise traffic to the cloud fallback when the line is long or the upstream is down, and
    holds cloud traffic to a daily cap. Which failures mark an upstream down: `health.py`."""

    @dataclass
    class Settings:
        spill_depth: int = 3
        cloud_daily_cap: int = 500
        queue_max_wait_s: float = 120.0
        slot_lease_s: float = 30.0
        poll_interval_s: float = 1.0
        retry_attempts: int = 3
        answer_retries: int = 1
        retry_backoff_s: float = 0.25
        retry_backoff_max_s: float = 2.0
        down_after_failures: int = 3
        down_after_accounts: int = 3
        down_window_s: float = 30.0
        down_cooldown_s: float = 30.0
        probe_timeout_s: float = 30.0
        timezone: str = "Asia/Kuwait"

    def __init__(self, settings: Plugin.Settings) -> None:
        s = settings
        for name in ("spill_depth", "cloud_daily_cap"):
            if getattr(s, name) < 0:
                raise ConfigError(f"plugins.failover.settings.{name}: must be 0 or more")
        positive = ("queue_max_wait_s", "slot_lease_s", "poll_interval_s", "down_window_s", "down_cooldown_s")
        for name in (*positive, "probe_timeout_s"):
            if getattr(s, name) <= 0:
                raise ConfigError(f"plugins.failover.settings.{name}: must be more than 0")
        if s.retry_attempts < 1 or s.down_after_failures < 1:
            raise ConfigError("plugins.failover.settings: retry_attempts and down_after_failures must be 1 or more")
        if s.answer_retries < 0:
            raise ConfigError("plugins.failover.settings.answer_retries: must be 0 or more")
        if s.down_after_accounts < 2:
            # One account's requests must never mark an upstream down for everyone else.
            raise ConfigError("plugins.failover.settings.down_after_accounts: must be 2 or more")
        if s.retry_backoff_s < 0 or s.retry_backoff_max_s < s.retry_backoff_s:
            raise ConfigError("plugins.failover.settings.retry_backoff_max_s: must be at least retry_backoff_s")
        self.settings = settings

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        """Open the slot store and the cloud counter: in Redis when configured, else in this process."""
        self.gateway = gateway
        s = self.settings
        parallel = {name: up.settings.parallel for name, up in gateway.upstreams.items() if up.kind == "local"}
        counts: CountStore
        if gateway.redis is not None:
            self.slots: SlotStore = RedisSlots(
                redis=gateway.redis, parallel=parallel, lease_s=s.slot_lease_s, poll_s=s.poll_interval_s
            )
            counts = RedisCounts(redis=gateway.redis)
        else:
            self.slots = MemorySlots(parallel=parallel)
            counts = MemoryCounts()
        self.budget = CloudBudget(store=counts, cap=s.cloud_daily_cap, timezone=s.timezone, publish=self._publish)
        # Computed once: the cloud model each local model may spill to, if any is usable.
        self.fallbacks = {name: fb for name, model in gateway.models.items() if (fb := usable_fallback(gateway, model))}
        for name, model in gateway.models.items():
            if model.settings.fallback and name not in self.fallbacks:
                log.warning(
                    "model %s never spills: its fallback %s is not a cloud model with an API key",
                    name,
                    model.settings.fallback,
                )
        self.health = Health(settings=s, slots=self.slots, gateway=gateway)
        await self.slots.start()

    @hookimpl
    async def resayil_shutdown(self, gateway: Gateway) -> None:
        """Stop the wake-up listener and the lease heartbeat."""
        if hasattr(self, "slots"):
            await self.slots.stop()

    def _publish(self, name: str, payload: dict[str, Any]) -> None:
        self.gateway.spawn(self.gateway.publish(name, payload))

    # ---- the request path -----------------------------------------------------------------------------

    @hookimpl
    def resayil_redis_claim(self, ctx: RequestContext) -> RedisClaim | None:
        """A local model's slot or place in line, taken in the rate limiter's script when it admits the
        request (one Redis round trip for both). The credits hold comes after it, and any wait in line only
        after the hold, in `route`: a 429 still never touches the queue, and a 402 comes before any wait.
        A request refused by its hold holds its slot only while the hold is tried; settle gives it back."""
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

    @hookimpl
    async def resayil_route(self, ctx: RequestContext) -> None:
        """Choose local (after a slot in priority order) or cloud (spill-over or a cloud model, within the
        daily cap). Raises 503 after the longest wait, when the upstream is down, or past the cap."""
        if ctx.upstream is not None or ctx.model is None or ctx.principal is None:
            return
        attempt = self._attempt(ctx)
        with shared_state():
            if ctx.model.upstream.kind != "cloud":
                await self._local(ctx, attempt, ctx.model)
            elif await self._take_cloud(attempt):
                self._use(ctx, ctx.model)
            else:
                raise self._budget_exhausted()

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
                upstream=upstream, ticket=attempt.ticket, max_wait_s=self.settings.queue_max_wait_s
            )
        if entry.state == "acquired":
            self._use(ctx, model)
            return
        attempt.upstream = None
        if entry.state == "down":
            if fallback is not None and await self._spill(ctx, attempt, fallback):
                return
            raise self._unavailable(entry)
        raise ServiceUnavailable(
            "Every local model slot stayed busy for the longest wait allowed; please try again shortly.",
            code="queue_timeout",
            headers={"retry-after": "5"},
        )

    @hookimpl
    async def resayil_retry(self, ctx: RequestContext, error: UpstreamFailure) -> bool | None:
        """Retry the same upstream after tenacity's jittered backoff while the failure policy allows
        (`health.py`); then leave a local upstream for the cloud fallback (same rules as spill-over), else
        answer the request's own failure as it is, and an unreachable or busy upstream with 503."""
        attempt = ctx.extras.get("failover")
        upstream = ctx.upstream
        if not isinstance(attempt, Attempt) or upstream is None:
            return None
        with shared_state():
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
        raise self._unavailable(Entry("down", retry_after_s=self.settings.down_cooldown_s if down else 5))

    # First of the settle hooks: the upstream's slot is free the moment its answer is over, not once slower
    # settlement work (the credits plugin's write of the charge, batched with others) is done.
    @hookimpl(tryfirst=True)
    async def resayil_settle(self, ctx: RequestContext) -> None:
        """Give back the slot or place in line exactly once; count a request a local upstream failed for
        its account (`health.py`); a cloud request that failed before any output gives its count back."""
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
        ctx.response_headers[ROUTE_HEADER] = model.upstream.kind
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

    def _unavailable(self, entry: Entry) -> ServiceUnavailable:
        wait = max(1, math.ceil(entry.retry_after_s))
        return ServiceUnavailable(
            f"The local model server is not answering right now; please try again in {wait} seconds.",
            code="upstream_unavailable",
            headers={"retry-after": str(wait)},
        )

    def _budget_exhausted(self) -> ServiceUnavailable:
        wait = self.budget.seconds_to_midnight()
        return ServiceUnavailable(
            f"Today's cloud model capacity ({self.budget.cap} requests) is used up. It renews at midnight "
            f"Kuwait time, in about {max(1, round(wait / 3600))} hours; local models remain available.",
            code="cloud_budget_exhausted",
            headers={"retry-after": str(wait), "x-should-retry": "false"},
        )

    # ---- what operators see ---------------------------------------------------------------------------

    async def budget_status(self) -> dict[str, Any]:
        """Today's cloud requests against the cap: `{day, used, cap, percent}`."""
        return await self.budget.status()

    async def upstream_states(self) -> dict[str, Any]:
        """Each upstream: its state, slots in use of its parallel slots, and who waits, by tier."""
        budget = await self.budget.status()
        data: list[dict[str, Any]] = []
        for name, upstream in self.gateway.upstreams.items():
            if upstream.kind != "local":
                exhausted = budget["used"] >= budget["cap"]
                data.append(
                    {
                        "name": name,
                        "kind": upstream.kind,
                        "state": "capped" if exhausted else "up",
                        "cloud_budget": budget,
                    }
                )
                continue
            snap = await self.slots.snapshot(upstream=name)
            waiting = {tier: snap.waiting.get(tier, 0) for tier in self.gateway.config.tiers}
            waiting.update(snap.waiting)
            data.append(
                {
                    "name": name,
                    "kind": upstream.kind,
                    "state": "down" if snap.down_for_s else "up",
                    "down_for_s": math.ceil(snap.down_for_s),
                    "parallel": upstream.settings.parallel,
                    "slots_in_use": snap.in_use,
                    "queue_depth": sum(snap.waiting.values()),
                    "queue_by_tier": waiting,
                }
            )
        return {"object": "list", "data": data}

    @hookimpl
    async def resayil_readiness(self, gateway: Gateway) -> dict[str, dict[str, Any]]:
        """A part per local upstream: down (cooling off after failures) makes it not ok."""
        parts: dict[str, dict[str, Any]] = {}
        for entry in (await self.upstream_states())["data"]:
            if entry["kind"] == "local":
                parts[f"queue:{entry['name']}"] = {
                    "ok": entry["state"] == "up",
                    "state": entry["state"],
                    "down_for_s": entry["down_for_s"],
                    "slots_in_use": entry["slots_in_use"],
                    "queue_depth": entry["queue_depth"],
                }
        return parts

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        """`GET /api/admin/cloud-budget` and `GET /api/admin/upstreams`, admins only."""
        return admin_routes(cloud_budget=self.budget_status, upstreams=self.upstream_states)
