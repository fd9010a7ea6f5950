"""auth_keys: stored phones in the one normal form that drops trunk zeros for every country

Revision ID: auth_keys_0003
Revises: auth_keys_0002
Create Date: 2026-11-27

Before, only Kuwaiti numbers lost a zero typed after the country code, so `+966 055 123 4567` was stored
as `+9660551234567`, a form the login lookup now never produces (it gives `+966551234567`). Each stored
phone whose normal form (`phones.normalize_phone`) differs is rewritten to it, oldest user first, unless
another user already has that form: then the row keeps its old string (that user still logs in with the
email; the phone belongs to the first account that registered it). A stored phone that is no longer a
number at all (an unknown country code, a length its country's numbers cannot have) also stays as it
is, and can still be typed exactly as stored to log in. Nothing to undo: the old forms were never
meant to differ.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from plugins.auth_keys.phones import normalize_phone

revision = "auth_keys_0003"
down_revision = "auth_keys_0002"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    bind = op.get_bind()
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("phone", sa.String))
    # Kuwaiti numbers were already stored in this form; only the others can change.
    others = sa.select(users.c.id, users.c.phone).where(users.c.phone.not_like("+965%")).order_by(users.c.id)
    for user_id, phone in bind.execute(others).all():
        new = normalize_phone(phone)
        if new is None or new == phone:
            continue
        if bind.execute(sa.select(users.c.id).where(users.c.phone == new)).first() is not None:
            log.warning("users.id %s keeps phone %s: its normal form %s is another user's", user_id, phone, new)
            continue
        bind.execute(sa.update(users).where(users.c.id == user_id).values(phone=new))


def downgrade() -> None:
    pass
