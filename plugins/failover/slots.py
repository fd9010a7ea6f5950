"""The local queue: parallel slots per local upstream and the priority-ordered line waiting for them.

Two stores keep it: `MemorySlots` (one process, the embedded default) and `RedisSlots` (every worker and
host, in `redis_slots.py`). Both answer the same questions the same way, so the plugin never knows which.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

State = Literal["acquired", "queued", "spill", "down", "timeout"]


@dataclass(frozen=True, slots=True)
class Entry:
    """The answer to a request for a slot."""

    state: State
    # Requests waiting for the upstream when the answer was given (the caller not included).
    depth: int = 0
    # For `down`: seconds until the upstream's cool-down ends.
    retry_after_s: float = 0.0


ACQUIRED = Entry("acquired")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One upstream's queue as an operator sees it."""

    in_use: int
    waiting: dict[str, int]
    down_for_s: float


def make_ticket(*, tier: str, token: str) -> str:
    """A queue member: the tier travels in it so depth by tier needs no second structure."""
    return f"{tier}|{token}"


def ticket_tier(ticket: str) -> str:
    return ticket.rpartition("|")[0]


def count_tiers(tickets: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ticket in tickets:
        tier = ticket_tier(ticket)
        counts[tier] = counts.get(tier, 0) + 1
    return counts


class SlotStore(Protocol):
    """What the plugin asks of a queue store. Every method is safe to repeat for the same ticket."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def enter(self, *, upstream: str, ticket: str, priority: int, spill_depth: int | None) -> Entry:
        """Take a free slot, or join the line; `spill` instead when more than `spill_depth` wait."""
        ...

    async def wait(self, *, upstream: str, ticket: str, max_wait_s: float) -> Entry:
        """Wait in line for a slot: `acquired`, `down` (left the line) or `timeout` (left the line)."""
        ...

    async def release(self, *, upstream: str, ticket: str, healthy: bool) -> bool:
        """Give back the slot or the place in line; True when a slot was held. `healthy` clears failures."""
        ...

    async def failed(self, *, upstream: str, threshold: int, cooldown_s: float) -> bool:
        """Count an attempt that could not connect; True when the upstream is now marked down for the
        cool-down (after `threshold` with no success in between)."""
        ...

    async def failed_request(
        self, *, upstream: str, account: str, threshold: int, window_s: float, probe_s: float
    ) -> bool:
        """Count a request the upstream failed for `account`. True when `threshold` different accounts
        failed within `window_s` with no success in between and no probe is under way: the caller must
        probe the upstream within `probe_s` and report with `probed`. Nothing counts while it is down."""
        ...

    async def probed(self, *, upstream: str, healthy: bool, cooldown_s: float) -> bool:
        """The probe's verdict: healthy clears the failed requests, else the upstream is marked down for
        the cool-down (True). Either way the next probe may start."""
        ...

    async def snapshot(self, *, upstream: str) -> Snapshot: ...


@dataclass
class _Line:
    """One upstream in one process: holders, the heap of waiters, and its health."""

    parallel: int
    held: set[str] = field(default_factory=set)
    heap: list[tuple[int, int, str]] = field(default_factory=list)
    waiters: dict[str, asyncio.Future[Entry]] = field(default_factory=dict)
    fails: int = 0
    fails_until: float = 0.0
    # Account -> when a request of it last failed here (the window's start is purged on each count).
    failed_accounts: dict[str, float] = field(default_factory=dict)
    probe_until: float = 0.0
    down_until: float = 0.0

    def down_left(self) -> float:
        return max(0.0, self.down_until - time.monotonic())

    def healthy(self) -> None:
        self.fails = 0
        self.failed_accounts.clear()

    def mark_down(self, *, now: float, cooldown_s: float) -> None:
        self.healthy()
        self.probe_until = 0.0
        self.down_until = now + cooldown_s
        # Waiters stop waiting on a down upstream: each leaves the line with `down`.
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_result(Entry("down", retry_after_s=cooldown_s))
        self.waiters.clear()
        self.heap.clear()

    def grant(self) -> None:
        while self.heap and len(self.held) < self.parallel:
            _, _, ticket = heapq.heappop(self.heap)
            waiter = self.waiters.pop(ticket, None)
            if waiter is None or waiter.done():
                continue
            self.held.add(ticket)
            waiter.set_result(ACQUIRED)


class MemorySlots:
    """In-process slots and line (asyncio futures); valid only while one process serves."""

    def __init__(self, *, parallel: dict[str, int]) -> None:
        self.lines = {name: _Line(parallel=n) for name, n in parallel.items()}
        self._order = itertools.count()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def enter(self, *, upstream: str, ticket: str, priority: int, spill_depth: int | None) -> Entry:
        line = self.lines[upstream]
        left = line.down_left()
        if left > 0:
            return Entry("down", retry_after_s=left)
        depth = len(line.waiters)
        if spill_depth is not None and depth > spill_depth:
            return Entry("spill", depth=depth)
        if depth == 0 and len(line.held) < line.parallel:
            line.held.add(ticket)
            return ACQUIRED
        waiter: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        line.waiters[ticket] = waiter
        heapq.heappush(line.heap, (-priority, next(self._order), ticket))
        line.grant()
        return ACQUIRED if waiter.done() else Entry("queued", depth=depth + 1)

    async def wait(self, *, upstream: str, ticket: str, max_wait_s: float) -> Entry:
        line = self.lines[upstream]
        waiter = line.waiters.get(ticket)
        if waiter is None:
            return ACQUIRED if ticket in line.held else Entry("timeout")
        try:
            # Shielded: a cancelled request leaves the future to `release`, which may find it granted.
            return await asyncio.wait_for(asyncio.shield(waiter), max_wait_s)
        except TimeoutError:
            if waiter.done():
                return waiter.result()
            line.waiters.pop(ticket, None)
            waiter.cancel()
            return Entry("timeout")

    async def release(self, *, upstream: str, ticket: str, healthy: bool) -> bool:
        line = self.lines[upstream]
        waiter = line.waiters.pop(ticket, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()
        if ticket not in line.held:
            return False
        line.held.discard(ticket)
        if healthy:
            line.healthy()
        line.grant()
        return True

    async def failed(self, *, upstream: str, threshold: int, cooldown_s: float) -> bool:
        line = self.lines[upstream]
        now = time.monotonic()
        if now >= line.fails_until:
            line.fails = 0
        line.fails += 1
        line.fails_until = now + cooldown_s
        if line.fails < threshold:
            return False
        line.mark_down(now=now, cooldown_s=cooldown_s)
        return True

    async def failed_request(
        self, *, upstream: str, account: str, threshold: int, window_s: float, probe_s: float
    ) -> bool:
        line = self.lines[upstream]
        if line.down_left() > 0:
            return False
        now = time.monotonic()
        accounts = line.failed_accounts
        for stale in [name for name, at in accounts.items() if at <= now - window_s]:
            del accounts[stale]
        accounts[account] = now
        if len(accounts) < threshold or now < line.probe_until:
            return False
        line.probe_until = now + probe_s
        return True

    async def probed(self, *, upstream: str, healthy: bool, cooldown_s: float) -> bool:
        line = self.lines[upstream]
        line.probe_until = 0.0
        if healthy:
            line.failed_accounts.clear()
            return False
        line.mark_down(now=time.monotonic(), cooldown_s=cooldown_s)
        return True

    async def snapshot(self, *, upstream: str) -> Snapshot:
        line = self.lines[upstream]
        return Snapshot(in_use=len(line.held), waiting=count_tiers(list(line.waiters)), down_for_s=line.down_left())
