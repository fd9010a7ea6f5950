"""The credits service (`edge.services.Credits`): what other plugins may do with credits, with typed results.

A grant is idempotent by (kind, idempotency key), so billing can repeat a paid order's grant after a crash
and an admin's retried click is one adjustment; the ledger row a repeat finds is the first one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, TypeVar

from edge.services import (
    AccountMonths,
    Balance,
    Grant,
    LedgerEntry,
    MonthUsage,
    Spend,
    SpendLimit,
    UsageItem,
    UsageOverview,
)
from plugins.credits import admin_reads, overview, reports
from plugins.credits import scopes as spend_scopes

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from plugins.credits import Plugin

T = TypeVar("T")


class CreditService:
    """Implements `edge.services.Credits` over the plugin's ledger."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    async def grant(
        self,
        *,
        account_id: int,
        amount_milli: int,
        kind: str,
        idempotency_key: str,
        reason: str | None = None,
        actor: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> Grant:
        row = await self.plugin.grant(
            account_id=account_id,
            amount_milli=amount_milli,
            kind=kind,
            reference=idempotency_key,
            actor=actor,
            reason=reason,
            conn=conn,
        )
        return Grant(**row)

    async def balance(self, account_id: int) -> Balance:
        return Balance(**await self.plugin.ledger.state(account_id))

    async def month_usage(self, account_id: int, *, user_id: int | None = None) -> MonthUsage:
        today = datetime.now(self.plugin.tz).date()
        if user_id is None:
            # The account's month is one row of the `usage_monthly` roll-up, whatever its number of requests.
            async with self.plugin.gateway.database.connect() as conn:
                month = (await overview.account_months(conn, account_id=account_id, today=today)).this_month
            t = month.totals
            return MonthUsage(
                account_id=account_id,
                since=month.month,
                requests=t.requests,
                prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens,
                cost_milli=t.charged_milli,
            )
        totals = await reports.month_usage(
            self.plugin.gateway.database, account_id=account_id, today=today, user_id=user_id
        )
        return MonthUsage(**{**totals, "since": date.fromisoformat(totals["since"])})

    async def spend(self, *, account_id: int, limit: SpendLimit) -> Spend:
        plugin = self.plugin
        scope = spend_scopes.current(limit, now=plugin.gateway.clock.time(), tz=plugin.tz)
        async with plugin.gateway.database.connect() as conn:
            spent, held = await spend_scopes.standing(conn, scope, account_id=account_id)
        return self._spend(scope, spent, held)

    async def spends(self, *, account_id: int, limits: Sequence[SpendLimit]) -> list[Spend]:
        plugin = self.plugin
        now = plugin.gateway.clock.time()
        scopes = [spend_scopes.current(limit, now=now, tz=plugin.tz) for limit in limits]
        async with plugin.gateway.database.connect() as conn:
            found = await spend_scopes.standings(conn, scopes, account_id=account_id)
        return [self._spend(scope, spent, held) for scope, (spent, held) in zip(scopes, found, strict=True)]

    def _spend(self, scope: spend_scopes.Scope, spent: int, held: int) -> Spend:
        limit = scope.limit
        return Spend(
            limit=limit,
            spent_milli=spent,
            held_milli=held,
            remaining_milli=max(limit.limit_milli - spent - held, 0),
            period_start=None if limit.period == "total" else scope.start,
            resets_at=scope.resets_at(self.plugin.tz),
        )

    async def recount_spend(self, *, account_id: int, kind: str, scope_id: int) -> None:
        plugin = self.plugin
        async with plugin.gateway.database.begin() as conn:
            await spend_scopes.recount(
                conn, kind=kind, scope_id=scope_id, account_id=account_id, now=plugin.gateway.clock.time(), tz=plugin.tz
            )

    async def recent_usage(
        self, *, account_id: int, limit: int = 50, user_id: int | None = None, before_id: int | None = None
    ) -> list[UsageItem]:
        async with self.plugin.gateway.database.connect() as conn:
            return await admin_reads.recent_usage(
                conn, account_id=account_id, limit=limit, user_id=user_id, before_id=before_id
            )

    async def ledger_entries(self, *, account_id: int, limit: int = 50) -> list[LedgerEntry]:
        async with self.plugin.gateway.database.connect() as conn:
            return await admin_reads.ledger_entries(conn, account_id=account_id, limit=limit)

    async def usage_rows(
        self, *, since: datetime | None, until: datetime | None, after_id: int = 0, limit: int = 1000
    ) -> list[UsageItem]:
        async with self.plugin.gateway.database.connect() as conn:
            return await admin_reads.usage_rows(conn, since=since, until=until, after_id=after_id, limit=limit)

    async def usage_overview(self, *, top: int = 10) -> UsageOverview:
        # The day usage rows are stamped with (resayil_settle): the same clock and timezone.
        today = datetime.now(self.plugin.tz).date()
        top = max(1, top)
        database = self.plugin.gateway.database

        async def read(part: Callable[..., Awaitable[T]]) -> T:
            async with database.connect() as conn:
                return await part(conn, today=today, top=top)

        (routes, models), accounts = await asyncio.gather(read(overview.windows), read(overview.top_accounts))
        return UsageOverview(
            today=today, month=today.replace(day=1), routes=routes, top_accounts=accounts, top_models=models
        )

    async def account_months(self, account_id: int) -> AccountMonths:
        today = datetime.now(self.plugin.tz).date()  # as usage_overview: the day usage rows are stamped with
        async with self.plugin.gateway.database.connect() as conn:
            return await overview.account_months(conn, account_id=account_id, today=today)
