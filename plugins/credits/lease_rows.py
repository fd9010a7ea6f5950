"""The two transactions behind a worker's leases (see leases.py), the same on SQLite and MariaDB.

A lease is one row in credit_holds, counted in the account's reserved_milli like any hold, so the
balance invariants `reconcile` checks hold at every commit: reserved = the sum of live holds, and
balance = the sum of the ledger. Every change to a lease row moves reserved_milli by the same amount in
the same transaction, with relative updates, so the two cannot drift apart whatever the worker's memory
believes.

Each transaction starts with a write to the balance rows (SQLite's write lock; on MariaDB the rows
are locked in primary-key order, so two batches cannot deadlock on each other).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.db import Database
from plugins.credits import rollups
from plugins.credits.rows import entry_values, in_transaction, low_flag, read_balance, utcnow
from plugins.credits.tables import balances, holds, ledger, usage

# A lease keeps at most this share (1/LEASE_SHARE) of the account's free balance beyond what is in use,
# so several workers' leases never park much of a small balance.
LEASE_SHARE = 8


def room(want: int, free: int, unit: int) -> int:
    """Spare room worth keeping: up to `want`, at most a LEASE_SHARE-th of `free`, in whole `unit`s (the
    size of the account's last hold), so a lease never parks a remnant too small for a request."""
    spare = max(min(want, free // LEASE_SHARE), 0)
    return spare - spare % unit if unit > 0 else spare


_TOUCH = (
    balances.update()
    .where(balances.c.account_id.in_(sa.bindparam("b_accounts", expanding=True)))
    .values(updated_at=sa.bindparam("b_now", type_=balances.c.updated_at.type))
)
_STATES = sa.select(
    balances.c.account_id, balances.c.balance_milli, balances.c.reserved_milli, balances.c.tier, balances.c.low_notified
).where(balances.c.account_id.in_(sa.bindparam("b_accounts", expanding=True)))
_LEASES = (
    sa.select(holds.c.id, holds.c.amount_milli)
    .where(holds.c.id.in_(sa.bindparam("b_ids", expanding=True)))
    .with_for_update()
)
_RESERVE = (
    balances.update()
    .where(balances.c.account_id == sa.bindparam("b_account", type_=balances.c.account_id.type))
    .values(
        reserved_milli=balances.c.reserved_milli + sa.bindparam("b_delta", type_=sa.BigInteger()),
        tier=sa.bindparam("b_tier", type_=balances.c.tier.type),
    )
)
_SET_BALANCE = (
    balances.update()
    .where(balances.c.account_id == sa.bindparam("b_account", type_=balances.c.account_id.type))
    .values(
        balance_milli=sa.bindparam("b_balance", type_=sa.BigInteger()),
        reserved_milli=sa.bindparam("b_reserved", type_=sa.BigInteger()),
        low_notified=sa.bindparam("b_low", type_=sa.Boolean()),
    )
)
_MOVE_LEASE = (
    holds.update()
    .where(holds.c.id == sa.bindparam("b_id", type_=holds.c.id.type))
    .values(
        amount_milli=holds.c.amount_milli + sa.bindparam("b_delta", type_=sa.BigInteger()),
        expires_at=sa.bindparam("b_expires", type_=holds.c.expires_at.type),
    )
)
_DROP_LEASE = holds.delete().where(holds.c.id == sa.bindparam("b_id", type_=holds.c.id.type))


async def charge_written(db: Database, charge_id: str) -> bool:
    """Whether a charge's usage row exists: after a commit that reported an error, whether it went through."""
    async with db.connect() as conn:
        found = await conn.execute(sa.select(usage.c.id).where(usage.c.charge_id == charge_id))
        return found.first() is not None


@dataclass(frozen=True, slots=True)
class Grown:
    """What a grow did: `granted` milli-credits added to the lease (0: the free balance did not cover the
    need, or the lease row was gone), the account's free balance after it, and its reserved total."""

    granted: int
    free_milli: int
    reserved_milli: int
    lost: bool = False


async def grow(
    db: Database,
    *,
    lease_id: str,
    exists: bool,
    account_id: int,
    need: int,
    want: int,
    unit: int,
    tier: str,
    owner: str,
    expires_at: datetime,
) -> Grown:
    """Reserve `need` (all or nothing) plus `room(want, what else is free, unit)` more for the lease.
    Creates the lease row when `exists` is False."""

    async def work(conn: AsyncConnection) -> Grown:
        now = utcnow()
        touched = await conn.execute(_TOUCH, {"b_accounts": [account_id], "b_now": now})
        if touched.rowcount != 1:
            return Grown(0, 0, 0)
        state = await read_balance(conn, account_id)  # locked: written just above
        free = int(state.balance_milli) - int(state.reserved_milli)
        if free < need:
            return Grown(0, free, int(state.reserved_milli))
        granted = need + room(want, free - need, unit)
        if exists:
            moved = await conn.execute(_MOVE_LEASE, {"b_id": lease_id, "b_delta": granted, "b_expires": expires_at})
            if moved.rowcount != 1:
                return Grown(0, free, int(state.reserved_milli), lost=True)  # the sweeper took it: nothing written
        else:
            await conn.execute(
                holds.insert(),
                {
                    "id": lease_id,
                    "account_id": account_id,
                    "request_id": owner[:128],
                    "amount_milli": granted,
                    "created_at": now,
                    "expires_at": expires_at,
                },
            )
        await conn.execute(_RESERVE, {"b_account": account_id, "b_delta": granted, "b_tier": tier[:32]})
        return Grown(granted, free - granted, int(state.reserved_milli) + granted)

    return await in_transaction(db, work)


@dataclass(frozen=True, slots=True)
class Charge:
    """One settled request of a lease: its usage row is written and `charged_milli`, taken from the lease,
    comes off the balance. When the request cost more (`wanted_milli`: a route dearer than its hold
    assumed), the rest is taken from what is free besides every hold, as far as it goes."""

    lease_id: str
    account_id: int
    charge_id: str
    charged_milli: int
    usage_row: Mapping[str, Any]
    wanted_milli: int = 0


@dataclass(frozen=True, slots=True)
class LeaseMove:
    """What a batch does to one lease besides its charges: give back `release` milli-credits (all that is
    left when `drop`), then top its spare up to `room(want_spare, free, unit)` (spare: what it has free now)."""

    lease_id: str
    account_id: int
    release: int
    drop: bool
    spare: int
    want_spare: int
    unit: int
    expires_at: datetime


@dataclass(slots=True)
class Written:
    """The outcome of a batch: per lease, milli-credits granted on top (or lost); per account, the balance
    after each of its charges in order, the tier, and whether the balance just crossed below the low mark;
    per lease, the account's free balance after the batch."""

    granted: dict[str, int] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)
    free: dict[str, int] = field(default_factory=dict)
    balances_after: dict[str, int] = field(default_factory=dict)  # charge id -> balance after it
    charged: dict[str, int] = field(default_factory=dict)  # charge id -> what it cost in the end
    tiers: dict[int, str | None] = field(default_factory=dict)
    crossed_low: set[int] = field(default_factory=set)


async def write_batch(
    db: Database,
    *,
    charges: Sequence[Charge],
    moves: Sequence[LeaseMove],
    plans: Mapping[str, int],
    low_percent: int,
) -> Written:
    """One transaction for many settlements: usage rows, ledger rows, balances, lease rows and roll-ups.

    A lease whose row is gone (released by the sweeper after its worker was thought dead) writes none of
    its charges, as a request whose hold is gone is not charged."""
    lease_ids = sorted({m.lease_id for m in moves})
    accounts = sorted({m.account_id for m in moves})
    if any(c.lease_id not in lease_ids for c in charges):
        raise ValueError("every lease with charges in a batch needs its move")

    async def work(conn: AsyncConnection) -> Written:
        now = utcnow()
        out = Written()
        await conn.execute(_TOUCH, {"b_accounts": accounts, "b_now": now})
        states = {int(r.account_id): r for r in (await conn.execute(_STATES, {"b_accounts": accounts})).all()}
        amounts = {r.id: int(r.amount_milli) for r in (await conn.execute(_LEASES, {"b_ids": lease_ids})).all()}
        out.lost = {lease for lease in lease_ids if lease not in amounts}
        balance = {a: int(s.balance_milli) for a, s in states.items()}
        reserved = {a: int(s.reserved_milli) for a, s in states.items()}
        lease_delta: dict[str, int] = dict.fromkeys(amounts, 0)
        usage_rows: list[dict[str, Any]] = []
        ledger_rows: list[dict[str, Any]] = []
        for c in charges:
            if c.lease_id in out.lost or c.account_id not in balance:
                continue
            # Never more from the lease than its row holds (the worker's memory agrees; this keeps the
            # database right even if it did not), and beyond that only what is free besides every hold.
            from_lease = max(min(c.charged_milli, amounts[c.lease_id] + lease_delta[c.lease_id]), 0)
            free = balance[c.account_id] - reserved[c.account_id]
            cost = from_lease + max(min(max(c.wanted_milli, c.charged_milli) - from_lease, free), 0)
            balance[c.account_id] -= cost
            reserved[c.account_id] -= from_lease
            lease_delta[c.lease_id] -= from_lease
            out.balances_after[c.charge_id] = balance[c.account_id]
            out.charged[c.charge_id] = cost
            usage_rows.append(
                {
                    **c.usage_row,
                    "charge_id": c.charge_id,
                    "account_id": c.account_id,
                    "cost_milli": cost,
                    "created_at": now,
                }
            )
            if cost:
                ledger_rows.append(
                    entry_values(
                        account_id=c.account_id,
                        kind="usage",
                        amount=-cost,
                        balance_after=balance[c.account_id],
                        reference=c.charge_id,
                        now=now,
                    )
                )
        dropped: list[str] = []
        for m in moves:
            if m.lease_id in out.lost or m.account_id not in balance:
                continue
            left = amounts[m.lease_id] + lease_delta[m.lease_id]
            release = left if m.drop else min(m.release, left)
            reserved[m.account_id] -= release
            lease_delta[m.lease_id] -= release
            if m.drop:
                dropped.append(m.lease_id)
                continue
            free = balance[m.account_id] - reserved[m.account_id]
            top_up = max(room(m.want_spare, free, m.unit) - m.spare, 0)
            reserved[m.account_id] += top_up
            lease_delta[m.lease_id] += top_up
            out.granted[m.lease_id] = top_up
            out.free[m.lease_id] = free - top_up
        if usage_rows:
            await conn.execute(usage.insert(), usage_rows)
        if ledger_rows:
            await conn.execute(ledger.insert(), ledger_rows)
        balance_rows = []
        for account in accounts:
            if account not in states:
                continue
            state = states[account]
            flag, crossed = low_flag(
                balance=balance[account],
                plan=plans.get(state.tier or "", 0),
                percent=low_percent,
                notified=bool(state.low_notified),
            )
            if crossed:
                out.crossed_low.add(account)
            out.tiers[account] = state.tier
            balance_rows.append(
                {"b_account": account, "b_balance": balance[account], "b_reserved": reserved[account], "b_low": flag}
            )
        if balance_rows:
            await conn.execute(_SET_BALANCE, balance_rows)
        moved = [
            {"b_id": m.lease_id, "b_delta": lease_delta[m.lease_id], "b_expires": m.expires_at}
            for m in moves
            if m.lease_id in amounts and m.lease_id not in dropped
        ]
        if moved:
            await conn.execute(_MOVE_LEASE, moved)
        if dropped:
            await conn.execute(_DROP_LEASE, [{"b_id": lease} for lease in dropped])
        # Last, in key order (rollups.py): the roll-up rows are locked after every balance row of the batch.
        await rollups.add(conn, usage_rows)
        return out

    return await in_transaction(db, work)
