"""The local queue in Redis, shared by every worker and host.

Per upstream: `slots` (sorted set, ticket -> lease expiry in ms), `queue` (sorted set, ticket -> -priority
then arrival sequence), `alive` (sorted set, waiting ticket -> lease expiry), `seq`, `fails` (attempts that
could not connect), `failed` (sorted set, account -> when a request of it last failed), `probe` (a probe is
under way, with a lease) and `down`.
Every change is one Lua script, so no two workers ever see a half-made move. A worker's heartbeat
extends the leases of what it holds and waits for; a crashed worker stops extending them and its slots
and places free themselves once the lease runs out. A release publishes a wake-up on one channel;
waiters also poll, which covers a missed message and a lease that ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from plugins.failover.slots import ACQUIRED, Entry, Snapshot, count_tiers

log = logging.getLogger("resayil.failover")

PREFIX = "resayil:failover:"
CHANNEL = PREFIX + "wake"
# Priority dominates the arrival sequence: a score is -priority * 1e12 + sequence.
_PRIORITY_STEP = 10**12

_PURGE = """
local function purge(slots, queue, alive, now)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local dead = redis.call('ZRANGEBYSCORE', alive, '-inf', now)
  for i = 1, #dead do redis.call('ZREM', queue, dead[i]) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', alive, '-inf', now) end
end
local function take(slots, queue, alive, member, now, lease, parallel)
  local free = parallel - redis.call('ZCARD', slots)
  if free <= 0 then return false end
  local rank = redis.call('ZRANK', queue, member)
  if rank == false or rank >= free then return false end
  redis.call('ZREM', queue, member)
  redis.call('ZREM', alive, member)
  redis.call('ZADD', slots, now + lease, member)
  return true
end
"""

# KEYS: slots queue alive seq down; ARGV: member now lease parallel spill_depth(-1: never) priority step
_ENTER = (
    _PURGE
    + """
local slots, queue, alive = KEYS[1], KEYS[2], KEYS[3]
local member, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local parallel, spill = tonumber(ARGV[4]), tonumber(ARGV[5])
local down = redis.call('PTTL', KEYS[5])
if down > 0 then return {'down', 0, down} end
purge(slots, queue, alive, now)
local depth = redis.call('ZCARD', queue)
if spill >= 0 and depth > spill then return {'spill', depth, 0} end
if depth == 0 and redis.call('ZCARD', slots) < parallel then
  redis.call('ZADD', slots, now + lease, member)
  return {'acquired', 0, 0}
end
local seq = redis.call('INCR', KEYS[4])
local score = string.format('%d', -tonumber(ARGV[6]) * tonumber(ARGV[7]) + seq)
redis.call('ZADD', queue, score, member)
redis.call('ZADD', alive, now + lease, member)
if take(slots, queue, alive, member, now, lease, parallel) then return {'acquired', 0, 0} end
return {'queued', depth + 1, 0}
"""
)

# `_ENTER` as a function, for another plugin's script to run as a claim (edge/claims.py).
CLAIM_LUA = "local function claim(KEYS, ARGV)\n" + _ENTER + "\nend\n"

# KEYS: slots queue alive down; ARGV: member now lease parallel
_POLL = (
    _PURGE
    + """
local slots, queue, alive = KEYS[1], KEYS[2], KEYS[3]
local member, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local down = redis.call('PTTL', KEYS[4])
if down > 0 then
  redis.call('ZREM', queue, member)
  redis.call('ZREM', alive, member)
  return {'down', 0, down}
end
purge(slots, queue, alive, now)
if redis.call('ZSCORE', slots, member) then return {'acquired', 0, 0} end
if not redis.call('ZSCORE', queue, member) then return {'lost', 0, 0} end
if take(slots, queue, alive, member, now, lease, tonumber(ARGV[4])) then return {'acquired', 0, 0} end
return {'queued', redis.call('ZRANK', queue, member) + 1, 0}
"""
)

# KEYS: slots queue alive fails failed; ARGV: member healthy(0/1) channel upstream
_RELEASE = """
local held = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if held == 1 and ARGV[2] == '1' then redis.call('DEL', KEYS[4], KEYS[5]) end
if held == 1 and redis.call('ZCARD', KEYS[2]) > 0 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return held
"""

# KEYS: fails down failed; ARGV: threshold cooldown_ms channel upstream
_FAILED = """
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if n < tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# KEYS: failed down probe; ARGV: account now window_ms threshold probe_ms
_FAILED_REQUEST = """
if redis.call('PTTL', KEYS[2]) > 0 then return 0 end
local now, window = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then return 0 end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[5]) then return 1 end
return 0
"""

# KEYS: failed probe down fails; ARGV: healthy(0/1) cooldown_ms channel upstream
_PROBED = """
redis.call('DEL', KEYS[2])
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('DEL', KEYS[1], KEYS[4])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# KEYS: slots queue alive down; ARGV: now
_PEEK = (
    _PURGE
    + """
purge(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]))
return {redis.call('ZCARD', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1), redis.call('PTTL', KEYS[4])}
"""
)


def keys(upstream: str) -> dict[str, str]:
    base = f"{PREFIX}{upstream}:"
    return {part: base + part for part in ("slots", "queue", "alive", "seq", "fails", "failed", "probe", "down")}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _entry(reply: list[Any]) -> Entry | None:
    """The script's answer as an Entry; None for `lost` (the place in line ran out)."""
    state = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    if state == "down":
        return Entry("down", retry_after_s=int(reply[2]) / 1000)
    if state == "acquired":
        return ACQUIRED
    if state == "spill":
        return Entry("spill", depth=int(reply[1]))
    if state == "queued":
        return Entry("queued", depth=int(reply[1]))
    return None


class RedisSlots:
    """Slots and the waiting line in Redis, with leases a heartbeat keeps alive."""

    def __init__(self, *, redis: aioredis.Redis, parallel: dict[str, int], lease_s: float, poll_s: float) -> None:
        self.redis = redis
        self.parallel = parallel
        self.lease_ms = int(lease_s * 1000)
        self.poll_s = poll_s
        self.keys = {name: keys(name) for name in parallel}
        self._enter = redis.register_script(_ENTER)
        self._poll = redis.register_script(_POLL)
        self._release = redis.register_script(_RELEASE)
        self._failed = redis.register_script(_FAILED)
        self._failed_request = redis.register_script(_FAILED_REQUEST)
        self._probed = redis.register_script(_PROBED)
        self._peek = redis.register_script(_PEEK)
        # What this process holds and waits for: the heartbeat extends exactly these leases.
        self.held: dict[str, set[str]] = {name: set() for name in parallel}
        self.waiting: dict[str, dict[str, int]] = {name: {} for name in parallel}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._heartbeat())]

    async def stop(self) -> None:
        """End the listener and the heartbeat. Cancelling is not enough on its own: redis-py's
        `get_message(timeout=...)` can swallow a cancellation that lands inside its own timeout (seen as a
        `reconcile` that never exited), so the loops also check `_stopping`, and each ends within a poll."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=2 * self.poll_s + 1)
            if stuck:
                log.warning("failover tasks did not stop in time", extra={"fields": {"tasks": len(stuck)}})
        self._tasks = []

    def enter_call(
        self, *, upstream: str, ticket: str, priority: int, spill_depth: int | None
    ) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of `_ENTER` (or of `CLAIM_LUA`'s `claim`) for this request."""
        k = self.keys[upstream]
        spill = -1 if spill_depth is None else spill_depth
        keys = [k["slots"], k["queue"], k["alive"], k["seq"], k["down"]]
        return keys, [ticket, _now_ms(), self.lease_ms, self.parallel[upstream], spill, priority, _PRIORITY_STEP]

    def entered(self, *, upstream: str, ticket: str, priority: int, reply: list[Any]) -> Entry:
        """`_ENTER`'s reply as an Entry, with what this process now holds or waits for (the heartbeat's)."""
        entry = _entry(reply)
        assert entry is not None
        if entry.state == "acquired":
            self.held[upstream].add(ticket)
        elif entry.state == "queued":
            self.waiting[upstream][ticket] = priority
        return entry

    async def enter(self, *, upstream: str, ticket: str, priority: int, spill_depth: int | None) -> Entry:
        keys, args = self.enter_call(upstream=upstream, ticket=ticket, priority=priority, spill_depth=spill_depth)
        reply = await self._enter(keys=keys, args=args)
        return self.entered(upstream=upstream, ticket=ticket, priority=priority, reply=reply)

    async def wait(self, *, upstream: str, ticket: str, max_wait_s: float) -> Entry:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        try:
            while True:
                # Taken before polling, so a wake-up between the poll and the wait is not lost.
                wakeup = self._wakeups.setdefault(upstream, asyncio.Event())
                entry = await self._poll_once(upstream, ticket)
                if entry.state != "queued":
                    return entry
                left = deadline - loop.time()
                if left <= 0:
                    await self.release(upstream=upstream, ticket=ticket, healthy=False)
                    return Entry("timeout")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), min(left, self.poll_s))
        finally:
            self.waiting[upstream].pop(ticket, None)

    async def _poll_once(self, upstream: str, ticket: str) -> Entry:
        k = self.keys[upstream]
        reply = await self._poll(
            keys=[k["slots"], k["queue"], k["alive"], k["down"]],
            args=[ticket, _now_ms(), self.lease_ms, self.parallel[upstream]],
        )
        entry = _entry(reply)
        if entry is None:
            # Our place expired (the heartbeat could not reach Redis for a whole lease): join again.
            priority = self.waiting[upstream].get(ticket, 0)
            return await self.enter(upstream=upstream, ticket=ticket, priority=priority, spill_depth=None)
        if entry.state == "acquired":
            self.held[upstream].add(ticket)
        return entry

    async def release(self, *, upstream: str, ticket: str, healthy: bool) -> bool:
        k = self.keys[upstream]
        self.waiting[upstream].pop(ticket, None)
        try:
            held = await self._release(
                keys=[k["slots"], k["queue"], k["alive"], k["fails"], k["failed"]],
                args=[ticket, 1 if healthy else 0, CHANNEL, upstream],
            )
        finally:
            self.held[upstream].discard(ticket)
        return bool(held)

    async def failed(self, *, upstream: str, threshold: int, cooldown_s: float) -> bool:
        k = self.keys[upstream]
        down = await self._failed(
            keys=[k["fails"], k["down"], k["failed"]], args=[threshold, int(cooldown_s * 1000), CHANNEL, upstream]
        )
        return bool(down)

    async def failed_request(
        self, *, upstream: str, account: str, threshold: int, window_s: float, probe_s: float
    ) -> bool:
        k = self.keys[upstream]
        probe = await self._failed_request(
            keys=[k["failed"], k["down"], k["probe"]],
            args=[account, _now_ms(), max(1, int(window_s * 1000)), threshold, max(1, int(probe_s * 1000))],
        )
        return bool(probe)

    async def probed(self, *, upstream: str, healthy: bool, cooldown_s: float) -> bool:
        k = self.keys[upstream]
        down = await self._probed(
            keys=[k["failed"], k["probe"], k["down"], k["fails"]],
            args=[1 if healthy else 0, int(cooldown_s * 1000), CHANNEL, upstream],
        )
        return bool(down)

    async def snapshot(self, *, upstream: str) -> Snapshot:
        k = self.keys[upstream]
        in_use, queued, down_ms = await self._peek(
            keys=[k["slots"], k["queue"], k["alive"], k["down"]], args=[_now_ms()]
        )
        return Snapshot(
            in_use=int(in_use),
            waiting=count_tiers([m.decode() for m in queued]),
            down_for_s=max(0, int(down_ms)) / 1000,
        )

    def _wake(self, upstream: str) -> None:
        wakeup = self._wakeups.pop(upstream, None)
        if wakeup is not None:
            wakeup.set()

    async def _listen(self) -> None:
        """One subscription per process turns releases anywhere into wake-ups here."""
        while not self._stopping:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                while not self._stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.poll_s)
                    if message is not None:
                        self._wake(message["data"].decode())
            except Exception as exc:  # the listener must outlive any one failure; waiters poll meanwhile
                log.warning(
                    "failover wake-up channel lost; waiters poll until it is back",
                    extra={"fields": {"error": type(exc).__name__}},
                )
                await asyncio.sleep(self.poll_s)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _heartbeat(self) -> None:
        """Extend the leases of every slot held and place waited for by this process."""
        while not self._stopping:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.beat()
            except Exception as exc:  # the heartbeat must outlive any one failure
                log.warning("failover lease refresh failed", extra={"fields": {"error": type(exc).__name__}})

    async def beat(self) -> None:
        expiry = _now_ms() + self.lease_ms
        pipe = self.redis.pipeline(transaction=False)
        for upstream, k in self.keys.items():
            if self.held[upstream]:
                pipe.zadd(k["slots"], dict.fromkeys(self.held[upstream], expiry), xx=True)
            if self.waiting[upstream]:
                pipe.zadd(k["alive"], dict.fromkeys(self.waiting[upstream], expiry), xx=True)
        if pipe.command_stack:
            await pipe.execute()
