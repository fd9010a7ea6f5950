"""Failover: a shared local queue with tier priority, spill-over to the cloud, and a daily cloud cap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.claims import RedisClaim
from edge.context import RequestContext
from edge.errors import UpstreamFailure
from edge.hookspecs import hookimpl
from edge.services import FAILOVER
from edge.settings import ConfigError
from plugins.failover import status
from plugins.failover.api import admin_routes
from plugins.failover.budget import CloudBudget, CountStore, MemoryCounts, RedisCounts
from plugins.failover.health import Health
from plugins.failover.redis_slots import RedisSlots
from plugins.failover.router import Router, usable_fallbacks
from plugins.failover.slots import MemorySlots, SlotStore

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from edge.gateway import Gateway


class Plugin:
    """Admits requests to each local upstream up to its parallel slots, queued by tier priority; spills
    Pro and Enterprise traffic to the cloud fallback when the line is long or the upstream is down, and
    holds cloud traffic to a daily cap. Which failures mark an upstream down: `health.py`."""

    @dataclass
    class Settings:
        spill_depth: int = 3
        cloud_daily_cap: int = 500
        queue_max_wait_seconds: float = 120.0
        slot_lease_seconds: float = 30.0
        poll_interval_seconds: float = 1.0
        retry_attempts: int = 3
        answer_retries: int = 1
        retry_backoff_seconds: float = 0.25
        retry_backoff_max_seconds: float = 2.0
        down_after_failures: int = 3
        down_after_accounts: int = 3
        down_window_seconds: float = 30.0
        down_cooldown_seconds: float = 30.0
        probe_timeout_seconds: float = 30.0
        timezone: str = "Asia/Kuwait"

    def __init__(self, settings: Plugin.Settings) -> None:
        s = settings
        for name in ("spill_depth", "cloud_daily_cap"):
            if getattr(s, name) < 0:
                raise ConfigError(f"plugins.failover.settings.{name}: must be 0 or more")
        positive = ("queue_max_wait", "slot_lease", "poll_interval", "down_window", "down_cooldown", "probe_timeout")
        for name in (f"{stem}_seconds" for stem in positive):
            if getattr(s, name) <= 0:
                raise ConfigError(f"plugins.failover.settings.{name}: must be more than 0")
        if s.retry_attempts < 1 or s.down_after_failures < 1:
            raise ConfigError("plugins.failover.settings: retry_attempts and down_after_failures must be 1 or more")
        if s.answer_retries < 0:
            raise ConfigError("plugins.failover.settings.answer_retries: must be 0 or more")
        if s.down_after_accounts < 2:
            # One account's requests must never mark an upstream down for everyone else.
            raise ConfigError("plugins.failover.settings.down_after_accounts: must be 2 or more")
        if s.retry_backoff_seconds < 0 or s.retry_backoff_max_seconds < s.retry_backoff_seconds:
            raise ConfigError(
                "plugins.failover.settings.retry_backoff_max_seconds: must be at least retry_backoff_seconds"
            )
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
                redis=gateway.redis, parallel=parallel, lease_s=s.slot_lease_seconds, poll_s=s.poll_interval_seconds
            )
            counts = RedisCounts(redis=gateway.redis)
        else:
            self.slots = MemorySlots(parallel=parallel)
            counts = MemoryCounts()
        self.budget = CloudBudget(
            store=counts, cap=s.cloud_daily_cap, timezone=s.timezone, publish=gateway.events.publish_soon
        )
        self.fallbacks = usable_fallbacks(gateway)
        self.health = Health(settings=s, slots=self.slots, gateway=gateway)
        self.router = Router(
            gateway=gateway,
            settings=s,
            slots=self.slots,
            budget=self.budget,
            health=self.health,
            fallbacks=self.fallbacks,
        )
        await self.slots.start()
        gateway.provide(FAILOVER, status.FailoverService(gateway=gateway, slots=self.slots, budget=self.budget))

    @hookimpl
    async def resayil_shutdown(self, gateway: Gateway) -> None:
        """Stop the wake-up listener and the lease heartbeat."""
        if hasattr(self, "slots"):
            await self.slots.stop()

    # ---- the request path (router.py) ----------------------------------------------------------------

    @hookimpl
    def resayil_redis_claim(self, ctx: RequestContext) -> RedisClaim | None:
        """A local model's slot or place in line, taken in the rate limiter's script when it admits the
        request (one Redis round trip for both). The credits hold comes after it, and any wait in line only
        after the hold, in `route`: a 429 still never touches the queue, and a 402 comes before any wait.
        A request refused by its hold holds its slot only while the hold is tried; settle gives it back."""
        return self.router.claim(ctx)

    @hookimpl
    async def resayil_route(self, ctx: RequestContext) -> None:
        """Choose local (after a slot in priority order) or cloud (spill-over or a cloud model, within the
        daily cap). Raises 503 after the longest wait, when the upstream is down, or past the cap."""
        await self.router.route(ctx)

    @hookimpl
    async def resayil_retry(self, ctx: RequestContext, error: UpstreamFailure) -> bool | None:
        """Retry the same upstream after tenacity's jittered backoff while the failure policy allows
        (`health.py`); then leave a local upstream for the cloud fallback (same rules as spill-over), else
        answer the request's own failure as it is, and an unreachable or busy upstream with 503."""
        return await self.router.retry(ctx, error)

    # First of the settle hooks: the upstream's slot is free the moment its answer is over, not once slower
    # settlement work (the credits plugin's write of the charge, batched with others) is done.
    @hookimpl(tryfirst=True)
    async def resayil_settle(self, ctx: RequestContext) -> None:
        """Give back the slot or place in line exactly once; count a request a local upstream failed for
        its account (`health.py`); a cloud request that failed before any output gives its count back."""
        await self.router.settle(ctx)

    # ---- what operators see (status.py) ---------------------------------------------------------------

    async def budget_status(self) -> dict[str, Any]:
        """Today's cloud requests against the cap: `{day, used, cap, percent}`."""
        return await self.budget.status()

    async def upstream_states(self) -> dict[str, Any]:
        """Each upstream: its state, slots in use of its parallel slots, and who waits, by tier."""
        return await status.upstream_states(gateway=self.gateway, slots=self.slots, budget=self.budget)

    @hookimpl
    async def resayil_readiness(self, gateway: Gateway) -> dict[str, dict[str, Any]]:
        """A part per local upstream: down (cooling off after failures) makes it not ok."""
        return status.readiness(await self.upstream_states())

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        """`GET /api/admin/cloud-budget` and `GET /api/admin/upstreams`, admins only."""
        return admin_routes(gateway, cloud_budget=self.budget_status, upstreams=self.upstream_states)
