"""Requests (and optionally tokens) per minute per account, by tier, exact across every worker and host."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import redis.exceptions

from edge.claims import RedisClaim
from edge.context import RequestContext
from edge.errors import ServiceUnavailable
from edge.hookspecs import hookimpl
from edge.request import prompt_estimate
from edge.settings import ConfigError
from plugins.ratelimit import answers
from plugins.ratelimit.outage import Outage
from plugins.ratelimit.windows import Decision, Limits, MemoryWindows, RedisWindows

if TYPE_CHECKING:
    from edge.gateway import Gateway

STORAGE_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


def token_bound(ctx: RequestContext) -> int:
    """The most tokens a request can use, known before it runs: its prompt estimated the way the edge
    estimates a cut stream (UTF-8 bytes / 4, plus 4 per message) plus its completion budget."""
    return prompt_estimate(ctx.payload) + ctx.completion_budget


class Plugin:
    """Admit each authenticated /v1 request against its account's moving window, or answer 429.

    All keys of an account share one window. Every request that reaches the limiter counts, `/v1/models`
    included; refused requests do not. With a token limit on the tier, a request counts its token bound
    (`token_bound`) at admission: the limit then holds before the tokens are spent, like OpenAI's, and
    needs no second write at settle. Storage is Redis (the plugin's `redis_url`, else the gateway's) or
    in-process memory when there is none. When Redis cannot be reached, `on_redis_error` decides:
    `fail_closed` answers 503, `fail_open` goes on with per-process limits.
    """

    @dataclass
    class Settings:
        # Overrides the gateway's redis_url for the limiter's storage.
        redis_url: str | None = None
        on_redis_error: Literal["fail_closed", "fail_open"] = "fail_closed"
        # Plans state their limits per minute; a shorter window is for trials and tests.
        window_seconds: int = 60
        # Redis connect and read timeout, seconds.
        timeout_seconds: float = 0.5
        # After Redis failed, how long requests skip it before it is tried again.
        retry_seconds: float = 5.0
        log_interval_seconds: float = 60.0
        key_prefix: str = "resayil:ratelimit"

    def __init__(self, settings: Plugin.Settings) -> None:
        if settings.window_seconds < 1:
            raise ConfigError("plugins.ratelimit.settings.window_seconds: must be at least 1")
        self.settings = settings
        self.redis: RedisWindows | None = None
        self.memory: MemoryWindows | None = None
        self.outage: Outage | None = None
        # Whether the window's script may run other plugins' claims: only on the gateway's own Redis.
        self.runs_claims = False

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        """Open the shared windows in Redis when there is one; in-process windows otherwise or as fallback."""
        s = self.settings
        for name, tier in gateway.config.tiers.items():
            if tier.tokens_per_minute is not None and tier.tokens_per_minute < 1:
                raise ConfigError(f"tiers.{name}.tokens_per_minute: must be at least 1, or left out for no limit")
        self.gateway = gateway
        url = s.redis_url or gateway.config.redis_url
        if url:
            self.redis = RedisWindows(
                url=url, window_seconds=s.window_seconds, timeout=s.timeout_seconds, key_prefix=s.key_prefix
            )
            self.outage = Outage(
                url=url, mode=s.on_redis_error, retry_seconds=s.retry_seconds, log_interval=s.log_interval_seconds
            )
        if self.redis is None or s.on_redis_error == "fail_open":
            self.memory = MemoryWindows(window_seconds=s.window_seconds)
        # On the gateway's own Redis, other plugins' claims (`resayil_redis_claim`) ride in the window's script.
        self.runs_claims = self.redis is not None and url == gateway.config.redis_url

    @hookimpl
    async def resayil_shutdown(self, gateway: Gateway) -> None:
        """Close the Redis connection and the in-process storage's timer."""
        if self.redis is not None:
            await self.redis.close()
        if self.memory is not None:
            await self.memory.close()

    # The admit phase comes after every authorize: the window counts only requests nothing else refused,
    # and a claim it runs for another plugin is followed by reserve, and so by settle, which gives it back.
    @hookimpl
    async def resayil_admit(self, ctx: RequestContext, claim: RedisClaim | None) -> None:
        """Count the request against its account's window, running `claim` in the same script on the
        gateway's Redis; add the `x-ratelimit-*` headers; 429 when full.

        Callers without an account, or on a tier the config does not know (open access), are not limited.
        """
        principal = ctx.principal
        if principal is None or principal.account_id is None:
            return
        tier = self.gateway.config.tiers.get(principal.tier)
        if tier is None:
            return
        cost = token_bound(ctx) if tier.tokens_per_minute is not None and ctx.model is not None else 0
        limits = Limits(str(principal.account_id), tier.requests_per_minute, tier.tokens_per_minute, cost)
        decision = await self._admit(limits, claim if self.runs_claims else None)
        ctx.response_headers.update(answers.headers(decision))
        if not decision.admitted:
            raise answers.refusal(
                decision, tier=tier, locale=principal.locale, cost=cost, window_seconds=self.settings.window_seconds
            )

    async def _admit(self, limits: Limits, claim: RedisClaim | None) -> Decision:
        """The window's decision, from Redis (with the claim, if any) or from memory (without it: the claim
        was not run, and its plugin takes its step itself)."""
        if self.redis is not None:
            assert self.outage is not None
            if not self.outage.skipping():
                try:
                    decision = await self.redis.admit(limits, claim)
                except STORAGE_ERRORS as exc:
                    self.outage.failed(exc)
                else:
                    self.outage.recovered()
                    return decision
            if self.memory is None:
                raise ServiceUnavailable(
                    "Rate limiting is unavailable, so the gateway is not accepting requests right now. "
                    "Please retry shortly.",
                    code="rate_limiter_unavailable",
                    headers={"retry-after": str(max(1, round(self.settings.retry_seconds)))},
                )
        assert self.memory is not None
        return await self.memory.admit(limits)

    @hookimpl
    async def resayil_readiness(self, gateway: Gateway) -> dict[str, dict[str, Any]]:
        """`{"ratelimit": {"ok", "mode", ...}}`: mode `memory`, `redis`, or while Redis is down
        `fail_closed` (not ok: /v1 answers 503) or `fail_open` (ok: serving on per-process limits)."""
        if self.redis is None:
            return {"ratelimit": {"ok": True, "mode": "memory"}}
        assert self.outage is not None
        try:
            async with asyncio.timeout(2):
                await self.redis.ping()
        except STORAGE_ERRORS as exc:
            self.outage.failed(exc)
            mode = self.settings.on_redis_error
            return {
                "ratelimit": {
                    "ok": mode == "fail_open",
                    "mode": mode,
                    "redis": "unreachable",
                    "error": type(exc).__name__,
                }
            }
        self.outage.recovered()
        return {"ratelimit": {"ok": True, "mode": "redis"}}
