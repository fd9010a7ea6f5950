"""Versioned migrations: the core's and every enabled plugin's Alembic revisions, upgraded to all heads."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from edge.db import make_engine, sync_url

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"


def alembic_config(version_locations: list[str]) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    locations = [str(SCRIPT_LOCATION / "versions"), *version_locations]
    cfg.set_main_option("version_locations", " ".join(locations))
    cfg.set_main_option("path_separator", "space")
    return cfg


def upgrade(database_url: str, version_locations: list[str]) -> list[str]:
    """Bring the database to every head; returns the heads now applied."""
    url = sync_url(database_url)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = alembic_config(version_locations)
    engine = sa.create_engine(url, future=True)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
            return sorted(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


def pending(database_url: str, version_locations: list[str]) -> set[str]:
    """Heads in the code that the database has not reached (empty when up to date)."""
    cfg = alembic_config(version_locations)
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    engine = sa.create_engine(sync_url(database_url), future=True)
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()
    return heads - current


__all__ = ["make_engine", "pending", "upgrade"]
