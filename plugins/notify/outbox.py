"""The WhatsApp outbox's rows: queued once, claimed by one sender at a time, each attempt recorded.

What stays true, on any number of workers and hosts:
- A message exists once: rows are inserted under their unique `dedup_key`, and an insert that finds the key
  taken does nothing (a re-delivered event, or two workers taking the same event, insert the same keys).
- A row is sent by one sender at a time: it is claimed with one conditional UPDATE (due and unclaimed, or
  its previous claim's lease passed) to `sending` until a lease; only the claim's holder records the
  outcome. A sender that dies mid-send loses its claim when the lease passes and the row is sent again:
  a provider that took the message but never answered may then get it twice, which no sender can rule out.
- One recipient gets at most one attempt per `pair_seconds` (WhatsApp's pair rate): a claim skips a row
  whose recipient had an attempt more recently, and takes one row per recipient per batch (0: no pacing).
- A row with an `after_key` (a user's second language, for a template provider) is not claimed while the
  row it names is queued, retrying or being sent: the languages arrive in order, even across retries; once
  it may go, it goes before the recipient's other messages, so a notice's two languages arrive together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.db import Database
from plugins.notify.tables import notify_outbox

DUE = ("queued", "retrying")
SHOWN = (
    "id",
    "event_name",
    "event_id",
    "audience",
    "recipient",
    "language",
    "body",
    "status",
    "attempts",
    "provider",
    "provider_message_id",
    "last_error",
    "after_key",
    "next_attempt_at",
    "last_attempt_at",
    "created_at",
    "updated_at",
)
Row = sa.Row[Any]


async def enqueue(db: Database, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert the rows whose `dedup_key` is new; returns how many were."""
    created = 0
    for row in rows:
        # One transaction a row: a taken key rolls back its own insert only.
        try:
            async with db.begin() as conn:
                await conn.execute(notify_outbox.insert().values(**row))
        except IntegrityError:
            continue
        created += 1
    return created


def _due(now: datetime) -> sa.ColumnElement[bool]:
    waiting = sa.and_(notify_outbox.c.status.in_(DUE), notify_outbox.c.next_attempt_at <= now)
    abandoned = sa.and_(notify_outbox.c.status == "sending", notify_outbox.c.claimed_until < now)
    return sa.or_(waiting, abandoned)


async def _waiting_on(conn: AsyncConnection, keys: set[str]) -> set[str]:
    """Which of these `dedup_key`s name a message not yet done (queued, retrying or being sent)."""
    if not keys:
        return set()
    query = sa.select(notify_outbox.c.dedup_key).where(
        notify_outbox.c.dedup_key.in_(keys), notify_outbox.c.status.in_((*DUE, "sending"))
    )
    return set((await conn.execute(query)).scalars())


async def claim(db: Database, *, now: datetime, limit: int, lease_seconds: float, pair_seconds: float) -> list[Row]:
    """Claim up to `limit` due rows for one send each, paced per recipient; the rows as claimed."""
    async with db.connect() as conn:
        query = sa.select(notify_outbox).where(_due(now)).order_by(notify_outbox.c.id).limit(limit * 4)
        candidates = list((await conn.execute(query)).all())
        recipients = {row.recipient for row in candidates}
        last: dict[str, datetime] = {}
        if recipients:
            latest = (
                sa.select(notify_outbox.c.recipient, sa.func.max(notify_outbox.c.last_attempt_at))
                .where(notify_outbox.c.recipient.in_(recipients))
                .group_by(notify_outbox.c.recipient)
            )
            last = {recipient: at for recipient, at in await conn.execute(latest) if at is not None}
        waiting = await _waiting_on(conn, {row.after_key for row in candidates if row.after_key is not None})
    chosen: list[Row] = []
    seen: set[str] = set()
    # A second language whose first is done goes before the recipient's other messages: the two arrive
    # together.
    for row in sorted(candidates, key=lambda row: (row.after_key is None, row.id)):
        if row.after_key in waiting:
            continue
        recent = last.get(row.recipient)
        paced = pair_seconds > 0 and (
            row.recipient in seen or (recent is not None and (now - recent).total_seconds() < pair_seconds)
        )
        if paced:
            continue
        seen.add(row.recipient)
        chosen.append(row)
        if len(chosen) == limit:
            break
    lease = now + timedelta(seconds=lease_seconds)
    claimed: list[Row] = []
    for row in chosen:
        async with db.begin() as conn:
            taken = await conn.execute(
                notify_outbox.update()
                .where(notify_outbox.c.id == row.id, _due(now))
                .values(status="sending", claimed_until=lease, last_attempt_at=now, updated_at=now)
            )
            if taken.rowcount == 1:
                found = (await conn.execute(sa.select(notify_outbox).where(notify_outbox.c.id == row.id))).one()
                claimed.append(found)
    return claimed


async def record(db: Database, row: Row, values: Mapping[str, Any], *, now: datetime) -> bool:
    """Write an attempt's outcome, only while the claim is still this sender's; whether it was."""
    async with db.begin() as conn:
        result = await conn.execute(
            notify_outbox.update()
            .where(
                notify_outbox.c.id == row.id,
                notify_outbox.c.status == "sending",
                notify_outbox.c.claimed_until == row.claimed_until,
            )
            .values(**values, claimed_until=None, updated_at=now)
        )
    return bool(result.rowcount)


def shown(row: Row) -> dict[str, Any]:
    """A row as the admin API shows it (times in ISO 8601, UTC)."""
    out: dict[str, Any] = {}
    for name in SHOWN:
        value = getattr(row, name)
        out[name] = value.isoformat(timespec="seconds") + "Z" if isinstance(value, datetime) else value
    return out


async def page(
    db: Database, *, status: str | None, event: str | None, recipient: str | None, limit: int, before: int | None
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first; the rows and the cursor of the next page (None on the last)."""
    query = sa.select(notify_outbox).order_by(notify_outbox.c.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(notify_outbox.c.status == status)
    if event is not None:
        query = query.where(notify_outbox.c.event_name == event)
    if recipient is not None:
        query = query.where(notify_outbox.c.recipient == recipient)
    if before is not None:
        query = query.where(notify_outbox.c.id < before)
    async with db.connect() as conn:
        rows = list((await conn.execute(query)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return [shown(row) for row in rows], (int(rows[-1].id) if more else None)


class Busy(Exception):
    """The row is being sent right now: resending it would race the sender."""


async def resend(
    db: Database,
    *,
    row_id: int,
    now: datetime,
    also: Callable[[AsyncConnection, Row], Awaitable[None]] | None = None,
) -> Row | None:
    """Queue the row again now, with a fresh allowance of attempts; None when there is no such row, Busy
    while a sender holds it. `also(conn, row as it was)` runs in the same transaction when it is queued."""
    async with db.begin() as conn:
        row = (await conn.execute(sa.select(notify_outbox).where(notify_outbox.c.id == row_id))).first()
        if row is None:
            return None
        if row.status == "sending" and row.claimed_until is not None and row.claimed_until >= now:
            raise Busy(row_id)
        await conn.execute(
            notify_outbox.update()
            .where(notify_outbox.c.id == row_id, notify_outbox.c.status == row.status)
            .values(status="queued", attempts=0, next_attempt_at=now, claimed_until=None, updated_at=now)
        )
        if also is not None:
            await also(conn, row)
        found: Row = (await conn.execute(sa.select(notify_outbox).where(notify_outbox.c.id == row_id))).one()
    return found
