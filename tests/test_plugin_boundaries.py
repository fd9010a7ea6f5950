"""Plugins never import each other nor look each other up by name: what one offers others is a typed
service (edge/services/). Every module under plugins/<p>/ is parsed, every import read wherever it is
(inside functions and `if TYPE_CHECKING:` blocks too), and every `.plugin(` call refused.

Nor does a plugin reach into another's tables by name (`sa.table("users", ...)`, `sa.Table("users", ...)`,
raw SQL in `sa.text(...)`, or an Alembic `op.add_column("users", ...)` in its migrations): who owns a table
is read from each plugin's `tables.py` metadata (and the core's own tables belong to the core, used through
its modules).
"""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def packages() -> list[Path]:
    return sorted(p for p in PLUGINS.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def imported(node: ast.AST, *, module: str) -> list[str]:
    """The dotted names an import statement brings in, relative imports resolved against `module`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")[: -node.level]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            target = node.module or ""
        return [f"{target}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
        return [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if isinstance(node, ast.Call) and _called(node) == "import_module":
        return [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return []


def _called(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


CORE_TABLE_MODULES = ("edge.audit", "edge.outbox")
# Alembic operations and the position of their table name (`table_name=` counts too).
_OP_TABLE_ARG = {
    "create_table": 0,
    "drop_table": 0,
    "rename_table": 0,
    "add_column": 0,
    "alter_column": 0,
    "drop_column": 0,
    "batch_alter_table": 0,
    "bulk_insert": 0,
    "create_index": 1,
    "drop_index": 1,
    "create_unique_constraint": 1,
    "create_check_constraint": 1,
    "drop_constraint": 1,
}


@cache
def table_owners() -> dict[str, str]:
    """Each table's owner: the plugin whose tables.py metadata holds it, or "edge" for the core's."""
    owners: dict[str, str] = {}
    for module in CORE_TABLE_MODULES:
        for name in importlib.import_module(module).metadata.tables:
            owners[name] = "edge"
    for package in packages():
        if (package / "tables.py").is_file():
            for name in importlib.import_module(f"plugins.{package.name}.tables").metadata.tables:
                assert name not in owners, f"two owners of the table {name!r}"
                owners[name] = package.name
    return owners


def named_table(call: ast.Call) -> str | None:
    """The table a `sa.table(...)`/`sa.Table(...)`/`op.<operation>(...)` call names, when it is a literal."""
    called = _called(call)
    if called in ("table", "Table"):
        position: int | None = 0
    else:
        position = _OP_TABLE_ARG.get(called or "")
        if position is None or not (isinstance(call.func, ast.Attribute) and _base(call.func) == "op"):
            return None
    found: ast.expr | None = call.args[position] if len(call.args) > position else None
    names = ("name",) if called in ("table", "Table") else ("table_name",)
    for keyword in call.keywords:
        if keyword.arg in names:
            found = keyword.value
    return found.value if isinstance(found, ast.Constant) and isinstance(found.value, str) else None


_SQL_TABLE = re.compile(r"\b(?:from|join|into|update|table)\s+[`\"]?([a-z_][a-z0-9_]*)", re.IGNORECASE)


def sql_tables(call: ast.Call) -> list[str]:
    """The tables raw SQL in a `sa.text("...")` (or `exec_driver_sql`) call names after FROM, JOIN, INTO,
    UPDATE or TABLE."""
    if _called(call) not in ("text", "exec_driver_sql") or not call.args:
        return []
    sql = call.args[0]
    if not (isinstance(sql, ast.Constant) and isinstance(sql.value, str)):
        return []
    return _SQL_TABLE.findall(sql.value)


def _base(func: ast.Attribute) -> str | None:
    return func.value.id if isinstance(func.value, ast.Name) else None


def crossings(package: Path, owners: dict[str, str] | None = None) -> list[str]:
    """Each import of another plugin, each `.plugin(` call and each table of another owner named in the
    package, as `file:line: what`."""
    owners = table_owners() if owners is None else owners
    own = f"plugins.{package.name}"
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent.parent)
        module = ".".join(relative.with_suffix("").parts)
        if path.name == "__init__.py":
            module += ".__init__"  # so that `from . import x` resolves to the package itself
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in imported(node, module=module):
                if (name == "plugins" or name.startswith("plugins.")) and not (
                    name == own or name.startswith(own + ".")
                ):
                    found.append(f"{relative}:{getattr(node, 'lineno', 0)}: imports {name}")
            if isinstance(node, ast.Call) and _called(node) == "plugin":
                found.append(f"{relative}:{node.lineno}: calls .plugin(...)")
            if isinstance(node, ast.Call):
                named = named_table(node)
                for table in [*([named] if named is not None else []), *sql_tables(node)]:
                    owner = owners.get(table)
                    if owner is not None and owner != package.name:
                        found.append(f"{relative}:{node.lineno}: names table {table} of {owner}")
    return found


@pytest.mark.parametrize("package", packages(), ids=lambda p: p.name)
def test_a_plugin_imports_no_other_plugin_and_looks_none_up(package: Path) -> None:
    assert crossings(package) == []


def test_the_check_finds_every_kind_of_crossing(tmp_path: Path) -> None:
    """The check itself: each way of reaching another plugin is caught, and a plugin's own imports are not."""
    root = tmp_path / "plugins"
    package = root / "tiers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from plugins.tiers import rules\nfrom . import rules as again\n")
    (package / "rules.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from plugins.auth_keys import Plugin\n"
        "def f(gateway):\n"
        "    import plugins.credits.ledger\n"
        "    from plugins import failover\n"
        "    from .. import ratelimit\n"
        "    importlib.import_module('plugins.credits')\n"
        "    return gateway.plugin('auth_keys')\n"
    )
    assert crossings(package, owners={}) == [
        "plugins/tiers/rules.py:4: imports plugins.auth_keys.Plugin",
        "plugins/tiers/rules.py:6: imports plugins.credits.ledger",
        "plugins/tiers/rules.py:7: imports plugins.failover",
        "plugins/tiers/rules.py:8: imports plugins.ratelimit",
        "plugins/tiers/rules.py:9: imports plugins.credits",
        "plugins/tiers/rules.py:10: calls .plugin(...)",
    ]


def test_the_check_finds_tables_of_other_owners_named(tmp_path: Path) -> None:
    """A table another plugin (or the core) owns, named in any module or migration, is caught; the
    package's own tables and names nobody owns are not."""
    package = tmp_path / "plugins" / "teams"
    (package / "migrations").mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import sqlalchemy as sa\n"
        "from sqlalchemy import table, column\n"
        "users = sa.table('users', sa.column('id'))\n"
        "again = table('users', column('id'))\n"
        "keys = sa.Table('api_keys', sa.MetaData())\n"
        "mine = sa.table('team_members', sa.column('id'))\n"
        "trail = sa.table('audit_log')\n"
        "named = sa.table(name='accounts')\n"
        "unknown = sa.table('nobody_has_this')\n"
        "raw = sa.text('SELECT u.id FROM team_members m JOIN `users` u ON u.id = m.user_id')\n"
        "words = sa.text('SELECT 1 FROM team_members WHERE note = :users')\n"
    )
    (package / "migrations" / "m1.py").write_text(
        "from alembic import op\n"
        "import sqlalchemy as sa\n"
        "def upgrade():\n"
        "    op.add_column('users', sa.Column('x', sa.Integer))\n"
        "    op.create_index('ix', 'accounts', ['x'])\n"
        "    op.create_table('team_members')\n"
        "    op.drop_index('ix', table_name='users')\n"
    )
    owners = {"users": "auth_keys", "accounts": "auth_keys", "api_keys": "auth_keys", "team_members": "teams"}
    owners["audit_log"] = "edge"
    assert crossings(package, owners=owners) == [
        "plugins/teams/__init__.py:3: names table users of auth_keys",
        "plugins/teams/__init__.py:4: names table users of auth_keys",
        "plugins/teams/__init__.py:5: names table api_keys of auth_keys",
        "plugins/teams/__init__.py:7: names table audit_log of edge",
        "plugins/teams/__init__.py:8: names table accounts of auth_keys",
        "plugins/teams/__init__.py:10: names table users of auth_keys",
        "plugins/teams/migrations/m1.py:4: names table users of auth_keys",
        "plugins/teams/migrations/m1.py:5: names table accounts of auth_keys",
        "plugins/teams/migrations/m1.py:7: names table users of auth_keys",
    ]


def test_every_plugin_table_has_one_owner() -> None:
    owners = table_owners()
    assert owners["users"] == "auth_keys" and owners["team_members"] == "teams" and owners["audit_log"] == "edge"
