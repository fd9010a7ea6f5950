"""UTC-naive timestamps as the database keeps them, and their ISO 8601 / unix forms for APIs.

`utcnow` reads the gateway's clock when given one (`edge.clock`), so expiry tests move time instead of
sleeping; without one it reads the system clock."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

from edge.clock import SYSTEM, Clock, utc_now


def utcnow(clock: Clock = SYSTEM) -> datetime:
    # Whole seconds: MariaDB's DATETIME drops fractions, so both databases then hold the same value.
    return utc_now(clock).replace(microsecond=0)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def unix(value: datetime | None) -> int | None:
    return None if value is None else calendar.timegm(value.timetuple())


def iso_unix(value: int | None) -> str | None:
    return None if value is None else iso(datetime.fromtimestamp(value, UTC).replace(tzinfo=None))
