"""auth_keys: users.email and users.phone compared byte for byte, without padding, on MariaDB/MySQL

Revision ID: auth_keys_0002
Revises: auth_keys_0001
Create Date: 2026-11-27

The stored names are already in the one normal form (`inputs.login_key`): every email ever stored was
NFKC, lower-case ASCII (which case folding leaves as it is) and every phone E.164, so no row changes.
What changes is the comparison: under `utf8mb4_general_ci`/`unicode_ci` `bób@…` and `BOB@…` equalled
`bob@…`, so a login spelled another way found bob's account while bob's own name was being throttled, and
under any PAD SPACE collation (`utf8mb4_bin` included) `bob@… ` did too. A binary NO PAD collation
(MariaDB's `utf8mb4_nopad_bin`, MySQL 8's `utf8mb4_0900_bin`) is finer than the old one, so the unique
indexes cannot fail while rebuilding. SQLite already compares text byte for byte: nothing to do there.
"""

import sqlalchemy as sa
from alembic import op

revision = "auth_keys_0002"
down_revision = "auth_keys_0001"
branch_labels = None
depends_on = None

COLUMNS = (("email", 254), ("phone", 20))
# The first of these the server has; the last only on servers too old to have a NO PAD binary one.
EXACT = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin", "utf8mb4_bin")


def _modify(collation: str) -> None:
    changes = ", ".join(f"MODIFY {name} VARCHAR({size}) {collation} NOT NULL" for name, size in COLUMNS)
    op.execute(f"ALTER TABLE users {changes}")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "mysql":
        return
    query = sa.text("SELECT collation_name FROM information_schema.collations WHERE collation_name IN :names")
    have = set(bind.execute(query.bindparams(sa.bindparam("names", expanding=True)), {"names": list(EXACT)}).scalars())
    collation = next(name for name in EXACT if name in have)
    _modify(f"CHARACTER SET utf8mb4 COLLATE {collation}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "mysql":
        return
    # Back to the table's default collation, as 0001 created them.
    _modify("")
