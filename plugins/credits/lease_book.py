"""This worker's leases in memory and their one writer (see leases.py): settled charges written in
batches, idle leases' room given back, leases renewed before their rows expire.

What stays true:

- one transaction of this worker's leases runs at a time (`writing`), growing a lease included;
- memory never counts on room the database does not reserve: room given back and charges written leave
  a lease in memory before their transaction runs, and come back only if it fails; room granted is added
  only once its transaction committed;
- every settled charge is answered exactly once: with the balance it left, or None when its lease was
  lost, when its batch committed but the answer did not come back, or when, written on its own, it failed
  ATTEMPTS times (its charge is lost, never written twice: a batch whose commit reported an error is
  looked up before it is tried again);
- a failed batch is not tried again whole: each of its entries is written on its own (batches.py), not
  before RETRY_SECONDS, so one entry that cannot be written never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from edge.db import Database
from plugins.credits.batches import Pending, answer
from plugins.credits.lease_rows import LeaseMove, Written, charge_written, room, write_batch
from plugins.credits.ledger import Ledger
from plugins.credits.rows import utcnow

log = logging.getLogger("resayil.credits")

# After a failed batch, the next attempt waits this long; an entry that failed this many times on its own
# is given up (its charge is lost, its room goes back to its lease).
RETRY_SECONDS = 1.0
ATTEMPTS = 5


@dataclass(eq=False, slots=True)
class Lease:
    """One account's room in this worker. `size` is what the hold row reserves; requests in flight use
    `in_use` of it and settled charges not yet written `pending`; the rest is spare."""

    id: str
    account_id: int
    size: int = 0
    in_use: int = 0
    pending: int = 0
    unit: int = 0  # the last request's hold: room is kept in whole units of it
    free_seen: int = 0  # the account's free balance outside every hold, as of our last transaction
    last_used: float = field(default_factory=time.monotonic)
    renewed: float = field(default_factory=time.monotonic)
    lost: bool = False

    @property
    def spare(self) -> int:
        return self.size - self.in_use - self.pending


@dataclass(eq=False)
class LeaseBook:
    """This worker's leases by account, the settled charges waiting to be written, and the task that
    writes them. `requests`, `batch_seconds`, `idle_seconds` and `ttl_seconds` as for `Leases`."""

    ledger: Ledger
    requests: int
    batch_seconds: float
    idle_seconds: float
    ttl_seconds: float
    leases: dict[int, Lease] = field(init=False, default_factory=dict)
    # One transaction of this worker's leases at a time.
    writing: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    _pending: list[Pending] = field(init=False, default_factory=list)
    _wake: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _runner: asyncio.Task[None] | None = field(init=False, default=None)
    _stopping: bool = field(init=False, default=False)

    @property
    def db(self) -> Database:
        return self.ledger.db

    async def add(self, pending: Pending) -> None:
        """Queue a settled charge for the next batch (written at once when the worker is stopping)."""
        self._pending.append(pending)
        if self._stopping:
            await self.flush()  # no writer runs any more: this settlement writes itself
        else:
            self.ensure_running()
            self._wake.set()

    def want(self, lease: Lease) -> int:
        """Spare room a busy lease keeps: room for `requests` more like its last one."""
        return lease.unit * self.requests

    def lose(self, lease: Lease) -> None:
        """The sweeper released the lease's row (or its charges could not be written): stop using it."""
        lease.lost = True
        if self.leases.get(lease.account_id) is lease:
            del self.leases[lease.account_id]
        log.warning("lease lost", extra={"fields": {"account": lease.account_id, "lease": lease.id}})

    def expiry(self) -> datetime:
        return utcnow() + timedelta(seconds=self.ttl_seconds)

    def ensure_running(self) -> None:
        if self._runner is None and not self._stopping:
            self._runner = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.idle_seconds / 2)
                await asyncio.sleep(self.batch_seconds)  # let the batch fill
            except TimeoutError:
                pass  # a look at idle leases and leases due for renewal
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("writing settled charges failed; trying again")
                await asyncio.sleep(RETRY_SECONDS)
                self._wake.set()
            if not self.leases and not self._pending:
                self._runner = None
                return

    async def flush(self, *, drop_all: bool = False) -> None:
        """Write every settled charge, give back idle leases' room (every lease's, with `drop_all`) and
        renew leases due for it, in one transaction."""
        async with self.writing:
            now = time.monotonic()
            for p in [p for p in self._pending if p.alone and (self._stopping or p.not_before <= now)]:
                self._pending.remove(p)
                await self._write_alone(p)
            batch = [p for p in self._pending if not p.alone]
            self._pending = [p for p in self._pending if p.alone]
            charged: dict[str, int] = {}
            for p in batch:
                charged[p.charge.lease_id] = charged.get(p.charge.lease_id, 0) + p.charge.charged_milli
            moves: list[LeaseMove] = []
            undo: list[Callable[[], None]] = []
            for lease in list(self.leases.values()):
                idle = lease.in_use == 0 and lease.pending == charged.get(lease.id, 0)
                drop = idle and (drop_all or now - lease.last_used >= self.idle_seconds)
                renew = now - lease.renewed >= self.ttl_seconds / 3
                if lease.id not in charged and not drop and not renew:
                    continue
                keep = room(self.want(lease), lease.free_seen, lease.unit)
                release = lease.spare if drop else max(lease.spare - keep, 0)
                moves.append(
                    LeaseMove(
                        lease.id,
                        lease.account_id,
                        release,
                        drop,
                        lease.spare - release,
                        0 if drop else self.want(lease),
                        lease.unit,
                        self.expiry(),
                    )
                )
                # Given back at once: requests taking room while the batch is written see it gone already.
                spent = charged.get(lease.id, 0)
                lease.size -= spent + release
                lease.pending -= spent
                if drop:
                    del self.leases[lease.account_id]
                undo.append(self._undoer(lease, spent, release, drop))
            moving = {m.lease_id for m in moves}
            for p in batch:
                if p.charge.lease_id not in moving and not p.done.done():
                    log.warning("lease lost; charge not written", extra={"fields": {"id": p.charge.charge_id}})
                    p.done.set_result(None)
            batch = [p for p in batch if p.charge.lease_id in moving]
            if not moves:
                return
            try:
                written = await write_batch(
                    self.db,
                    charges=[p.charge for p in batch],
                    moves=moves,
                    plans=self.ledger.plans,
                    low_percent=self.ledger.low_percent,
                )
            except BaseException as exc:
                if isinstance(exc, Exception) and batch and await self._committed(batch[0].charge.charge_id):
                    # The connection failed after the commit went through: written, only the answer is lost.
                    log.warning("a batch of charges was committed though its commit reported an error")
                    answer(batch, None)
                    return
                for step in undo:
                    step()
                for p in batch:
                    p.alone = True  # the failure may be one entry's: each is written on its own next time
                self._pending[:0] = batch
                raise
            self._apply(written, moves)
            answer(batch, written)

    async def _write_alone(self, p: Pending) -> None:
        """One entry of a batch that failed, in a transaction of its own that moves only its lease's row."""
        c = p.charge
        lease = self.leases.get(c.account_id)
        if lease is None or lease.id != c.lease_id:
            log.warning("lease lost; charge not written", extra={"fields": {"id": c.charge_id}})
            answer([p], None)
            return
        move = LeaseMove(lease.id, lease.account_id, 0, False, lease.spare, 0, lease.unit, self.expiry())
        lease.size -= c.charged_milli
        lease.pending -= c.charged_milli
        try:
            written = await write_batch(
                self.db, charges=[c], moves=[move], plans=self.ledger.plans, low_percent=self.ledger.low_percent
            )
        except BaseException as exc:
            failed = isinstance(exc, Exception)  # else cancelled: tried again, not counted
            if failed and await self._committed(c.charge_id):
                answer([p], None)
                return
            lease.size += c.charged_milli
            p.attempts += failed
            if not failed or p.attempts < ATTEMPTS:
                lease.pending += c.charged_milli
                p.not_before = time.monotonic() + RETRY_SECONDS
                self._pending.append(p)
                if not failed:
                    raise
                log.warning("a settled charge could not be written; trying again", exc_info=True)
                return
            # Its room was never spent in the database: it stays the lease's, spare again.
            log.exception(
                "a settled charge could not be written; it is lost", extra={"fields": {"charge": c.charge_id}}
            )
            answer([p], None)
            return
        self._apply(written, [move])
        answer([p], written)

    async def _committed(self, charge_id: str) -> bool:
        try:
            return await charge_written(self.db, charge_id)
        except Exception:
            return False  # the database is still away: the batch will be tried again

    def _undoer(self, lease: Lease, spent: int, release: int, drop: bool) -> Callable[[], None]:
        def undo() -> None:
            lease.size += spent + release
            lease.pending += spent
            if drop and not lease.lost:
                self.leases.setdefault(lease.account_id, lease)

        return undo

    def _apply(self, written: Written, moves: list[LeaseMove]) -> None:
        now = time.monotonic()
        by_id = {lease.id: lease for lease in self.leases.values()}
        for move in moves:
            lease = by_id.get(move.lease_id)
            if lease is None:
                continue
            if move.lease_id in written.lost:
                self.lose(lease)
                continue
            lease.size += written.granted.get(move.lease_id, 0)
            lease.free_seen = written.free.get(move.lease_id, lease.free_seen)
            lease.renewed = now

    # ---- lifecycle -----------------------------------------------------------------------------------------

    async def stop(self, *, within: float = 10.0) -> None:
        """Write what is settled and give every idle lease back (a lease still in use is left to expire)."""
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
            self._runner = None
        deadline = time.monotonic() + within
        while (self._pending or self.leases) and time.monotonic() < deadline:
            try:
                await self.flush(drop_all=True)
            except Exception:
                log.exception("writing settled charges at shutdown failed")
                await asyncio.sleep(min(RETRY_SECONDS, max(deadline - time.monotonic(), 0)))
            if not self._pending and all(lease.in_use for lease in self.leases.values()):
                break
