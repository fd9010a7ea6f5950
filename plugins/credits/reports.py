"""Reading the ledger and usage back: cursor pages newest first, per-day totals, month totals, CSV batches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa

from edge.db import Database
from plugins.credits.rows import iso, ledger_row
from plugins.credits.tables import USAGE_SHOWN, ledger, usage

USAGE_FIELDS = ("id", *USAGE_SHOWN)
_USAGE_COLUMNS = [usage.c[name] for name in USAGE_FIELDS]


def usage_item(row: Any) -> dict[str, Any]:
    item = dict(row._mapping)
    item["created_at"] = iso(item["created_at"])
    item["stream"] = bool(item["stream"])
    return item


async def usage_page(
    db: Database, *, account_id: int, limit: int, before: int | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to `limit` usage rows older than the cursor, newest first, and the cursor of the next page."""
    query = sa.select(*_USAGE_COLUMNS).where(usage.c.account_id == account_id)
    if before is not None:
        query = query.where(usage.c.id < before)
    async with db.connect() as conn:
        rows = (await conn.execute(query.order_by(usage.c.id.desc()).limit(limit + 1))).all()
    items = [usage_item(r) for r in rows[:limit]]
    return items, (str(items[-1]["id"]) if len(rows) > limit else None)


async def daily_totals(db: Database, *, account_id: int, today: date, days: int) -> list[dict[str, Any]]:
    """One entry per day of the window ending today, zeros included, oldest first: what a chart plots."""
    first = today - timedelta(days=days - 1)
    query = (
        sa.select(
            usage.c.day,
            sa.func.count(),
            sa.func.sum(usage.c.prompt_tokens),
            sa.func.sum(usage.c.completion_tokens),
            sa.func.sum(usage.c.cost_milli),
        )
        .where(usage.c.account_id == account_id, usage.c.day >= first)
        .group_by(usage.c.day)
    )
    async with db.connect() as conn:
        found = {_day(r[0]): r for r in (await conn.execute(query)).all()}
    out = []
    for i in range(days):
        day = first + timedelta(days=i)
        row = found.get(day)
        out.append(
            {
                "day": day.isoformat(),
                "requests": int(row[1]) if row else 0,
                "prompt_tokens": int(row[2] or 0) if row else 0,
                "completion_tokens": int(row[3] or 0) if row else 0,
                "cost_milli": int(row[4] or 0) if row else 0,
            }
        )
    return out


async def month_usage(db: Database, *, account_id: int, today: date, user_id: int | None = None) -> dict[str, Any]:
    """The month's totals on the account (only `user_id`'s rows when given): one indexed query, on
    (account_id, day) or, for a user, (account_id, user_id, id) (credits_0005). The credits service reads an
    account's own month from the `usage_monthly` roll-up instead."""
    first = today.replace(day=1)
    query = sa.select(
        sa.func.count(),
        sa.func.sum(usage.c.prompt_tokens),
        sa.func.sum(usage.c.completion_tokens),
        sa.func.sum(usage.c.cost_milli),
    ).where(usage.c.account_id == account_id, usage.c.day >= first)
    if user_id is not None:
        query = query.where(usage.c.user_id == user_id)
    async with db.connect() as conn:
        count, prompt, completion, cost = (await conn.execute(query)).one()
    return {
        "account_id": account_id,
        "since": first.isoformat(),
        "requests": int(count or 0),
        "prompt_tokens": int(prompt or 0),
        "completion_tokens": int(completion or 0),
        "cost_milli": int(cost or 0),
    }


async def usage_batches(db: Database, *, account_id: int, batch: int = 1000) -> AsyncIterator[list[dict[str, Any]]]:
    """Every usage row of the account, newest first, a batch at a time (keyset paging, no OFFSET)."""
    before: int | None = None
    while True:
        items, cursor = await usage_page(db, account_id=account_id, limit=batch, before=before)
        if items:
            yield items
        if cursor is None:
            return
        before = int(cursor)


async def ledger_page(
    db: Database, *, account_id: int, limit: int, before: int | None
) -> tuple[list[dict[str, Any]], str | None]:
    query = ledger.select().where(ledger.c.account_id == account_id)
    if before is not None:
        query = query.where(ledger.c.id < before)
    async with db.connect() as conn:
        rows = (await conn.execute(query.order_by(ledger.c.id.desc()).limit(limit + 1))).all()
    items = [ledger_row(r._mapping) for r in rows[:limit]]
    return items, (str(items[-1]["id"]) if len(rows) > limit else None)


def _day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))
