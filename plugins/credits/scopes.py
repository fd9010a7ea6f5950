"""Spend scopes: what a limited key (or, later, a team member) spent and holds in the current period.

A scope is one row of credit_spend_scopes, keyed by (kind, scope id, period, period start). A request whose
principal carries limits (`edge.services.SpendLimits`) takes its hold against every scope in the same
transaction as against the balance (hold_rows.py; on MariaDB inside the same procedure call), by one
conditional UPDATE per scope:

    reserved = reserved + hold  WHERE spent + reserved + hold <= limit

so, as for the balance, no number of workers and hosts can together hold or spend past a limit. Which
scopes a hold counts against is written beside it (credit_scope_holds); settling it moves its amount from
`reserved` to what it really cost in `spent`, and releasing it gives it back, exactly once, whoever does it.

What stays true:
- a scope's `reserved_milli` is the sum of its credit_scope_holds rows;
- the scope rows of a transaction are written in (kind, scope id) order and before the balance row, in
  every transaction that touches both, so two transactions never wait on each other in a circle;
- a scope row is created the first time a limited request meets its period, with `spent` the sum of the
  scope's usage rows in that period, so a limit set in the middle of a day counts the day's spend so far;
- requests without limits never touch these tables.

Periods: `day` and `month` are calendar periods in the plugin's timezone, starting at local midnight;
`total` never resets (its period start is TOTAL_START).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import SPEND_PERIODS, SpendLimit
from plugins.credits.tables import scope_holds, spend_scopes, usage

TOTAL_START = date(1970, 1, 1)
_TOTAL_END = date(9999, 12, 31)
# The usage column that says which scope spent a usage row, by scope kind.
_SPENDER = {"key": usage.c.key_id, "member": usage.c.user_id}


class LimitReached(Exception):
    """A hold would take `scope` past its limit: the hold's transaction rolls back."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(f"{scope.kind} {scope.scope_id} reached its {scope.period} limit")
        self.scope = scope


@dataclass(frozen=True, slots=True)
class Scope:
    """One limit in its current period: the key of its row, the local days it covers [start, end), and its
    limit as the principal carries it now (a PATCH takes effect with the next request)."""

    limit: SpendLimit
    start: date
    end: date

    @property
    def kind(self) -> str:
        return self.limit.kind

    @property
    def scope_id(self) -> int:
        return self.limit.scope_id

    @property
    def period(self) -> str:
        return self.limit.period

    def resets_at(self, tz: zoneinfo.ZoneInfo) -> datetime | None:
        """When the next period starts (UTC-naive), None for `total`."""
        if self.period == "total":
            return None
        return datetime.combine(self.end, time(), tzinfo=tz).astimezone(UTC).replace(tzinfo=None)


def current(limit: SpendLimit, *, now: float, tz: zoneinfo.ZoneInfo) -> Scope:
    """`limit`'s period at Unix time `now`, in the calendar of `tz`."""
    if limit.period == "total":
        return Scope(limit, TOTAL_START, _TOTAL_END)
    today = datetime.fromtimestamp(now, tz).date()
    if limit.period == "day":
        return Scope(limit, today, today + timedelta(days=1))
    first = today.replace(day=1)
    return Scope(limit, first, (first + timedelta(days=32)).replace(day=1))


def in_order(limits: Sequence[SpendLimit], *, now: float, tz: zoneinfo.ZoneInfo) -> tuple[Scope, ...]:
    """The limits' current scopes in lock order, (kind, scope id)."""
    return tuple(sorted((current(x, now=now, tz=tz) for x in limits), key=lambda s: (s.kind, s.scope_id)))


def as_json(scopes: Sequence[Scope]) -> str:
    """The scopes as `credits_hold` reads them (migration credits_0003)."""
    return orjson.dumps(
        [
            {
                "kind": s.kind,
                "id": s.scope_id,
                "period": s.period,
                "start": s.start.isoformat(),
                "end": s.end.isoformat(),
                "limit": s.limit.limit_milli,
            }
            for s in scopes
        ]
    ).decode()


def _row(scope: Scope) -> sa.ColumnElement[bool]:
    c = spend_scopes.c
    return sa.and_(
        c.kind == scope.kind, c.scope_id == scope.scope_id, c.period == scope.period, c.period_start == scope.start
    )


def spent_query(scope: Scope, *, account_id: int) -> sa.Select[Any]:
    """The scope's spend in its period from the usage rows (what its row starts from)."""
    return sa.select(sa.func.coalesce(sa.func.sum(usage.c.cost_milli), 0)).where(
        usage.c.account_id == account_id,
        _SPENDER[scope.kind] == scope.scope_id,
        usage.c.day >= scope.start,
        usage.c.day < scope.end,
    )


# ---- inside a hold's, a settlement's or a release's transaction (SQLite; MariaDB runs the same in its procedures)


async def take(
    conn: AsyncConnection, scopes: Sequence[Scope], *, account_id: int, hold_id: str, amount: int, now: datetime
) -> None:
    """Count `amount` against every scope, or raise LimitReached for the first it would take past its limit."""
    for scope in scopes:
        for attempt in range(2):
            taken = await conn.execute(
                spend_scopes.update()
                .where(
                    _row(scope),
                    spend_scopes.c.spent_milli + spend_scopes.c.reserved_milli + amount <= scope.limit.limit_milli,
                )
                .values(reserved_milli=spend_scopes.c.reserved_milli + amount, updated_at=now)
            )
            if taken.rowcount == 1:
                break
            exists = (await conn.execute(sa.select(spend_scopes.c.kind).where(_row(scope)))).first()
            if attempt or exists is not None:
                raise LimitReached(scope)
            spent = (await conn.execute(spent_query(scope, account_id=account_id))).scalar_one()
            await conn.execute(
                spend_scopes.insert().values(
                    kind=scope.kind,
                    scope_id=scope.scope_id,
                    period=scope.period,
                    period_start=scope.start,
                    spent_milli=int(spent),
                    reserved_milli=0,
                    updated_at=now,
                )
            )
        await conn.execute(
            scope_holds.insert().values(
                hold_id=hold_id,
                kind=scope.kind,
                scope_id=scope.scope_id,
                period=scope.period,
                period_start=scope.start,
                amount_milli=amount,
            )
        )


async def unreserve(conn: AsyncConnection, *, hold_id: str) -> list[tuple[str, int, str, date]]:
    """Give the hold's amount back to every scope it counted against; the scopes' keys, in lock order.
    The hold's scope rows stay until `forget` (a settlement charges the same scopes in between)."""
    links = (
        await conn.execute(
            sa.select(
                scope_holds.c.kind,
                scope_holds.c.scope_id,
                scope_holds.c.period,
                scope_holds.c.period_start,
                scope_holds.c.amount_milli,
            )
            .where(scope_holds.c.hold_id == hold_id)
            .order_by(scope_holds.c.kind, scope_holds.c.scope_id)
        )
    ).all()
    c = spend_scopes.c
    keys = []
    for kind, scope_id, period, start, amount in links:
        key = (kind, int(scope_id), period, start)
        await conn.execute(
            spend_scopes.update()
            .where(c.kind == kind, c.scope_id == scope_id, c.period == period, c.period_start == start)
            .values(reserved_milli=c.reserved_milli - amount)
        )
        keys.append(key)
    return keys


async def charge(
    conn: AsyncConnection, keys: Sequence[tuple[str, int, str, date]], *, hold_id: str, charged: int
) -> None:
    """Add what the hold's request cost to the scopes it counted against, and forget the hold's scope rows."""
    c = spend_scopes.c
    if charged:
        for kind, scope_id, period, start in keys:
            await conn.execute(
                spend_scopes.update()
                .where(c.kind == kind, c.scope_id == scope_id, c.period == period, c.period_start == start)
                .values(spent_milli=c.spent_milli + charged)
            )
    if keys:
        await conn.execute(scope_holds.delete().where(scope_holds.c.hold_id == hold_id))


async def recount(
    conn: AsyncConnection, *, kind: str, scope_id: int, account_id: int, now: float, tz: zoneinfo.ZoneInfo
) -> None:
    """Set `spent` of the scope's current rows (each period) back to the sum of its usage rows: called when its
    limit is set again. While a key had no limit (or another period), its requests charged no row of these,
    so a row kept from before would let it spend past the limit put back. Each row is locked before its
    usage is summed, so a settlement racing with this is counted once, whichever commits first."""
    moment = datetime.fromtimestamp(now, UTC).replace(tzinfo=None)
    for period in SPEND_PERIODS:
        scope = current(SpendLimit(kind, scope_id, 0, period), now=now, tz=tz)
        locked = await conn.execute(spend_scopes.update().where(_row(scope)).values(updated_at=moment))
        if locked.rowcount:
            spent = (await conn.execute(spent_query(scope, account_id=account_id))).scalar_one()
            await conn.execute(spend_scopes.update().where(_row(scope)).values(spent_milli=int(spent)))


# ---- reading a scope (GET /v1/account, the refusal's numbers) -------------------------------------------------


async def standing(conn: AsyncConnection, scope: Scope, *, account_id: int) -> tuple[int, int]:
    """(spent, held) in the scope's period; from the usage rows when its row does not exist yet."""
    row = (
        await conn.execute(sa.select(spend_scopes.c.spent_milli, spend_scopes.c.reserved_milli).where(_row(scope)))
    ).first()
    if row is not None:
        return int(row[0]), int(row[1])
    return int((await conn.execute(spent_query(scope, account_id=account_id))).scalar_one()), 0


async def standings(conn: AsyncConnection, scopes: Sequence[Scope], *, account_id: int) -> list[tuple[int, int]]:
    """`standing` of each scope (a page of keys): the scopes' rows in one read; for those without a row yet,
    the usage rows summed once per kind and period (not once per scope)."""
    if not scopes:
        return []
    c = spend_scopes.c
    query = sa.select(c.kind, c.scope_id, c.period, c.period_start, c.spent_milli, c.reserved_milli)
    rows = await conn.execute(query.where(sa.or_(*(_row(scope) for scope in scopes))))
    found = {(r.kind, int(r.scope_id), r.period, r.period_start): (int(r[4]), int(r[5])) for r in rows}
    missing: dict[tuple[str, date, date], set[int]] = {}
    for scope in scopes:
        if (scope.kind, scope.scope_id, scope.period, scope.start) not in found:
            missing.setdefault((scope.kind, scope.start, scope.end), set()).add(scope.scope_id)
    summed: dict[tuple[str, date, int], int] = {}
    for (kind, start, end), ids in missing.items():
        spender = _SPENDER[kind]
        query = (
            sa.select(spender, sa.func.coalesce(sa.func.sum(usage.c.cost_milli), 0))
            .where(usage.c.account_id == account_id, spender.in_(sorted(ids)), usage.c.day >= start, usage.c.day < end)
            .group_by(spender)
        )
        for row in await conn.execute(query):
            summed[(kind, start, int(row[0]))] = int(row[1])
    return [
        found.get((s.kind, s.scope_id, s.period, s.start)) or (summed.get((s.kind, s.start, s.scope_id), 0), 0)
        for s in scopes
    ]
