"""A worker's leases: credits it has reserved in the database for an account's next requests.

Without leases every request is two transactions on the account's balance row: the hold before it goes
upstream, the settlement after. With them, a worker reserves room for several requests at once (one
hold row, `lease_rows.grow`) and takes each request's hold from that room in memory; settlements are
written together, many requests in one transaction (`lease_rows.write_batch`), `batch_seconds` after
the first of them. The money stays exact:

- nothing is spent that is not reserved in the database: a request's hold comes out of the lease's
  spare room, which is part of the account's reserved_milli, so no number of workers or hosts can
  overspend a balance;
- every request still gets its own usage row and ledger row, and `settle` returns only once they are
  committed, as before; one request's data never fails another's: each charge is checked before it
  joins a batch, and the entries of a batch that fails are each written again on their own (batches.py);
- a lease only keeps spare room while its account is busy, and at most a LEASE_SHARE-th of what else
  is free, so little of a small balance is ever parked in another worker; an idle lease is given back
  after `idle_seconds`.

What a crash costs: the charges of the last `batch_seconds` are lost (the customer is billed less,
never more), and the lease's room stays reserved until the sweeper releases its row at expiry, as for
any hold of a crashed worker. A stopping worker writes what it has and gives its leases back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from plugins.credits.batches import Pending, answer
from plugins.credits.entries import checked
from plugins.credits.lease_rows import Charge, LeaseMove, Written, charge_written, grow, room, write_batch
from plugins.credits.ledger import Change, Ledger
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


@dataclass(eq=False, slots=True)
class Ticket:
    """One request's hold, taken from `lease`: settled at most once, however often settle runs."""

    lease: Lease
    amount_milli: int
    settled: bool = False


class Leases:
    """This worker's leases on the ledger's database (its plans and low mark size the low-credit event).
    `requests`: spare room for that many more requests like the last one; `ttl_seconds`: how long a lease
    row outlives a silent worker."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        requests: int,
        batch_seconds: float,
        idle_seconds: float,
        ttl_seconds: float,
    ) -> None:
        self.ledger = ledger
        self.db = ledger.db
        self.requests = requests
        self.batch_seconds = batch_seconds
        self.idle_seconds = idle_seconds
        self.ttl_seconds = ttl_seconds
        self.owner = f"lease {socket.gethostname()} {os.getpid()}"
        self._leases: dict[int, Lease] = {}
        self._pending: list[Pending] = []
        self._writing = asyncio.Lock()  # one transaction of this worker's leases at a time
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    # ---- the request path ----------------------------------------------------------------------------------

    def spare(self, account_id: int) -> int:
        lease = self._leases.get(account_id)
        return max(lease.spare, 0) if lease is not None else 0

    async def take(self, *, account_id: int, amount_milli: int, tier: str, patient: bool = True) -> Ticket | None:
        """Hold `amount_milli` for one request: from the lease's spare room when it covers it (no I/O),
        else after growing the lease; None when the account's free balance does not cover it.

        When it does not, but other workers hold some of the account's balance, a `patient` take tries
        once more after they have had the time to give idle room back, rather than refuse a request the
        balance pays for."""
        for attempt in range(2 if patient else 1):
            if attempt:
                await asyncio.sleep(self.idle_seconds + self.batch_seconds)
            lease = self._take_spare(account_id, amount_milli)
            if lease is not None:
                return Ticket(lease, amount_milli)
            # Shielded: a grow that commits after its caller is cancelled still lands in memory.
            growing = asyncio.ensure_future(self._grow_and_take(account_id, amount_milli, tier))
            try:
                lease, others = await asyncio.shield(growing)
            except asyncio.CancelledError:
                growing.add_done_callback(lambda done: self._untake(done, amount_milli))
                raise
            if lease is not None:
                return Ticket(lease, amount_milli)
            if not others:
                return None
        return None

    def _untake(self, growing: asyncio.Future[tuple[Lease | None, int]], amount: int) -> None:
        """The caller of a take that grew the lease went away: its hold goes back into spare room."""
        if growing.cancelled() or growing.exception() is not None:
            return
        lease, _ = growing.result()
        if lease is not None:
            lease.in_use -= amount
            lease.last_used = time.monotonic()

    def _take_spare(self, account_id: int, amount: int) -> Lease | None:
        lease = self._leases.get(account_id)
        if lease is None or lease.lost or lease.spare < amount:
            return None
        lease.in_use += amount
        lease.last_used = time.monotonic()
        lease.unit = amount
        return lease

    def _want(self, lease: Lease) -> int:
        """Spare room a busy lease keeps: room for `requests` more like its last one."""
        return lease.unit * self.requests

    def _lose(self, lease: Lease) -> None:
        """The sweeper released the lease's row (or its charges could not be written): stop using it."""
        lease.lost = True
        if self._leases.get(lease.account_id) is lease:
            del self._leases[lease.account_id]
        log.warning("lease lost", extra={"fields": {"account": lease.account_id, "lease": lease.id}})

    async def _grow_and_take(self, account_id: int, amount: int, tier: str) -> tuple[Lease | None, int]:
        """The lease with `amount` taken, or None and how much of the balance others hold."""
        async with self._writing:
            lease = self._take_spare(account_id, amount)  # another request may have grown it meanwhile
            if lease is not None:
                return lease, 0
            while True:
                lease = self._leases.get(account_id)
                exists = lease is not None
                if lease is None:
                    lease = Lease(os.urandom(12).hex(), account_id)
                grown = await grow(
                    self.db,
                    lease_id=lease.id,
                    exists=exists,
                    account_id=account_id,
                    need=amount - max(lease.spare, 0),
                    want=amount * self.requests,
                    unit=amount,
                    tier=tier,
                    owner=self.owner,
                    expires_at=self._expiry(),
                )
                if not grown.lost:
                    break
                # The sweeper released it (this worker looked dead for a lease's lifetime): start a new one.
                self._lose(lease)
            lease.free_seen = grown.free_milli
            if not grown.granted:
                return None, grown.reserved_milli - (lease.size if exists else 0)
            lease.size += grown.granted
            lease.renewed = time.monotonic()
            self._leases[account_id] = lease
            self._ensure_running()
            return self._take_spare(account_id, amount), 0

    async def settle(
        self, ticket: Ticket, *, charge_id: str, charge_milli: int, usage_row: dict[str, Any]
    ) -> Change | None:
        """Turn one request's hold into its charge; returns once its rows are committed. None when it was
        settled already, or its lease was lost (its row released by the sweeper): as for a lost hold,
        nothing is charged."""
        if ticket.settled:
            return None
        ticket.settled = True
        lease, hold_milli = ticket.lease, ticket.amount_milli
        charge_milli, usage_row = checked(charge_id, charge_milli, usage_row, hold_milli=hold_milli)
        lease.in_use -= hold_milli
        lease.last_used = time.monotonic()
        if lease.lost:
            log.warning("lease lost before settlement; not charged", extra={"fields": {"charge": charge_id}})
            return None
        # A charge above its hold (a route dearer than its hold assumed) takes the lease's spare room first
        # (which now includes this request's hold), then, when the batch is written, what else is free.
        charged = max(min(charge_milli, lease.spare), 0)
        lease.pending += charged
        done: asyncio.Future[Change | None] = asyncio.get_running_loop().create_future()
        charge = Charge(lease.id, lease.account_id, charge_id, charged, usage_row, wanted_milli=charge_milli)
        self._pending.append(Pending(charge, done))
        if self._stopping:
            await self.flush()  # no writer runs any more: this settlement writes itself
        else:
            self._ensure_running()
            self._wake.set()
        return await asyncio.shield(done)

    # ---- writing batches -----------------------------------------------------------------------------------

    def _expiry(self) -> datetime:
        return utcnow() + timedelta(seconds=self.ttl_seconds)

    def _ensure_running(self) -> None:
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
            if not self._leases and not self._pending:
                self._runner = None
                return

    async def flush(self, *, drop_all: bool = False) -> None:
        """Write every settled charge, give back idle leases' room (every lease's, with `drop_all`) and
        renew leases due for it, in one transaction."""
        async with self._writing:
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
            for lease in list(self._leases.values()):
                idle = lease.in_use == 0 and lease.pending == charged.get(lease.id, 0)
                drop = idle and (drop_all or now - lease.last_used >= self.idle_seconds)
                renew = now - lease.renewed >= self.ttl_seconds / 3
                if lease.id not in charged and not drop and not renew:
                    continue
                keep = room(self._want(lease), lease.free_seen, lease.unit)
                release = lease.spare if drop else max(lease.spare - keep, 0)
                moves.append(
                    LeaseMove(
                        lease.id,
                        lease.account_id,
                        release,
                        drop,
                        lease.spare - release,
                        0 if drop else self._want(lease),
                        lease.unit,
                        self._expiry(),
                    )
                )
                # Given back at once: requests taking room while the batch is written see it gone already.
                spent = charged.get(lease.id, 0)
                lease.size -= spent + release
                lease.pending -= spent
                if drop:
                    del self._leases[lease.account_id]
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
        lease = self._leases.get(c.account_id)
        if lease is None or lease.id != c.lease_id:
            log.warning("lease lost; charge not written", extra={"fields": {"id": c.charge_id}})
            answer([p], None)
            return
        move = LeaseMove(lease.id, lease.account_id, 0, False, lease.spare, 0, lease.unit, self._expiry())
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
                self._leases.setdefault(lease.account_id, lease)

        return undo

    def _apply(self, written: Written, moves: list[LeaseMove]) -> None:
        now = time.monotonic()
        by_id = {lease.id: lease for lease in self._leases.values()}
        for move in moves:
            lease = by_id.get(move.lease_id)
            if lease is None:
                continue
            if move.lease_id in written.lost:
                self._lose(lease)
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
        while (self._pending or self._leases) and time.monotonic() < deadline:
            try:
                await self.flush(drop_all=True)
            except Exception:
                log.exception("writing settled charges at shutdown failed")
                await asyncio.sleep(min(RETRY_SECONDS, max(deadline - time.monotonic(), 0)))
            if not self._pending and all(lease.in_use for lease in self._leases.values()):
                break
