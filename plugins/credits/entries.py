"""One settled request's charge and usage row, checked before they are written.

What stays true, whatever a request's usage or a plugin put in it: its charge is an integer from 0 to the
largest BIGINT and every integer of its usage row fits its column, so one request's data cannot make a
transaction fail that holds other accounts' charges (leases.py writes many in one; see batches.py for
what happens when a batch fails all the same).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from plugins.credits.tables import usage

log = logging.getLogger("resayil.credits")

BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
# The usage row's integer columns: (name, largest value, what a value that is no integer becomes).
_INTEGERS = [
    (c.name, BIGINT_MAX if isinstance(c.type, sa.BigInteger) else INT_MAX, None if c.nullable else 0)
    for c in usage.c
    if isinstance(c.type, sa.Integer)
]


def checked(
    charge_id: str, charge_milli: Any, usage_row: Mapping[str, Any], *, hold_milli: int
) -> tuple[int, dict[str, Any]]:
    """The charge and usage row as they can be written: a charge that is not an integer is the hold, a
    negative one 0; an integer column's value that is not an integer or does not fit is clamped (None where
    the column allows it). Anything changed is logged as an anomaly."""
    fixed: dict[str, str] = {}
    charge = charge_milli
    if not _fits(charge_milli, BIGINT_MAX):
        charge = _clamp(charge_milli, BIGINT_MAX, hold_milli)
        fixed["charge_milli"] = repr(charge_milli)[:40]
    row = dict(usage_row)
    for name, top, otherwise in _INTEGERS:
        value = row.get(name)
        if name not in row or _fits(value, top) or (value is None and otherwise is None):
            continue
        row[name] = _clamp(value, top, otherwise)
        fixed[name] = repr(value)[:40]
    if fixed:
        log.warning(
            "a settled charge did not fit its columns: written clamped",
            extra={"fields": {"charge": charge_id, **fixed}},
        )
    return charge, row


def _fits(value: Any, top: int) -> bool:
    return type(value) is int and 0 <= value <= top


def _clamp(value: Any, top: int, otherwise: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        return otherwise
    return min(max(int(value), 0), top)


def log_capped(account_id: int, wanted_milli: int, charged_milli: int) -> None:
    if charged_milli < wanted_milli:
        log.warning(
            "charge capped at the available balance",
            extra={"fields": {"account": account_id, "charge_milli": wanted_milli, "charged_milli": charged_milli}},
        )
