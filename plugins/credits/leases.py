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
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from plugins.credits.batches import Pending
from plugins.credits.entries import checked
from plugins.credits.lease_book import Lease, LeaseBook
from plugins.credits.lease_rows import Charge, grow
from plugins.credits.ledger import Ledger
from plugins.credits.rows import Change

log = logging.getLogger("resayil.credits")


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
        self.owner = f"lease {socket.gethostname()} {os.getpid()}"
        # The leases themselves and the writing of their rows: lease_book.py.
        self.book = LeaseBook(ledger, requests, batch_seconds, idle_seconds, ttl_seconds)

    # ---- the request path ----------------------------------------------------------------------------------

    def spare(self, account_id: int) -> int:
        lease = self.book.leases.get(account_id)
        return max(lease.spare, 0) if lease is not None else 0

    async def take(self, *, account_id: int, amount_milli: int, tier: str, patient: bool = True) -> Ticket | None:
        """Hold `amount_milli` for one request: from the lease's spare room when it covers it (no I/O),
        else after growing the lease; None when the account's free balance does not cover it.

        When it does not, but other workers hold some of the account's balance, a `patient` take tries
        once more after they have had the time to give idle room back, rather than refuse a request the
        balance pays for."""
        for attempt in range(2 if patient else 1):
            if attempt:
                await asyncio.sleep(self.book.idle_seconds + self.book.batch_seconds)
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
        lease = self.book.leases.get(account_id)
        if lease is None or lease.lost or lease.spare < amount:
            return None
        lease.in_use += amount
        lease.last_used = time.monotonic()
        lease.unit = amount
        return lease

    async def _grow_and_take(self, account_id: int, amount: int, tier: str) -> tuple[Lease | None, int]:
        """The lease with `amount` taken, or None and how much of the balance others hold."""
        async with self.book.writing:
            lease = self._take_spare(account_id, amount)  # another request may have grown it meanwhile
            if lease is not None:
                return lease, 0
            while True:
                lease = self.book.leases.get(account_id)
                exists = lease is not None
                if lease is None:
                    lease = Lease(os.urandom(12).hex(), account_id)
                grown = await grow(
                    self.db,
                    lease_id=lease.id,
                    exists=exists,
                    account_id=account_id,
                    need=amount - max(lease.spare, 0),
                    want=amount * self.book.requests,
                    unit=amount,
                    tier=tier,
                    owner=self.owner,
                    expires_at=self.book.expiry(),
                )
                if not grown.lost:
                    break
                # The sweeper released it (this worker looked dead for a lease's lifetime): start a new one.
                self.book.lose(lease)
            lease.free_seen = grown.free_milli
            if not grown.granted:
                return None, grown.reserved_milli - (lease.size if exists else 0)
            lease.size += grown.granted
            lease.renewed = time.monotonic()
            self.book.leases[account_id] = lease
            self.book.ensure_running()
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
        await self.book.add(Pending(charge, done))
        return await asyncio.shield(done)

    # ---- lifecycle -----------------------------------------------------------------------------------------

    async def stop(self, *, within: float = 10.0) -> None:
        """Write what is settled and give every idle lease back (a lease still in use is left to expire)."""
        await self.book.stop(within=within)
