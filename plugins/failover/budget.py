"""The daily cloud cap: a count per calendar day in the operator's time zone, taken before a request goes out.

Checking the cap, counting, and claiming the alerts the count crosses are one step (a Lua script in
Redis, or plain code in one process), so a burst can never push the count past the cap, and
`cloud.budget_80` and `cloud.budget_100` are each claimed by exactly one request a day, 80 before 100.
The claimed alert is then written to the outbox in a transaction of its own, off the request path (the
count lives in Redis, so there is no database transaction to share): a worker killed between the claim
and that write loses the alert for the day; once written it is delivered at least once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis

from edge.events import CloudBudget as CloudBudgetEvent
from edge.events import CloudBudget80, CloudBudget100
from plugins.failover.redis_slots import PREFIX

ALERTS = (("cloud.budget_80", 80), ("cloud.budget_100", 100))
# Day keys outlive their day so the admin view of yesterday stays readable for a while.
_KEEP_S = 3 * 24 * 3600

# KEYS: used, alert_80, alert_100; ARGV: cap keep_s -> {taken 0/1, used, claimed_80 0/1, claimed_100 0/1}
_TAKE = """
local cap = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local taken = 0
if used < cap then
  taken = 1
  used = redis.call('INCR', KEYS[1])
  if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
local claimed = {0, 0}
if cap > 0 then
  for i, percent in ipairs({80, 100}) do
    if used * 100 >= cap * percent and redis.call('SET', KEYS[i + 1], '1', 'NX', 'EX', ARGV[2]) then
      claimed[i] = 1
    end
  end
end
return {taken, used, claimed[1], claimed[2]}
"""

_GIVE_BACK = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""

# Fire-and-forget: the plugin hands events to the outbox off the request path (`Outbox.publish_soon`).
Publish = Callable[[CloudBudgetEvent], None]
_EVENTS: dict[str, type[CloudBudgetEvent]] = {"cloud.budget_80": CloudBudget80, "cloud.budget_100": CloudBudget100}


@dataclass(frozen=True, slots=True)
class Take:
    taken: bool
    used: int
    # The alerts this count was the first to cross today, in order.
    alerts: tuple[str, ...] = ()


def crossed(*, used: int, cap: int) -> list[str]:
    """The alerts a count of `used` has reached; none when the cap is 0 (cloud switched off on purpose)."""
    return [name for name, percent in ALERTS if cap > 0 and used * 100 >= cap * percent]


class CountStore(Protocol):
    async def take(self, *, day: str, cap: int) -> Take:
        """Count one request for `day` unless `cap` is reached, and claim the alerts it crosses first."""
        ...

    async def give_back(self, *, day: str) -> None: ...

    async def used(self, *, day: str) -> int: ...


class MemoryCounts:
    """Counts in this process; valid only while one process serves."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.claimed: set[tuple[str, str]] = set()

    async def take(self, *, day: str, cap: int) -> Take:
        used = self.counts.get(day, 0)
        taken = used < cap
        if taken:
            used = self.counts[day] = used + 1
        alerts = tuple(name for name in crossed(used=used, cap=cap) if (day, name) not in self.claimed)
        self.claimed.update((day, name) for name in alerts)
        return Take(taken, used, alerts)

    async def give_back(self, *, day: str) -> None:
        if self.counts.get(day, 0) > 0:
            self.counts[day] -= 1

    async def used(self, *, day: str) -> int:
        return self.counts.get(day, 0)


class RedisCounts:
    """Counts shared by every worker and host."""

    def __init__(self, *, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)
        self._give_back = redis.register_script(_GIVE_BACK)

    @staticmethod
    def key(day: str, part: str = "used") -> str:
        return f"{PREFIX}cloud:{day}:{part}"

    async def take(self, *, day: str, cap: int) -> Take:
        keys = [self.key(day), *(self.key(day, name) for name, _ in ALERTS)]
        taken, used, *claimed = await self._take(keys=keys, args=[cap, _KEEP_S])
        alerts = tuple(name for (name, _), flag in zip(ALERTS, claimed, strict=True) if int(flag))
        return Take(bool(taken), int(used), alerts)

    async def give_back(self, *, day: str) -> None:
        await self._give_back(keys=[self.key(day)])

    async def used(self, *, day: str) -> int:
        return int(await self.redis.get(self.key(day)) or 0)


class CloudBudget:
    """The cap, the day it applies to, and the two alerts."""

    def __init__(
        self,
        *,
        store: CountStore,
        cap: int,
        timezone: str,
        publish: Publish,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.cap = cap
        self.tz = ZoneInfo(timezone)
        self.publish = publish
        self.clock = clock

    def today(self) -> str:
        return self.clock().astimezone(self.tz).date().isoformat()

    def seconds_to_midnight(self) -> int:
        now = self.clock().astimezone(self.tz)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=self.tz)
        return max(1, int((midnight - now).total_seconds()) + 1)

    async def take(self) -> str | None:
        """Count one cloud request; the day it counted against, or None when the cap is reached."""
        day = self.today()
        take = await self.store.take(day=day, cap=self.cap)
        for name in take.alerts:
            percent = self.percent(take.used)
            self.publish(_EVENTS[name](day=date.fromisoformat(day), used=take.used, cap=self.cap, percent=percent))
        return day if take.taken else None

    async def give_back(self, day: str) -> None:
        await self.store.give_back(day=day)

    async def status(self) -> dict[str, Any]:
        day = self.today()
        used = await self.store.used(day=day)
        return {"day": day, "used": used, "cap": self.cap, "percent": self.percent(used)}

    def percent(self, used: int) -> int:
        return 100 if self.cap <= 0 else used * 100 // self.cap
