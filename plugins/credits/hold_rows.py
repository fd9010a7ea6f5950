"""The three transactions of one request's hold: take it, settle it, release it (see ledger.py).

What stays true, on any number of workers and hosts:

- nothing is overspent: a hold is taken by one conditional UPDATE that only matches while the balance less
  what is reserved still covers it, applied atomically by the database;
- a hold ends exactly once: settling and releasing both start by deleting its row, so of any number of
  settlements and sweepers, one wins and the others change nothing;
- a charge never takes what other live holds need: one beyond its hold takes only what is free;
- each transaction starts with a write (the hold row, or its DELETE), so SQLite's write lock is held
  before anything is read, and on MariaDB the balance row is locked before its values are used; the
  balance row comes last, so it stays locked for the shortest time.

A request whose key (or member) has a spend limit also takes its hold against that limit's scope, in the same
transaction, before the balance row (scopes.py); settling or releasing the hold gives the scope back its share.

On MariaDB/MySQL the hold and the settlement are each one stored-procedure call (migrations credits_0002, 0003):
the same transaction, run inside the server in one round trip. SQLite runs the statements below; the
tests run every money case against both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.db import Database
from plugins.credits import rollups
from plugins.credits import scopes as spend_scopes
from plugins.credits.entries import log_capped
from plugins.credits.rows import (
    Change,
    append_entry,
    entry_values,
    in_transaction,
    ledger_row,
    low_flag,
    read_balance,
    utcnow,
)
from plugins.credits.scopes import LimitReached, Scope
from plugins.credits.tables import balances, holds, usage

log = logging.getLogger("resayil.credits")

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


# The usage row's columns in the order credits_settle takes them after its first eight parameters: the
# table's order, without those the procedure fills in itself (the id, the hold, the account, the cost, the time).
_USAGE_ARGS = tuple(
    c.name for c in usage.columns if c.name not in ("id", "charge_id", "account_id", "cost_milli", "created_at")
)


class _NotCovered(Exception):
    """The available balance does not cover a hold: its transaction rolls back."""


async def take(
    db: Database,
    *,
    account_id: int,
    amount_milli: int,
    request_id: str,
    tier: str,
    expires_at: datetime,
    scopes: Sequence[Scope] = (),
) -> str | None:
    """The new hold's id, or None when the available balance does not cover `amount_milli`; raises
    LimitReached when it would take one of `scopes` (in lock order, scopes.py) past its limit."""
    hold_id = os.urandom(12).hex()
    if db.procedures is not None:
        limited = spend_scopes.as_json(scopes) if scopes else None
        args = (hold_id, account_id, request_id[:128], amount_milli, tier[:32], utcnow(), expires_at, limited)
        taken = await db.procedures.call("credits_hold", args)
        if taken is not None and taken[0] == 0 and taken[1] >= 0:
            raise LimitReached(scopes[taken[1]])
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
        if scopes:
            await spend_scopes.take(conn, scopes, account_id=account_id, hold_id=hold_id, amount=amount_milli, now=now)
        # The one conditional UPDATE that makes overspending impossible: it only matches while
        # balance - reserved still covers the hold, and the database applies it atomically.
        taken = await conn.execute(
            _TAKE, {"b_account": account_id, "b_amount": amount_milli, "b_tier": tier[:32], "b_now": now}
        )
        if taken.rowcount != 1:
            raise _NotCovered  # rolls the hold row back with the transaction
        return hold_id

    try:
        return await in_transaction(db, work)
    except _NotCovered:
        return None


async def settle(
    db: Database,
    *,
    hold_id: str,
    account_id: int,
    hold_milli: int,
    charge_milli: int,
    usage_row: dict[str, Any],
    plans: Mapping[str, int],
    plans_json: str,
    low_percent: int,
    scoped: bool = False,
) -> Change | None:
    """Replace the hold with the (checked) charge and write the usage row: None when the hold is gone.
    `plans` (tier -> milli-credits a month, also as JSON for the procedure) and `low_percent` set the
    low-credit flag. `scoped`: the hold counted against spend scopes, which are charged too."""
    if db.procedures is not None:
        now = utcnow()
        args = (hold_id, account_id, hold_milli, charge_milli, plans_json, low_percent, now, scoped)
        result = await db.procedures.call("credits_settle", (*args, *(usage_row[c] for c in _USAGE_ARGS)))
        return _settled_in_server(result, hold_id=hold_id, account_id=account_id, charge_milli=charge_milli, now=now)

    async def work(conn: AsyncConnection) -> Change | None:
        # Deleting the hold is the guard: of any number of settlements (and the sweeper) one deletes it.
        gone = await conn.execute(_DROP_HOLD, {"b_hold": hold_id})
        if gone.rowcount != 1:
            return None
        now = utcnow()
        # The usage row before the balance row is locked, for the same reason as in `take`; its cost is
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
        # The hold's scope rows before the balance row: the lock order of every transaction (scopes.py).
        limited = await spend_scopes.unreserve(conn, hold_id=hold_id) if scoped else []
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
            plan=plans.get(state.tier or "", 0),
            percent=low_percent,
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
        await spend_scopes.charge(conn, limited, hold_id=hold_id, charged=charged)
        await rollups.add(conn, [{**usage_row, "account_id": account_id, "cost_milli": charged}])
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

    return await in_transaction(db, work)


def _settled_in_server(
    result: Any, *, hold_id: str, account_id: int, charge_milli: int, now: datetime
) -> Change | None:
    """What `credits_settle` answered, as `settle` answers it."""
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


async def release_expired(db: Database, *, cutoff: datetime, limit: int) -> int:
    """Release holds that expired before `cutoff`, `limit` at a time; returns how many were released."""
    released = 0
    while True:
        async with db.connect() as conn:
            expired = (
                await conn.execute(
                    sa.select(holds.c.id, holds.c.account_id).where(holds.c.expires_at < cutoff).limit(limit)
                )
            ).all()
        for hold_id, account_id in expired:
            released += await release(db, hold_id=hold_id, account_id=account_id, cutoff=cutoff)
        if len(expired) < limit:
            return released


async def release(db: Database, *, hold_id: str, account_id: int, cutoff: datetime) -> int:
    """Give one hold's amount back to the available balance, if it is still there and expired before
    `cutoff`: 1 when this call released it, else 0."""
    async with db.connect() as conn:
        amount = (await conn.execute(sa.select(holds.c.amount_milli).where(holds.c.id == hold_id))).scalar()
    if amount is None:
        return 0

    async def work(conn: AsyncConnection) -> int:
        # The same guard as settle, in the same order (hold row, then balance row): exactly one wins.
        gone = await conn.execute(holds.delete().where(holds.c.id == hold_id, holds.c.expires_at < cutoff))
        if gone.rowcount != 1:
            return 0
        await spend_scopes.charge(conn, await spend_scopes.unreserve(conn, hold_id=hold_id), hold_id=hold_id, charged=0)
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

    return await in_transaction(db, work)
