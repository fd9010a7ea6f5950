"""Each plugin's tables (its SQLAlchemy `MetaData`, what its code reads and writes) are what its migrations
build, on SQLite and on MariaDB: Alembic's autogenerate finds nothing to change. A column added to a
`tables.py` without a migration, or a migration that drifted from it, fails here before it fails a query."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from edge.db import sync_url
from tests.conftest import ROOT

# The core's tables live beside the code that uses them: the events outbox, and the admins' audit trail.
CORE_TABLES = ("edge.outbox", "edge.audit")


def schemas() -> list[str]:
    """The module declaring each schema's tables: the core's, and every plugin with migrations' `tables`."""
    owners = [f"plugins.{p.parent.name}.tables" for p in sorted(ROOT.glob("plugins/*/migrations")) if p.is_dir()]
    return [*CORE_TABLES, *owners]


def _default(text: str | None) -> str | None:
    """A server default as either side spells it: MariaDB reflects `sa.false()` as '0'."""
    if text is None:
        return None
    text = text.strip("()'\" ").lower()
    return {"false": "0", "true": "1"}.get(text, text)


def same_default(
    context: Any, inspected: Any, declared: Any, inspected_default: str | None, _: Any, rendered_default: str | None
) -> bool | None:
    """False (no difference) when both defaults are spelled alike; else alembic's own comparison."""
    return False if _default(inspected_default) == _default(rendered_default) else None


def differences(url: str, metadata: sa.MetaData) -> list[Any]:
    """What autogenerate would change to make the database's copy of `metadata`'s tables match it."""
    own = set(metadata.tables)

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or name in own

    engine = sa.create_engine(sync_url(url), future=True)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": same_default, "include_name": include_name}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


@pytest.mark.parametrize("owner", schemas())
def test_the_migrations_build_exactly_the_tables_the_code_declares(owner: str, db_url: str) -> None:
    tables = importlib.import_module(owner)
    metadata = tables.metadata
    assert isinstance(metadata, sa.MetaData) and metadata.tables, f"{owner}.tables declares no tables"
    assert differences(db_url, metadata) == []


def test_every_plugin_with_migrations_is_checked() -> None:
    assert {*CORE_TABLES, "plugins.auth_keys.tables", "plugins.credits.tables", "plugins.notify.tables"} <= set(
        schemas()
    )
    for owner in schemas():
        assert (ROOT / Path(*owner.split("."))).with_suffix(".py").exists(), f"{owner} is missing"
