"""UTC-naive timestamps as the database keeps them, and their ISO 8601 / unix forms for APIs."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime


def utcnow() -> datetime:
    # Whole seconds: MariaDB's DATETIME drops fractions, so both databases then hold the same value.
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def unix(value: datetime | None) -> int | None:
    return None if value is None else calendar.timegm(value.timetuple())


def iso_unix(value: int | None) -> str | None:
    return None if value is None else iso(datetime.fromtimestamp(value, UTC).replace(tzinfo=None))
