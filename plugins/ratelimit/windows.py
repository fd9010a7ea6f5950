"""Moving windows per account: in-process with `limits`, or shared in Redis with one script call a request."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import MovingWindowRateLimiter
from redis.commands.core import AsyncScript

from edge.claims import RedisClaim

# admit.lua as a function of its KEYS and ARGV, so one script can also run another plugin's claim.
ADMIT_FUNCTION = (
    "local function admit(KEYS, ARGV)\n" + (Path(__file__).parent / "admit.lua").read_text(encoding="utf-8") + "\nend\n"
)
ADMIT_LUA = ADMIT_FUNCTION + "return admit(KEYS, ARGV)\n"
# After the window's 2 keys and 4 arguments come a claim's own; it runs only when the window admits the
# request, and its reply follows the window's four values.
WITH_CLAIM = """
local window = admit({KEYS[1], KEYS[2]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4]})
if window[1] == 0 then return window end
local claim_keys, claim_args = {}, {}
for i = 3, #KEYS do claim_keys[i - 2] = KEYS[i] end
for i = 5, #ARGV do claim_args[i - 4] = ARGV[i] end
for _, value in ipairs(claim(claim_keys, claim_args)) do window[#window + 1] = value end
return window
"""


@dataclass(frozen=True, slots=True)
class Window:
    """One resource (requests or tokens) of one account after a check."""

    limit: int
    remaining: int
    # Seconds until the oldest entry leaves the window, i.e. until `remaining` next goes up.
    reset_after: float


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    requests: Window
    # None when the tier has no token limit.
    tokens: Window | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """What one account may do in one window, and what this request costs against it."""

    account: str
    requests: int
    tokens: int | None
    cost: int


class MemoryWindows:
    """Per-process windows from `limits`' moving-window strategy over its in-memory storage.

    Exact within one process; the embedded default (one worker) and the fail-open fallback use it.
    """

    def __init__(self, *, window_seconds: int) -> None:
        self.window_seconds = window_seconds
        self.storage = MemoryStorage()
        self.limiter = MovingWindowRateLimiter(self.storage)
        # Test-then-hit of two items must not interleave with another request of the same process.
        self._lock = asyncio.Lock()

    def _item(self, amount: int) -> RateLimitItem:
        return RateLimitItemPerSecond(amount, self.window_seconds)

    async def admit(self, limits: Limits) -> Decision:
        requests = self._item(limits.requests)
        tokens = self._item(limits.tokens) if limits.tokens is not None else None
        async with self._lock:
            admitted = await self.limiter.test(requests, "requests", limits.account)
            if admitted and tokens is not None:
                admitted = await self.limiter.test(tokens, "tokens", limits.account, cost=limits.cost)
            if admitted:
                await self.limiter.hit(requests, "requests", limits.account)
                if tokens is not None and limits.cost > 0:
                    await self.limiter.hit(tokens, "tokens", limits.account, cost=limits.cost)
            return Decision(
                admitted,
                await self._window(requests, "requests", limits.account),
                await self._window(tokens, "tokens", limits.account) if tokens is not None else None,
            )

    async def _window(self, item: RateLimitItem, *identifiers: str) -> Window:
        stats = await self.limiter.get_window_stats(item, *identifiers)
        remaining = max(0, stats.remaining)
        # An empty window has nothing to reset; `limits` reports "now + window" for it.
        reset = 0.0 if remaining >= item.amount else max(0.0, stats.reset_time - time.time())
        return Window(item.amount, remaining, reset)

    async def close(self) -> None:
        # The storage runs an expiry task of its own; end it with the loop that started it.
        timer = self.storage.timer
        if timer is not None and not timer.done():
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)


class RedisWindows:
    """Windows shared by every worker and host through Redis, in `limits`' Redis storage.

    `limits`' own moving window needs two round trips for what a response must report (`hit`, then
    `get_window_stats`), cannot take a request and its tokens together or not at all, and stamps entries
    with each client's clock. So the check is one Lua script of ours (`admit.lua`), run with EVALSHA on
    the storage's connection: one round trip a request (two, once, after Redis lost its script cache),
    atomic across processes, timed by Redis's clock. One list per account holds an entry per admitted
    request with its tokens, and a hash beside it keeps their running totals, so a check costs the same
    however high the limit.
    """

    def __init__(self, *, url: str, window_seconds: int, timeout: float, key_prefix: str) -> None:
        self.window_seconds = window_seconds
        self.key_prefix = key_prefix
        self.storage = RedisStorage(
            "async+" + url,
            implementation="redispy",
            key_prefix=key_prefix,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )
        bridge = self.storage.bridge
        assert isinstance(bridge, RedispyBridge)
        self.connection = cast(aioredis.Redis, bridge.get_connection())
        self.script = self.connection.register_script(ADMIT_LUA)
        # One script per kind of claim (its Lua), with the window's check in front.
        self.with_claim: dict[str, AsyncScript] = {}

    def key(self, account: str) -> str:
        return f"{self.key_prefix}:account:{account}"

    async def admit(self, limits: Limits, claim: RedisClaim | None = None) -> Decision:
        """Check the window; with a claim, run it in the same script when the window admits the request."""
        key = self.key(limits.account)
        keys = [key, key + ":totals"]
        args: list[Any] = [limits.requests, self.window_seconds, limits.tokens or 0, limits.cost]
        if claim is None:
            reply = await self.script(keys=keys, args=args)
        else:
            script = self.with_claim.get(claim.lua)
            if script is None:
                script = self.with_claim[claim.lua] = self.connection.register_script(
                    ADMIT_FUNCTION + claim.lua + WITH_CLAIM
                )
            try:
                reply = await script(keys=keys + claim.keys, args=args + claim.args)
            except BaseException:
                claim.abandon()
                raise
            if reply[0]:
                claim.accept(reply[4:])
        admitted, count, used, reset_ms = reply[:4]
        reset = int(reset_ms) / 1000
        tokens = None
        if limits.tokens is not None:
            tokens = Window(limits.tokens, max(0, limits.tokens - int(used)), reset)
        return Decision(bool(admitted), Window(limits.requests, max(0, limits.requests - int(count)), reset), tokens)

    async def ping(self) -> None:
        await self.connection.ping()

    async def close(self) -> None:
        await self.connection.aclose()
