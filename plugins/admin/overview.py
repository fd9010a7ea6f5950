"""`GET /api/admin/overview`: the whole platform on one page, from what each owner keeps ready to read.

Nothing here scans usage rows or orders: usage comes from the credits plugin's roll-ups (CREDITS), users and
plans from indexed counts (ACCOUNTS), revenue from paid orders found by their indexed `paid_at` (BILLING),
upstreams and the cloud budget from failover's live state (FAILOVER). The parts are asked for at once, each
on its own connection. A part whose plugin is off is `null`, never a 500.

Days: users' and revenue's windows start at local midnights of the config's `timezone`; usage is counted by
the local day its rows were stamped with (the credits plugin's `timezone`; both default to Asia/Kuwait).
"Today" is that day, "last 7 days" it and the 6 before, "last 30 days" it and the 29 before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

from edge.clock import utc_now
from edge.services import (
    ACCOUNTS,
    BILLING,
    CREDITS,
    FAILOVER,
    Revenue,
    UsageOverview,
    UsageTotals,
    UserCounts,
)
from plugins.admin.answers import iso

if TYPE_CHECKING:
    from edge.gateway import Gateway

TOP = 10
WINDOWS = ("today", "last_7_days", "last_30_days")
_BACK = {"today": 0, "last_7_days": 6, "last_30_days": 29}
T = TypeVar("T")


def _utc(day: date, tz: ZoneInfo) -> datetime:
    """The local midnight starting `day`, as the database keeps instants (UTC, no tzinfo)."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC).replace(tzinfo=None)


def _month_before(first: date) -> date:
    return (first - timedelta(days=1)).replace(day=1)


async def _maybe(call: Awaitable[T] | None) -> T | None:
    return None if call is None else await call


def _totals(t: UsageTotals) -> dict[str, int]:
    return asdict(t)


def _usage(found: UsageOverview) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for window in (*WINDOWS, "this_month"):
        per_route = {r.route: getattr(r, window) for r in found.routes}
        total = UsageTotals(*(sum(getattr(t, f) for t in per_route.values()) for f in _totals(UsageTotals())))
        out[window] = {route: _totals(t) for route, t in per_route.items()} | {"total": _totals(total)}
    return out


def _revenue(found: Revenue) -> dict[str, Any]:
    return {
        "since": iso(found.since),
        "until": iso(found.until),
        "paid_orders": found.paid_orders,
        "paid_fils": found.paid_fils,
        "refunded_fils": found.refunded_fils,
        "net_fils": found.paid_fils - found.refunded_fils,
    }


def _users(found: UserCounts, tiers: list[str]) -> dict[str, Any]:
    by_tier = dict.fromkeys(tiers, 0) | dict(found.users_by_tier)
    return {
        "total": sum(by_tier.values()),
        "by_tier": by_tier,
        "new": dict(zip(WINDOWS, found.new_users, strict=True)),
    }


async def build(gateway: Gateway) -> dict[str, Any]:
    """The overview's body (see the README's table)."""
    tz = gateway.tz
    now = utc_now(gateway.clock)
    today = now.replace(tzinfo=UTC).astimezone(tz).date()
    month = today.replace(day=1)
    accounts, credits = gateway.maybe(ACCOUNTS), gateway.maybe(CREDITS)
    billing, failover = gateway.maybe(BILLING), gateway.maybe(FAILOVER)
    bounds = [_utc(_month_before(month), tz), _utc(month, tz), now]
    counted, usage, revenue, upstreams, budget = await asyncio.gather(
        _maybe(
            accounts.counts(
                now=now,
                new_since=tuple(_utc(today - timedelta(days=_BACK[w]), tz) for w in WINDOWS),
                expiring_before=now + timedelta(days=7),
            )
            if accounts
            else None
        ),
        _maybe(credits.usage_overview(top=TOP) if credits else None),
        _maybe(billing.revenue(bounds=bounds) if billing else None),
        _maybe(failover.upstreams() if failover else None),
        _maybe(failover.cloud_budget() if failover else None),
    )
    tops: list[dict[str, Any]] | None = None
    if usage is not None:
        ids = [top.account_id for top in usage.top_accounts]
        known = {a.id: a for a in await accounts.accounts(ids)} if accounts and ids else {}
        tops = [
            {
                "account_id": top.account_id,
                "tier": known[top.account_id].tier if top.account_id in known else None,
                "owner_user_id": known[top.account_id].owner_user_id if top.account_id in known else None,
            }
            | _totals(top.totals)
            for top in usage.top_accounts
        ]
    return {
        "generated_at": iso(now),
        "timezone": str(tz),
        "today": today.isoformat(),
        "users": None if counted is None else _users(counted, list(gateway.config.tiers)),
        "subscriptions": None
        if counted is None
        else {"active": counted.active_subscriptions, "expiring_7_days": counted.expiring_subscriptions},
        "usage": None if usage is None else _usage(usage),
        "revenue": None
        if revenue is None
        else {"currency": revenue[1].currency, "this_month": _revenue(revenue[1]), "last_month": _revenue(revenue[0])},
        "cloud_budget": None if budget is None else asdict(budget),
        "upstreams": None if upstreams is None else [asdict(u) for u in upstreams],
        "top_accounts": tops,
        "top_models": None if usage is None else [{"model": m.model} | _totals(m.totals) for m in usage.top_models],
    }
