"""Reading the core's audit trail (edge/audit.py) back for admins: a filtered page, newest first.

Pages are keyset pages on the row id (`cursor` is the last id seen), so a page costs the same however deep
it is and rows appended meanwhile never shift one. A plugin-wide action filter (`billing`) is a LIKE on
`billing.%` with the only LIKE wildcard an action name can hold (`_`) escaped.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from edge.audit import audit_log
from edge.db import Database
from plugins.admin.filters import AuditFilter


async def page(db: Database, wanted: AuditFilter) -> list[Any]:
    """At most `wanted.limit` audit rows matching `wanted`, newest first."""
    query = sa.select(audit_log)
    if wanted.actor is not None:
        query = query.where(audit_log.c.actor_user_id == wanted.actor)
    if wanted.target is not None:
        query = query.where(audit_log.c.target == wanted.target)
    if wanted.action is not None:
        if "." in wanted.action:
            query = query.where(audit_log.c.action == wanted.action)
        else:
            prefix = wanted.action.replace("_", "!_") + ".%"
            query = query.where(audit_log.c.action.like(prefix, escape="!"))
    if wanted.cursor is not None:
        query = query.where(audit_log.c.id < wanted.cursor)
    query = query.order_by(audit_log.c.id.desc()).limit(wanted.limit)
    async with db.connect() as conn:
        return list((await conn.execute(query)).all())
