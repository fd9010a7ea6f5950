"""Every write to a balance: holds, settlements, grants and adjustments, each one transaction.

Each money transaction starts with a write (the insert of a hold, an upsert of the balance row, or the
DELETE of a hold), so SQLite's write lock is held before anything is read, and on MariaDB the balance row
is locked (written, or read FOR UPDATE) before its values are used: what a transaction reads cannot change
under it, on any number of workers and hosts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson
import pymysql
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.db import Database
from plugins.credits.entries import checked, log_capped
from plugins.credits.rows import (
    append_entry,
    entry_values,
    in_transaction,
    ledger_row,
    lock_balance,
    read_balance,
    utcnow,
)
from plugins.credits.tables import balances, holds, ledger, usage

log = logging.getLogger("resayil.credits")
T = TypeVar("T")

# Built once with bound parameters (see rows.py). _TAKE is the one conditional UPDATE that makes
# overspending impossible: it only matches while balance - reserved still covers the hold.
_TAKE = (
    balances.update()
    .where(
        balances.c.account_id == sa.bindparam("b_account", type_=balances.c.account_id.type),
        balances.c.balance_milli - balances.c.reserved_milli >= sa.bindparam("b_amount", type_=sa.BigInteger()),
    )
    .values(
        reserved_milli=balances.c.reserved_milli + sa.bindparam("b_amount", type_=sa.BigInteger()),
        tier=sa.bindparam("b_tier", type_=balances.c.tier.type),
        updated_at=sa.bindparam("b_now", type_=balances.c.updated_at.type),
    )
)
_ADD_HOLD = holds.insert()
_DROP_HOLD = holds.delete().where(holds.c.id == sa.bindparam("b_hold", type_=holds.c.id.type))
# SET takes the columns named in the parameters.
_SET_BALANCE = balances.update().where(
    balances.c.account_id == sa.bindparam("b_account", type_=balances.c.account_id.type)
)
_ADD_USAGE = usage.insert()
_COST_USAGE = usage.update().where(usage.c.charge_id == sa.bindparam("b_charge", type_=usage.c.charge_id.type))


# The usage row's columns in the order credits_settle takes them after its first seven parameters.
_USAGE_ARGS = (
    "request_id",
    "user_id",
    "key_id",
    "model",
    "endpoint",
    "route",
    "upstream",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "usage_source",
    "multiplier",
    "status",
    "outcome",
    "latency_ms",
    "ttft_ms",
    "day",
)


class _NotCovered(Exception):
    """The available balance does not cover a hold: its transaction rolls back."""


# What a lost or failing database raises, through SQLAlchemy (SQLite, MariaDB) or a procedure call (MariaDB).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (sa.exc.DBAPIError, pymysql.err.MySQLError, OSError)

# Kinds that add to a balance; only `adjustment` may also take away.
CREDIT_KINDS = frozenset({"grant", "subscription", "topup", "refund", "adjustment"})


class BalanceTooLow(Exception):
    """A negative adjustment would take the available balance below zero."""

    def __init__(self, available_milli: int) -> None:
        super().__init__(f"available balance is {available_milli} milli-credits")
        self.available_milli = available_milli


def low_flag(*, balance: int, plan: int, percent: int, notified: bool) -> tuple[bool, bool]:
    """(the flag to store, whether the balance has just crossed below `percent` of the plan)."""
    if plan <= 0:
        return notified, False
    below = balance * 100 < plan * percent
    return below, below and not notified


@dataclass(frozen=True, slots=True)
class Change:
    """What one settlement or credit did: the ledger row (None when nothing was charged)."""

    balance_milli: int
    tier: str | None
    row: dict[str, Any] | None = None
    created: bool = True
    crossed_low: bool = False
    charged_milli: int = 0


class Ledger:
    """The credits tables behind one Database. `plans` (tier -> milli-credits a month) sizes the low-credit
    warning.

    On MariaDB/MySQL a hold and a settlement are each one stored-procedure call (migration credits_0002):
    the same transaction as below, run inside the server in one round trip, so an account's balance row is
    locked for microseconds rather than for several round trips of a busy worker. SQLite runs the
    statements below; the tests run every money case against both.
    """

    def __init__(self, db: Database, *, plans: Mapping[str, int], low_percent: int) -> None:
        self.db = db
        self.plans = dict(plans)
        self.low_percent = low_percent
        self._plans_json = orjson.dumps(self.plans).decode()
        # Holds being given back after their request was cancelled (strong references until they finish).
        self._cleanups: set[asyncio.Future[None]] = set()

    def plan_milli(self, tier: str | None) -> int:
        return self.plans.get(tier or "", 0)

    async def transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        return await in_transaction(self.db, work)

    # ---- holds ---------------------------------------------------------------------------------------------

    async def hold(
        self, *, account_id: int, amount_milli: int, request_id: str, tier: str, expires_at: datetime
    ) -> str | None:
        """Take `amount_milli` from the available balance, or return None when it is not there.

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
            await self._release(hold_id=hold_id, account_id=account_id, cutoff=utcnow() + timedelta(days=3650))

    async def _hold(
        self, *, account_id: int, amount_milli: int, request_id: str, tier: str, expires_at: datetime
    ) -> str | None:
        hold_id = os.urandom(12).hex()
        if self.db.procedures is not None:
            args = (hold_id, account_id, request_id[:128], amount_milli, tier[:32], utcnow(), expires_at)
            taken = await self.db.procedures.call("credits_hold", args)
            return hold_id if taken is not None and taken[0] == 1 else None

        async def work(conn: AsyncConnection) -> str:
            now = utcnow()
            # The hold row first and the balance row last: every request of the account needs the balance
            # row, so it stays locked for the shortest time, one statement and the commit.
            await conn.execute(
                _ADD_HOLD,
                {
                    "id": hold_id,
                    "account_id": account_id,
                    "request_id": request_id[:128],
                    "amount_milli": amount_milli,
                    "created_at": now,
                    "expires_at": expires_at,
                },
            )
            # The one conditional UPDATE that makes overspending impossible: it only matches while
            # balance - reserved still covers the hold, and the database applies it atomically.
            taken = await conn.execute(
                _TAKE, {"b_account": account_id, "b_amount": amount_milli, "b_tier": tier[:32], "b_now": now}
            )
            if taken.rowcount != 1:
                raise _NotCovered  # rolls the hold row back with the transaction
            return hold_id

        try:
            return await self.transaction(work)
        except _NotCovered:
            return None

    async def settle(
        self, *, hold_id: str, account_id: int, hold_milli: int, charge_milli: int, usage_row: dict[str, Any]
    ) -> Change | None:
        """Replace the hold with the charge and write the usage row, once: None when the hold is gone
        (settled already, or released by the sweeper)."""
        charge_milli, usage_row = checked(hold_id, charge_milli, usage_row, hold_milli=hold_milli)
        if self.db.procedures is not None:
            return await self._settle_in_server(
                hold_id=hold_id,
                account_id=account_id,
                hold_milli=hold_milli,
                charge_milli=charge_milli,
                usage_row=usage_row,
            )

        async def work(conn: AsyncConnection) -> Change | None:
            # Deleting the hold is the guard: of any number of settlements (and the sweeper) one deletes it.
            gone = await conn.execute(_DROP_HOLD, {"b_hold": hold_id})
            if gone.rowcount != 1:
                return None
            now = utcnow()
            # The usage row before the balance row is locked, for the same reason as in `hold`; its cost is
            # corrected below in the rare case the charge is capped.
            await conn.execute(
                _ADD_USAGE,
                {
                    **usage_row,
                    "charge_id": hold_id,
                    "account_id": account_id,
                    "cost_milli": charge_milli,
                    "created_at": now,
                },
            )
            state = await read_balance(conn, account_id, for_update=True)
            reserved = state.reserved_milli - hold_milli
            # Never below what the other live holds need: a charge beyond this hold takes only what is free.
            charged = max(min(charge_milli, state.balance_milli - reserved), 0)
            if charged < charge_milli:
                await conn.execute(_COST_USAGE, {"b_charge": hold_id, "cost_milli": charged})
                log_capped(account_id, charge_milli, charged)
            balance = state.balance_milli - charged
            flag, crossed = low_flag(
                balance=balance,
                plan=self.plan_milli(state.tier),
                percent=self.low_percent,
                notified=bool(state.low_notified),
            )
            await conn.execute(
                _SET_BALANCE,
                {
                    "b_account": account_id,
                    "balance_milli": balance,
                    "reserved_milli": reserved,
                    "low_notified": flag,
                    "updated_at": now,
                },
            )
            row = None
            if charged:
                row = await append_entry(
                    conn,
                    entry_values(
                        account_id=account_id,
                        kind="usage",
                        amount=-charged,
                        balance_after=balance,
                        reference=hold_id,
                        now=now,
                    ),
                )
            return Change(balance, state.tier, row, crossed_low=crossed, charged_milli=charged)

        return await self.transaction(work)

    async def _settle_in_server(
        self, *, hold_id: str, account_id: int, hold_milli: int, charge_milli: int, usage_row: dict[str, Any]
    ) -> Change | None:
        assert self.db.procedures is not None
        now = utcnow()
        args = (
            hold_id,
            account_id,
            hold_milli,
            charge_milli,
            self._plans_json,
            self.low_percent,
            now,
            *(usage_row[column] for column in _USAGE_ARGS),
        )
        result = await self.db.procedures.call("credits_settle", args)
        if result is None or result[0] != 1:
            return None
        _, balance, tier, charged, row_id, crossed = result
        log_capped(account_id, charge_milli, charged)
        row = None
        if row_id is not None:
            row = ledger_row(
                {
                    "id": row_id,
                    "account_id": account_id,
                    "kind": "usage",
                    "amount_milli": -charged,
                    "balance_after_milli": balance,
                    "reference": hold_id,
                    "actor": None,
                    "reason": None,
                    "created_at": now,
                }
            )
        return Change(int(balance), tier, row, crossed_low=bool(crossed), charged_milli=int(charged))

    async def release_expired(self, *, now: datetime | None = None, limit: int = 500) -> int:
        """Release holds past their expiry (left by a crashed worker); returns how many were released."""
        cutoff = now or utcnow()
        released = 0
        while True:
            async with self.db.connect() as conn:
                expired = (
                    await conn.execute(
                        sa.select(holds.c.id, holds.c.account_id).where(holds.c.expires_at < cutoff).limit(limit)
                    )
                ).all()
            for hold_id, account_id in expired:
                released += await self._release(hold_id=hold_id, account_id=account_id, cutoff=cutoff)
            if len(expired) < limit:
                return released

    async def _release(self, *, hold_id: str, account_id: int, cutoff: datetime) -> int:
        async with self.db.connect() as conn:
            amount = (await conn.execute(sa.select(holds.c.amount_milli).where(holds.c.id == hold_id))).scalar()
        if amount is None:
            return 0

        async def work(conn: AsyncConnection) -> int:
            # The same guard as settle, in the same order (hold row, then balance row): exactly one wins.
            gone = await conn.execute(holds.delete().where(holds.c.id == hold_id, holds.c.expires_at < cutoff))
            if gone.rowcount != 1:
                return 0
            await conn.execute(
                balances.update()
                .where(balances.c.account_id == account_id)
                .values(reserved_milli=balances.c.reserved_milli - amount, updated_at=utcnow())
            )
            log.warning(
                "released a hold",
                extra={
                    "fields": {
                        "account": account_id,
                        "hold": hold_id,
                        "amount_milli": int(amount),
                        "why": "expired" if cutoff <= utcnow() else "its request was cancelled",
                    }
                },
            )
            return 1

        return await self.transaction(work)

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
    ) -> Change:
        """Add `amount_milli` (negative only for an adjustment, never below the available balance).

        Idempotent by (kind, reference): the same pair again returns the first row with `created=False`.
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
            return Change(balance, state.tier, row, crossed_low=crossed)

        return await self.transaction(work)

    async def mark_exhausted(self, account_id: int) -> bool:
        """Note that a request was refused; True only the first time since the last credit."""
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
            return bool(marked.rowcount == 1)

        return await self.transaction(work)

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
