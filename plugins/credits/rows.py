"""What every money transaction does with rows: lock the balance row, read it, append a ledger row, retry
on a deadlock, set the low-credit flag, say what it did (`Change`); and how timestamps and ledger rows are
written out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.db import Database
from edge.transient import mysql_transient, retrying
from plugins.credits.tables import balances, ledger

T = TypeVar("T")
# The hot statements are built once, with bound parameters: building and cache-keying a statement on every
# call cost more CPU than its round trip to the database.
_BALANCE = sa.select(
    balances.c.balance_milli, balances.c.reserved_milli, balances.c.low_notified, balances.c.tier
).where(balances.c.account_id == sa.bindparam("b_account", type_=balances.c.account_id.type))
_BALANCE_FOR_UPDATE = _BALANCE.with_for_update()
_APPEND = ledger.insert()


@dataclass(frozen=True, slots=True)
class Change:
    """What one settlement or credit did: the ledger row (None when nothing was charged)."""

    balance_milli: int
    tier: str | None
    row: dict[str, Any] | None = None
    created: bool = True
    crossed_low: bool = False
    charged_milli: int = 0


def low_flag(*, balance: int, plan: int, percent: int, notified: bool) -> tuple[bool, bool]:
    """(the flag to store, whether the balance has just crossed below `percent` of the plan)."""
    if plan <= 0:
        return notified, False
    below = balance * 100 < plan * percent
    return below, below and not notified


def utcnow() -> datetime:
    """UTC-naive, whole seconds: what DATETIME columns hold on both databases."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def ledger_row(m: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": int(m["id"]),
        "account_id": int(m["account_id"]),
        "kind": m["kind"],
        "amount_milli": int(m["amount_milli"]),
        "balance_after_milli": int(m["balance_after_milli"]),
        "reference": m["reference"],
        "actor": m["actor"],
        "reason": m["reason"],
        "created_at": iso(m["created_at"]),
    }


async def in_transaction(db: Database, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` in one transaction, again from the start when the database reports a deadlock."""

    async def once() -> T:
        async with db.begin() as conn:
            return await work(conn)

    return await retrying(once, transient=_transient)


async def lock_balance(conn: AsyncConnection, account_id: int) -> datetime:
    """Create the balance row if missing and write it, which locks it until the transaction ends."""
    now = utcnow()
    values = {
        "account_id": account_id,
        "balance_milli": 0,
        "reserved_milli": 0,
        "low_notified": False,
        "exhausted_notified": False,
        "updated_at": now,
    }
    if conn.dialect.name == "sqlite":
        stmt: Any = (
            sqlite.insert(balances)
            .values(**values)
            .on_conflict_do_update(index_elements=["account_id"], set_={"updated_at": now})
        )
    else:
        stmt = mysql.insert(balances).values(**values).on_duplicate_key_update(updated_at=now)
    await conn.execute(stmt)
    return now


async def read_balance(conn: AsyncConnection, account_id: int, *, for_update: bool = False) -> Any:
    """The balance row; `for_update` locks it on MariaDB (SQLite has no row locks, and needs none here:
    the transaction's first write already holds the database's write lock)."""
    query = _BALANCE_FOR_UPDATE if for_update else _BALANCE
    return (await conn.execute(query, {"b_account": account_id})).one()


def entry_values(
    *,
    account_id: int,
    kind: str,
    amount: int,
    balance_after: int,
    reference: str,
    now: datetime,
    actor: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """One ledger row's columns, cut to their widths."""
    return {
        "account_id": account_id,
        "kind": kind,
        "amount_milli": amount,
        "balance_after_milli": balance_after,
        "reference": reference[:160],
        "actor": actor[:64] if actor else None,
        "reason": reason[:500] if reason else None,
        "created_at": now,
    }


async def append_entry(conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
    """Insert one ledger row (its columns from `entry_values`) and return it as the API shows it."""
    result = await conn.execute(_APPEND, values)
    key = result.inserted_primary_key
    assert key is not None
    return ledger_row({"id": key[0], **values})


def _transient(exc: BaseException) -> bool:
    """MariaDB's deadlock or lock-wait timeout, or SQLite's busy lock: the whole transaction runs again."""
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    return mysql_transient(exc.orig) or "database is locked" in str(exc.orig)
