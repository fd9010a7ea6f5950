"""The credits service's reads for admins: an account's recent usage and ledger, and every account's usage
as keyset pages (by id), so an export of a million rows holds one page at a time."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import LedgerEntry, UsageItem
from plugins.credits.tables import ledger, usage

_USAGE = sa.select(*(usage.c[f.name] for f in fields(UsageItem)))


def _item(row: Any) -> UsageItem:
    return UsageItem(**row._mapping)


async def recent_usage(
    conn: AsyncConnection, *, account_id: int, limit: int, user_id: int | None = None, before_id: int | None = None
) -> list[UsageItem]:
    query = _USAGE.where(usage.c.account_id == account_id)
    if user_id is not None:
        query = query.where(usage.c.user_id == user_id)
    if before_id is not None:
        query = query.where(usage.c.id < before_id)
    query = query.order_by(usage.c.id.desc()).limit(max(1, limit))
    return [_item(row) for row in (await conn.execute(query)).all()]


async def ledger_entries(conn: AsyncConnection, *, account_id: int, limit: int) -> list[LedgerEntry]:
    columns = [ledger.c[f.name] for f in fields(LedgerEntry)]
    query = sa.select(*columns).where(ledger.c.account_id == account_id).order_by(ledger.c.id.desc())
    return [LedgerEntry(**r._mapping) for r in (await conn.execute(query.limit(max(1, limit)))).all()]


async def usage_rows(
    conn: AsyncConnection, *, since: datetime | None, until: datetime | None, after_id: int, limit: int
) -> list[UsageItem]:
    query = _USAGE.where(usage.c.id > after_id)
    if since is not None:
        query = query.where(usage.c.created_at >= since)
    if until is not None:
        query = query.where(usage.c.created_at < until)
    query = query.order_by(usage.c.id).limit(max(1, limit))
    return [_item(row) for row in (await conn.execute(query)).all()]
