"""Failed-login limits per login name and per client IP, shared through Redis when there is one."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from edge.errors import TooManyRequests


class LoginThrottle:
    """Counts failures only; once a name or an IP has used its allowance every attempt gets 429."""

    def __init__(self, *, per_name: int, per_ip: int, window_seconds: int, redis: aioredis.Redis | None) -> None:
        self.storage: Storage
        if redis is not None:
            # The gateway's own pool: no second set of Redis connections for the throttle.
            pool: Any = redis.connection_pool
            self.storage = RedisStorage(
                "async+redis://", implementation="redispy", connection_pool=pool, key_prefix="resayil:auth:login"
            )
        else:
            self.storage = MemoryStorage()
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.by_name = RateLimitItemPerSecond(per_name, window_seconds, namespace="name")
        self.by_ip = RateLimitItemPerSecond(per_ip, window_seconds, namespace="ip")

    @staticmethod
    def _name_key(login: str) -> str:
        # Hashed so the shared store holds no email addresses or phone numbers.
        return hashlib.sha256(login.encode()).hexdigest()[:32]

    async def check(self, *, login: str, ip: str) -> None:
        """Raise 429 with `retry-after` when the name or the IP has no attempts left."""
        waits = []
        for item, ident in ((self.by_name, self._name_key(login)), (self.by_ip, ip or "-")):
            if not await self.limiter.test(item, ident):
                stats = await self.limiter.get_window_stats(item, ident)
                waits.append(max(1, math.ceil(stats.reset_time - time.time())))
        if waits:
            retry = max(waits)
            raise TooManyRequests(
                f"Too many failed logins. Try again in {retry} seconds.",
                code="too_many_attempts",
                headers={"retry-after": str(retry)},
            )

    async def failed(self, *, login: str, ip: str) -> None:
        await self.limiter.hit(self.by_name, self._name_key(login))
        await self.limiter.hit(self.by_ip, ip or "-")

    async def succeeded(self, *, login: str) -> None:
        await self.limiter.clear(self.by_name, self._name_key(login))

    async def close(self) -> None:
        timer = getattr(self.storage, "timer", None)
        if isinstance(timer, asyncio.Task):
            await asyncio.gather(timer, return_exceptions=True)
