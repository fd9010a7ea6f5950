"""core: audit_log is append-only in the database too (triggers refuse UPDATE and DELETE)

Revision ID: core_0003
Revises: core_0002
Create Date: 2026-11-28

The code only ever inserts audit rows (edge/audit.py); these triggers make the database refuse the other two
statements, so a bug, a hand-written query or an injected statement through the application's connection
cannot rewrite or erase the trail. They do not stop whoever may drop a trigger or TRUNCATE the table (a
DDL privilege): serve with a database user that has neither on audit_log (see edge/audit.py).
"""

from alembic import op

revision = "core_0003"
down_revision = "core_0002"
branch_labels = None
depends_on = None

MESSAGE = "audit_log is append-only"
STATEMENTS = ("UPDATE", "DELETE")


def _name(statement: str) -> str:
    return f"audit_log_no_{statement.lower()}"


def upgrade() -> None:
    mysql = op.get_bind().dialect.name == "mysql"
    for statement in STATEMENTS:
        op.execute(f"DROP TRIGGER IF EXISTS {_name(statement)}")
        if mysql:
            op.execute(
                f"CREATE TRIGGER {_name(statement)} BEFORE {statement} ON audit_log FOR EACH ROW "
                f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{MESSAGE}'"
            )
        else:
            op.execute(
                f"CREATE TRIGGER {_name(statement)} BEFORE {statement} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
            )


def downgrade() -> None:
    for statement in STATEMENTS:
        op.execute(f"DROP TRIGGER IF EXISTS {_name(statement)}")
