"""Every write to a balance: holds, settlements, grants and adjustments, each one transaction.

What stays true, on any number of workers and hosts: a balance always equals the sum of its ledger rows,
and `reserved_milli` the sum of its live holds; money is integer milli-credits; a credit is idempotent by
(kind, reference); only an adjustment takes credits away, and never below the available balance.

Each money transaction starts with a write (the insert of a hold, an upsert of the balance row, or the
DELETE of a hold), so SQLite's write lock is held before anything is read, and on MariaDB the balance row
is locked (written, or read FOR UPDATE) before its values are used: what a transaction reads cannot change
under it. A request's hold, settlement and release are in hold_rows.py; grants and adjustments below.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson
import pymysql
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.db import Database
from edge.services import BalanceTooLow
from plugins.credits import hold_rows
from plugins.credits import scopes as spend_scopes
from plugins.credits.entries import checked
from plugins.credits.rows import (
    Change,
    append_entry,
    entry_values,
    in_transaction,
    ledger_row,
    lock_balance,
    low_flag,
    read_balance,
    utcnow,
)
from plugins.credits.scopes import Scope
from plugins.credits.tables import balances, ledger

T = TypeVar("T")

# What a lost or failing database raises, through SQLAlchemy (SQLite, MariaDB) or a procedure call (MariaDB).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (sa.exc.DBAPIError, pymysql.err.MySQLError, OSError)

# Kinds that add to a balance; only `adjustment` may also take away.
CREDIT_KINDS = frozenset({"grant", "subscription", "topup", "refund", "adjustment"})


class Ledger:
    """The credits tables behind one Database. `plans` (tier -> milli-credits a month) sizes the low-credit
    warning.

    On MariaDB/MySQL a hold and a settlement are each one stored-procedure call (hold_rows.py), so an
    account's balance row is locked for microseconds rather than for several round trips of a busy worker.
    """

    def __init__(self, db: Database, *, plans: Mapping[str, int], low_percent: int) -> None:
        self.db = db
        self.plans = dict(plans)
        self.low_percent = low_percent
        self._plans_json = orjson.dumps(self.plans).decode()
        # Holds being given back after their request was cancelled (strong references until they finish).
        self._cleanups: set[asyncio.Future[None]] = set()
        # The hold's own transaction, behind the cancellation guard of `hold`.
        self._hold = functools.partial(hold_rows.take, db)

    def plan_milli(self, tier: str | None) -> int:
        return self.plans.get(tier or "", 0)

    async def transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        return await in_transaction(self.db, work)

    # ---- holds (hold_rows.py) ------------------------------------------------------------------------------

    async def hold(
        self,
        *,
        account_id: int,
        amount_milli: int,
        request_id: str,
        tier: str,
        expires_at: datetime,
        scopes: Sequence[Scope] = (),
    ) -> str | None:
        """Take `amount_milli` from the available balance, or return None when it is not there; count it
        against every spend scope, or raise LimitReached for the first it would take past its limit.

        Safe against the caller being cancelled (a client that disconnects while its hold is taken): the
        transaction may commit all the same, so it is awaited to the end and a hold it took is given
        straight back, rather than staying reserved until the sweeper expires it."""
        taking = asyncio.ensure_future(
            self._hold(
                account_id=account_id,
                amount_milli=amount_milli,
                request_id=request_id,
                tier=tier,
                expires_at=expires_at,
                scopes=scopes,
            )
        )
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            giving_back = asyncio.ensure_future(self._give_back(taking, account_id))
            self._cleanups.add(giving_back)
            giving_back.add_done_callback(self._cleanups.discard)
            raise

    async def _give_back(self, taking: asyncio.Future[str | None], account_id: int) -> None:
        try:
            hold_id = await taking
        except Exception:
            return  # nothing was taken
        if hold_id is not None:
            # The hold's expiry is in the future: a cutoff beyond any expiry releases it now.
            cutoff = utcnow() + timedelta(days=3650)
            await hold_rows.release(self.db, hold_id=hold_id, account_id=account_id, cutoff=cutoff)

    async def settle(
        self,
        *,
        hold_id: str,
        account_id: int,
        hold_milli: int,
        charge_milli: int,
        usage_row: dict[str, Any],
        scoped: bool = False,
    ) -> Change | None:
        """Replace the hold with the charge and write the usage row, once: None when the hold is gone
        (settled already, or released by the sweeper). `scoped`: the hold counted against spend scopes."""
        charge_milli, usage_row = checked(hold_id, charge_milli, usage_row, hold_milli=hold_milli)
        return await hold_rows.settle(
            self.db,
            hold_id=hold_id,
            account_id=account_id,
            hold_milli=hold_milli,
            charge_milli=charge_milli,
            usage_row=usage_row,
            plans=self.plans,
            plans_json=self._plans_json,
            low_percent=self.low_percent,
            scoped=scoped,
        )

    async def release_expired(self, *, now: datetime | None = None, limit: int = 500) -> int:
        """Release holds past their expiry (left by a crashed worker); returns how many were released."""
        return await hold_rows.release_expired(self.db, cutoff=now or utcnow(), limit=limit)

    # ---- credits -------------------------------------------------------------------------------------------

    async def credit(
        self,
        *,
        account_id: int,
        amount_milli: int,
        kind: str,
        reference: str,
        actor: str | None = None,
        reason: str | None = None,
        announce_low: Callable[[AsyncConnection, Change], Awaitable[None]] | None = None,
        conn: AsyncConnection | None = None,
    ) -> Change:
        """Add `amount_milli` (negative only for an adjustment, never below the available balance).

        Idempotent by (kind, reference): the same pair again returns the first row with `created=False`.
        `announce_low(conn, change)` runs in the transaction when the balance crosses the low-credit line.
        With `conn`, the credit is written in the caller's transaction (committed or rolled back with the
        caller's own writes, and not retried here on a deadlock: the caller's transaction is).
        """
        if kind not in CREDIT_KINDS:
            raise ValueError(f"unknown credit kind {kind!r}")
        if isinstance(amount_milli, bool) or not isinstance(amount_milli, int) or amount_milli == 0:
            raise ValueError("amount_milli must be a non-zero integer")
        if amount_milli < 0 and kind != "adjustment":
            raise ValueError("only an adjustment may take credits away")

        async def work(conn: AsyncConnection) -> Change:
            now = await lock_balance(conn, account_id)
            state = await read_balance(conn, account_id)
            existing = (
                await conn.execute(ledger.select().where(ledger.c.kind == kind, ledger.c.reference == reference))
            ).first()
            if existing is not None:
                if int(existing.account_id) != account_id:
                    raise ValueError(f"reference {reference!r} belongs to another account")
                return Change(int(state.balance_milli), state.tier, ledger_row(existing._mapping), created=False)
            available = state.balance_milli - state.reserved_milli
            if available + amount_milli < 0:
                raise BalanceTooLow(int(available))
            balance = state.balance_milli + amount_milli
            flag, crossed = low_flag(
                balance=balance,
                plan=self.plan_milli(state.tier),
                percent=self.low_percent,
                notified=bool(state.low_notified),
            )
            values: dict[str, Any] = {"balance_milli": balance, "low_notified": flag}
            if amount_milli > 0:
                values["exhausted_notified"] = False
            await conn.execute(balances.update().where(balances.c.account_id == account_id).values(**values))
            row = await append_entry(
                conn,
                entry_values(
                    account_id=account_id,
                    kind=kind,
                    amount=amount_milli,
                    balance_after=balance,
                    reference=reference,
                    now=now,
                    actor=actor,
                    reason=reason,
                ),
            )
            change = Change(balance, state.tier, row, crossed_low=crossed)
            if crossed and announce_low is not None:
                await announce_low(conn, change)
            return change

        if conn is not None:
            return await work(conn)
        return await self.transaction(work)

    async def mark_exhausted(
        self, account_id: int, *, announce: Callable[[AsyncConnection], Awaitable[None]] | None = None
    ) -> bool:
        """Note that a request was refused; True only the first time since the last credit, and then
        `announce(conn)` runs in the transaction that marks it."""
        # A plain read first: a client hammering an empty account must not queue on the row's write lock.
        async with self.db.connect() as conn:
            if (
                await conn.execute(sa.select(balances.c.exhausted_notified).where(balances.c.account_id == account_id))
            ).scalar():
                return False

        async def work(conn: AsyncConnection) -> bool:
            await lock_balance(conn, account_id)
            marked = await conn.execute(
                balances.update()
                .where(
                    balances.c.account_id == account_id,
                    balances.c.exhausted_notified == sa.false(),
                )
                .values(exhausted_notified=True)
            )
            if marked.rowcount != 1:
                return False
            if announce is not None:
                await announce(conn)
            return True

        return await self.transaction(work)

    async def rooms(self, scopes: Sequence[Scope], *, account_id: int) -> list[tuple[Scope, int]]:
        """What each scope may still hold: its limit less what it spent and holds in its period."""
        if not scopes:
            return []
        rooms = []
        async with self.db.connect() as conn:
            for scope in scopes:
                spent, held = await spend_scopes.standing(conn, scope, account_id=account_id)
                rooms.append((scope, scope.limit.limit_milli - spent - held))
        return rooms

    async def state(self, account_id: int) -> dict[str, int]:
        async with self.db.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(balances.c.balance_milli, balances.c.reserved_milli).where(
                        balances.c.account_id == account_id
                    )
                )
            ).first()
        balance, reserved = (int(row[0]), int(row[1])) if row is not None else (0, 0)
        return {
            "account_id": account_id,
            "balance_milli": balance,
            "reserved_milli": reserved,
            "available_milli": balance - reserved,
        }
