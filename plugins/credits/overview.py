"""The platform's usage as the admins' overview shows it, and one account's months (the team's usage page),
read from the roll-ups (rollups.py) only.

Two queries whatever the number of usage rows (the service runs them at once, on two connections):
`usage_daily` over at most 31 days (rows: days x models x routes x shards) summed per model and route in the
four windows at once, and one month of `usage_monthly` (a row per account that spent) for the top accounts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import AccountMonths, MonthTotals, RouteUsage, TopAccount, TopModel, UsageTotals
from plugins.credits.rollups import month_of
from plugins.credits.tables import usage_daily, usage_monthly

ROUTES = ("local", "cloud")
_SUMS = ("requests", "prompt_tokens", "completion_tokens", "charged_milli")
_WINDOWS = ("today", "last_7_days", "last_30_days", "this_month")


def _windows(today: date) -> dict[str, date]:
    """Each window's first day; every one ends today."""
    return {
        "today": today,
        "last_7_days": today - timedelta(days=6),
        "last_30_days": today - timedelta(days=29),
        "this_month": month_of(today),
    }


def _daily_query() -> sa.Select[Any]:
    # One row per model and route, each window's sums beside each other: a few rows to decode rather than
    # one per day (the driver's row decoding cost more than the database's grouping). CAST: MariaDB's SUM
    # is a DECIMAL, which the driver would turn into Decimal objects.
    d = usage_daily.c
    sums = [
        sa.cast(
            sa.func.sum(sa.case((d.day >= sa.bindparam(f"b_{window}", type_=sa.Date()), d[name]), else_=0)),
            sa.BigInteger(),
        )
        for window in _WINDOWS
        for name in _SUMS
    ]
    first = sa.bindparam("b_first", type_=sa.Date())
    return (
        sa.select(d.model, d.route, *sums)
        .where(d.day >= first, d.day <= sa.bindparam("b_last", type_=sa.Date()))
        .group_by(d.model, d.route)
    )


# Built once with bound parameters, as the hot statements are (rows.py): building and cache-keying a statement
# of 16 sums on every call cost more than the query.
_DAILY = _daily_query()
_m = usage_monthly.c
_TOP_ACCOUNTS = (
    sa.select(_m.account_id, *(_m[n] for n in _SUMS))
    .where(_m.month == sa.bindparam("b_month", type_=sa.Date()))
    .order_by(_m.charged_milli.desc(), _m.account_id)
    .limit(sa.bindparam("b_top", type_=sa.Integer(), literal_execute=True))
)
# Two primary-key lookups: (month, account_id) is the table's key.
_ACCOUNT_MONTHS = sa.select(_m.month, *(_m[n] for n in _SUMS)).where(
    _m.account_id == sa.bindparam("b_account", type_=sa.BigInteger()),
    _m.month.in_([sa.bindparam("b_this", type_=sa.Date()), sa.bindparam("b_last", type_=sa.Date())]),
)


def _totals(values: Sequence[Any]) -> UsageTotals:
    return UsageTotals(*(int(v or 0) for v in values))


def _add(into: list[int], values: Sequence[Any]) -> None:
    for i, value in enumerate(values):
        into[i] += int(value or 0)


async def windows(
    conn: AsyncConnection, *, today: date, top: int
) -> tuple[tuple[RouteUsage, ...], tuple[TopModel, ...]]:
    """Every route's totals in the four windows, and the `top` models of this month."""
    starts = _windows(today)
    width = len(_SUMS)
    routes: dict[str, dict[str, list[int]]] = {r: {w: [0] * width for w in _WINDOWS} for r in ROUTES}
    models: dict[str, list[int]] = {}
    params = {f"b_{window}": start for window, start in starts.items()}
    params |= {"b_first": min(starts.values()), "b_last": today}
    for model, route, *sums in (await conn.execute(_DAILY, params)).all():
        if route not in routes:
            routes[route] = {w: [0] * width for w in _WINDOWS}
        for i, window in enumerate(_WINDOWS):
            _add(routes[route][window], sums[i * width : (i + 1) * width])
        month = sums[_WINDOWS.index("this_month") * width :][:width]
        if any(month):
            _add(models.setdefault(model, [0] * width), month)
    ranked = sorted(models.items(), key=lambda item: (-item[1][-1], item[0]))[:top]
    return (
        tuple(RouteUsage(route, **{w: _totals(v) for w, v in sums.items()}) for route, sums in routes.items()),
        tuple(TopModel(name, _totals(sums)) for name, sums in ranked),
    )


async def top_accounts(conn: AsyncConnection, *, today: date, top: int) -> tuple[TopAccount, ...]:
    """The `top` accounts by milli-credits charged this month."""
    rows = (await conn.execute(_TOP_ACCOUNTS, {"b_month": month_of(today), "b_top": top})).all()
    return tuple(TopAccount(int(row[0]), _totals(row[1:])) for row in rows)


async def account_months(conn: AsyncConnection, *, account_id: int, today: date) -> AccountMonths:
    """The account's totals this calendar month and last, from `usage_monthly` only."""
    this_month = month_of(today)
    last_month = month_of(this_month - timedelta(days=1))
    params = {"b_account": account_id, "b_this": this_month, "b_last": last_month}
    found: dict[date, UsageTotals] = {}
    for month, *sums in (await conn.execute(_ACCOUNT_MONTHS, params)).all():
        found[date.fromisoformat(month) if isinstance(month, str) else month] = _totals(sums)
    return AccountMonths(
        account_id=account_id,
        this_month=MonthTotals(this_month, found.get(this_month, UsageTotals())),
        last_month=MonthTotals(last_month, found.get(last_month, UsageTotals())),
    )
