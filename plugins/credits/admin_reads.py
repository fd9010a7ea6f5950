"""The credits service's reads for admins: an account's recent usage and ledger, and every account's usage
as keyset pages (by id), so an export of a million rows holds one page at a time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import LedgerEntry, UsageItem
from plugins.credits.tables import ledger, usage

_USAGE = sa.select(
    usage.c.id,
    usage.c.created_at,
    usage.c.request_id,
    usage.c.account_id,
    usage.c.user_id,
    usage.c.key_id,
    usage.c.model,
    usage.c.endpoint,
    usage.c.route,
    usage.c.prompt_tokens,
    usage.c.completion_tokens,
    usage.c.cost_milli,
    usage.c.status,
    usage.c.outcome,
)


def _item(row: Any) -> UsageItem:
    return UsageItem(
        id=int(row.id),
        created_at=row.created_at,
        request_id=row.request_id,
        account_id=int(row.account_id),
        user_id=None if row.user_id is None else int(row.user_id),
        key_id=None if row.key_id is None else int(row.key_id),
        model=row.model,
        endpoint=row.endpoint,
        route=row.route,
        prompt_tokens=int(row.prompt_tokens),
        completion_tokens=int(row.completion_tokens),
        cost_milli=int(row.cost_milli),
        status=int(row.status),
        outcome=row.outcome,
    )


async def recent_usage(conn: AsyncConnection, *, account_id: int, limit: int) -> list[UsageItem]:
    query = _USAGE.where(usage.c.account_id == account_id).order_by(usage.c.id.desc()).limit(max(1, limit))
    return [_item(row) for row in (await conn.execute(query)).all()]


async def ledger_entries(conn: AsyncConnection, *, account_id: int, limit: int) -> list[LedgerEntry]:
    query = sa.select(ledger).where(ledger.c.account_id == account_id).order_by(ledger.c.id.desc())
    rows = (await conn.execute(query.limit(max(1, limit)))).all()
    return [
        LedgerEntry(
            id=int(r.id),
            kind=r.kind,
            amount_milli=int(r.amount_milli),
            balance_after_milli=int(r.balance_after_milli),
            reference=r.reference,
            actor=r.actor,
            reason=r.reason,
            created_at=r.created_at,
        )
        for r in rows
    ]


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
