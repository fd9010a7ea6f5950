"""UTC-naive timestamps as the database keeps them, and their ISO 8601 / unix forms for APIs.

`utcnow` reads the gateway's clock when given one (`edge.clock`), so expiry tests move time instead of
sleeping; without one it reads the system clock."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

from edge.clock import SYSTEM, Clock


def utcnow(clock: Clock = SYSTEM) -> datetime:
    # Whole seconds: MariaDB's DATETIME drops fractions, so both databases then hold the same value.
    return datetime.fromtimestamp(int(clock.time()), UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def unix(value: datetime | None) -> int | None:
    return None if value is None else calendar.timegm(value.timetuple())


def parse_iso(text: str) -> datetime:
    """An ISO 8601 instant as UTC-naive; a value without an offset is taken as UTC. Raises ValueError."""
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            # An offset that moves year 1 or 9999 out of datetime's range.
            raise ValueError(f"{text!r} is outside the supported range") from None
    return parsed.replace(microsecond=0)


def iso_unix(value: int | None) -> str | None:
    return None if value is None else iso(datetime.fromtimestamp(value, UTC).replace(tzinfo=None))
