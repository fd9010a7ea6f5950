"""The platform's usage as the admins' overview shows it, read from the roll-ups (rollups.py) only.

Two queries whatever the number of usage rows: `usage_daily` over at most 31 days (rows: days x models x
routes x shards) summed per day, model and route, and one month of `usage_monthly` (a row per account
that spent) for the top accounts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import RouteUsage, TopAccount, TopModel, UsageOverview, UsageTotals
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


def _daily_query(first: date, today: date) -> sa.Select[Any]:
    # Grouped by a prefix of the primary key (day, model, route, shard): the rows are read in key order
    # and summed as they come, with no temporary table; the windows are summed from the few rows it returns.
    d = usage_daily.c
    return (
        sa.select(d.day, d.model, d.route, *(sa.func.sum(d[name]) for name in _SUMS))
        .where(d.day >= first, d.day <= today)
        .group_by(d.day, d.model, d.route)
    )


def _totals(values: Sequence[Any]) -> UsageTotals:
    return UsageTotals(*(int(v or 0) for v in values))


def _plus(a: UsageTotals, b: UsageTotals) -> UsageTotals:
    return UsageTotals(*(getattr(a, n) + getattr(b, n) for n in _SUMS))


async def read(conn: AsyncConnection, *, today: date, top: int) -> UsageOverview:
    starts = _windows(today)
    routes: dict[str, dict[str, UsageTotals]] = {r: {w: UsageTotals() for w in _WINDOWS} for r in ROUTES}
    models: dict[str, UsageTotals] = {}
    for day, model, route, *sums in (await conn.execute(_daily_query(min(starts.values()), today))).all():
        totals = _totals(sums)
        windows = routes.setdefault(route, {w: UsageTotals() for w in _WINDOWS})
        for window, start in starts.items():
            if day >= start:
                windows[window] = _plus(windows[window], totals)
        if day >= starts["this_month"]:
            models[model] = _plus(models.get(model, UsageTotals()), totals)
    m = usage_monthly.c
    accounts = (
        await conn.execute(
            sa.select(m.account_id, *(m[n] for n in _SUMS))
            .where(m.month == month_of(today))
            .order_by(m.charged_milli.desc(), m.account_id)
            .limit(top)
        )
    ).all()
    ranked = sorted(models.items(), key=lambda item: (-item[1].charged_milli, item[0]))[:top]
    return UsageOverview(
        today=today,
        month=month_of(today),
        routes=tuple(RouteUsage(route, **windows) for route, windows in routes.items()),
        top_accounts=tuple(TopAccount(int(row[0]), _totals(row[1:])) for row in accounts),
        top_models=tuple(TopModel(name, totals) for name, totals in ranked),
    )
