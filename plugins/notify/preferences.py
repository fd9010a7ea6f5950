"""Users' opt-outs of the optional notices: the `PREFERENCES` service (edge/services/preferences.py).

`credits.low` and `subscription.renewal_due` can be turned off; every other notice always goes. A row in
`notify_preferences` exists once a user changed a default (both on). auth_keys' `PATCH /api/me` checks a
change here and saves it on its own transaction's connection; recipients.py reads it when queueing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite

from edge.inputs import FieldError
from edge.services import NotificationChoices
from plugins.notify.notices import OPTIONAL
from plugins.notify.tables import notify_preferences

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncConnection

    from edge.db import Database

# What a user's notices are called, the admin-only ones and the sender's own alert left out.
ALWAYS_SENT = ("user.registered", "subscription.activated", "credits.exhausted", "topup.paid")
_SHOWN_KEY = 64


def _named(key: str) -> str:
    return repr(key[:_SHOWN_KEY])


def check(value: object) -> NotificationChoices:
    """The `notifications` object as a change (see the service's docstring for the codes)."""
    if not isinstance(value, dict):
        raise FieldError("notifications_invalid", "`notifications` must be an object of event names to true/false.")
    choices = []
    optional = ", ".join(OPTIONAL)
    for key, on in value.items():
        if key in ALWAYS_SENT:
            raise FieldError("notifications_always_sent", f"{_named(key)} is always sent; only {optional} can be off.")
        if key not in OPTIONAL:
            raise FieldError("notifications_unknown_event", f"{_named(key)} is not a notice; use {optional}.")
        if not isinstance(on, bool):
            raise FieldError("notifications_not_boolean", f"{_named(key)} must be true or false.")
        choices.append((key, on))
    return NotificationChoices(tuple(choices))


async def save(conn: AsyncConnection, *, user_id: int, change: NotificationChoices, now: datetime) -> None:
    """Upsert the user's row with the named columns, in one statement (two requests at once cannot
    both insert)."""
    columns = {OPTIONAL[event]: on for event, on in change.choices}
    if not columns:
        return
    values = {"user_id": user_id, "updated_at": now, **columns}
    updated = {**columns, "updated_at": now}
    if conn.dialect.name == "sqlite":
        stmt: sa.Executable = (
            sqlite.insert(notify_preferences)
            .values(**values)
            .on_conflict_do_update(index_elements=["user_id"], set_=updated)
        )
    else:
        stmt = mysql.insert(notify_preferences).values(**values).on_duplicate_key_update(**updated)
    await conn.execute(stmt)


async def current(db: Database, user_id: int) -> NotificationChoices:
    async with db.connect() as conn:
        row = (await conn.execute(sa.select(notify_preferences).where(notify_preferences.c.user_id == user_id))).first()
    return NotificationChoices(
        tuple((event, True if row is None else bool(getattr(row, column))) for event, column in OPTIONAL.items())
    )


class NotifyPreferences:
    """The `PREFERENCES` service notify provides."""

    def __init__(self, *, database: Database, clock: Callable[[], datetime]) -> None:
        self.db = database
        self.clock = clock

    def check(self, value: object) -> NotificationChoices:
        return check(value)

    async def save(self, conn: AsyncConnection, *, user_id: int, change: NotificationChoices) -> None:
        await save(conn, user_id=user_id, change=change, now=self.clock())

    async def current(self, user_id: int) -> NotificationChoices:
        return await current(self.db, user_id)
