"""Attempt limits for logins and registrations, counted before the work they guard.

What stays true, across concurrent requests, workers and hosts:
- An attempt takes its place in every window it counts against (say the login name's and the client IP's)
  in ONE atomic step, and only then is the password verified or the registration looked up. In Redis the
  step is one Lua script over all the windows, on Redis's clock, so every worker and host shares it; in
  process it is one synchronous function, which the event loop cannot interleave (in-process state means
  one worker, which the gateway enforces). So however many attempts arrive at once, no more than a window's
  limit are ever evaluated within it.
- An attempt refused with 429 takes no place in any window: waiting out `retry-after` always works, and a
  name's place is never used up by an attempt its IP's window refused.
- A place is given back only when the work proved the attempt legitimate (a correct password), and the
  windows are moving: an attempt stops counting `window_seconds` after it was taken.
- Identities are hashed before they are stored, so the shared store holds no emails, phones or IPs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from edge.errors import TooManyRequests

# KEYS: the windows. ARGV[1]: window length (ms), ARGV[2]: this attempt's member, ARGV[3..]: each key's
# limit. Answers 0 after taking a place in every window, else the milliseconds until each full one has room.
TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local limit = tonumber(ARGV[2 + i])
  local used = redis.call('ZCARD', key)
  if used >= limit then
    local oldest = redis.call('ZRANGE', key, used - limit, used - limit, 'WITHSCORES')
    local free_in = tonumber(oldest[2]) + window - now
    if free_in > wait then wait = free_in end
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, window)
end
return 0
"""

# Past this many identities the in-process store drops the windows that have emptied; the next sweep waits
# until there are twice as many as were left, so a flood of live names costs amortised O(1) a take.
_SWEEP_AT = 10_000


def ip_bucket(ip: str) -> str:
    """What one client's IP counts as: an IPv4 address (also when IPv4-mapped), or an IPv6 /64, the block
    a single customer line gets, so walking through its addresses is not a fresh allowance each time."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(frozen=True, slots=True)
class Ticket:
    """The place one attempt took: its member in each window, by kind."""

    member: str
    keys: Mapping[str, str]


class Windows(Protocol):
    async def take(self, keys: list[str], limits: list[int], member: str) -> float: ...
    async def remove(self, keys: list[str], member: str) -> None: ...
    async def clear(self, key: str) -> None: ...


class RedisWindows:
    """Sorted sets in Redis, one per identity; the gateway's own connection pool."""

    def __init__(self, *, redis: aioredis.Redis, window_seconds: int) -> None:
        self.redis = redis
        self.window_ms = window_seconds * 1000
        self.script = redis.register_script(TAKE_LUA)

    async def take(self, keys: list[str], limits: list[int], member: str) -> float:
        wait_ms = await self.script(keys=keys, args=[self.window_ms, member, *limits])
        return int(wait_ms) / 1000

    async def remove(self, keys: list[str], member: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrem(key, member)
            await pipe.execute()

    async def clear(self, key: str) -> None:
        await self.redis.delete(key)


class MemoryWindows:
    """The same windows in this process, for the embedded one-worker setup; `clock` is injectable."""

    def __init__(self, *, window_seconds: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = float(window_seconds)
        self.clock = clock
        self.entries: dict[str, deque[tuple[float, str]]] = {}
        self.sweep_at = _SWEEP_AT

    def _live(self, key: str, now: float) -> deque[tuple[float, str]]:
        entries = self.entries.setdefault(key, deque())
        while entries and entries[0][0] <= now - self.window:
            entries.popleft()
        return entries

    async def take(self, keys: list[str], limits: list[int], member: str) -> float:
        # No await from here to the end: the check and the take are one step for the event loop.
        now = self.clock()
        if len(self.entries) > self.sweep_at:
            for key in [k for k, v in self.entries.items() if not v or v[-1][0] <= now - self.window]:
                del self.entries[key]
            self.sweep_at = max(_SWEEP_AT, 2 * len(self.entries))
        wait = 0.0
        for key, limit in zip(keys, limits, strict=True):
            entries = self._live(key, now)
            if len(entries) >= limit:
                wait = max(wait, entries[len(entries) - limit][0] + self.window - now)
        if wait > 0:
            return wait
        for key in keys:
            self.entries[key].append((now, member))
        return 0.0

    async def remove(self, keys: list[str], member: str) -> None:
        for key in keys:
            entries = self.entries.get(key)
            if entries:
                self.entries[key] = deque(e for e in entries if e[1] != member)

    async def clear(self, key: str) -> None:
        self.entries.pop(key, None)


class Throttle:
    """Limits attempts per identity of each kind (`name`, `ip`, `email`, ...) in a moving window."""

    def __init__(
        self,
        *,
        prefix: str,
        limits: Mapping[str, int],
        window_seconds: int,
        redis: aioredis.Redis | None,
        message: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = prefix
        self.limits = dict(limits)
        self.message = message
        self.windows: Windows = (
            RedisWindows(redis=redis, window_seconds=window_seconds)
            if redis is not None
            else MemoryWindows(window_seconds=window_seconds, clock=clock)
        )

    def _key(self, kind: str, ident: str) -> str:
        digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"resayil:auth:{self.prefix}:{kind}:{digest}"

    async def take(self, **idents: str | None) -> Ticket:
        """A place in the window of each given identity (None ones are skipped), or 429 with `retry-after`
        when any of them is full, taking none."""
        keys = {
            kind: self._key(kind, ip_bucket(ident) if kind == "ip" else ident or "-")
            for kind, ident in idents.items()
            if ident is not None
        }
        member = secrets.token_hex(8)
        wait = await self.windows.take(list(keys.values()), [self.limits[kind] for kind in keys], member)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise TooManyRequests(
                self.message.format(seconds=retry), code="too_many_attempts", headers={"retry-after": str(retry)}
            )
        return Ticket(member=member, keys=keys)

    async def give_back(self, ticket: Ticket, *, kinds: Iterable[str]) -> None:
        """The attempt no longer counts in these kinds' windows."""
        await self.windows.remove([ticket.keys[kind] for kind in kinds if kind in ticket.keys], ticket.member)

    async def forget(self, ticket: Ticket, *, kind: str) -> None:
        """Empty the whole window of the ticket's identity of this kind (e.g. a login name after success)."""
        if kind in ticket.keys:
            await self.windows.clear(ticket.keys[kind])
