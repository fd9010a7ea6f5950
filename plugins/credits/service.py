"""The credits service (`edge.services.Credits`): what other plugins may do with credits, with typed results.

A grant is idempotent by (kind, idempotency key), so billing can repeat a paid order's grant after a crash
and an admin's retried click is one adjustment; the ledger row a repeat finds is the first one.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING

from edge.services import Balance, Grant, LedgerEntry, MonthUsage, Spend, SpendLimit, UsageItem
from plugins.credits import admin_reads, reports
from plugins.credits import scopes as spend_scopes

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from plugins.credits import Plugin


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

    async def month_usage(self, account_id: int) -> MonthUsage:
        today = datetime.now(self.plugin.tz).date()
        totals = await reports.month_usage(self.plugin.gateway.database, account_id=account_id, today=today)
        return MonthUsage(**{**totals, "since": date.fromisoformat(totals["since"])})

    async def spend(self, *, account_id: int, limit: SpendLimit) -> Spend:
        plugin = self.plugin
        scope = spend_scopes.current(limit, now=plugin.gateway.clock.time(), tz=plugin.tz)
        async with plugin.gateway.database.connect() as conn:
            spent, held = await spend_scopes.standing(conn, scope, account_id=account_id)
        return Spend(
            limit=limit,
            spent_milli=spent,
            held_milli=held,
            remaining_milli=max(limit.limit_milli - spent - held, 0),
            period_start=None if limit.period == "total" else scope.start,
            resets_at=scope.resets_at(plugin.tz),
        )

    async def recount_spend(self, *, account_id: int, kind: str, scope_id: int) -> None:
        plugin = self.plugin
        async with plugin.gateway.database.begin() as conn:
            await spend_scopes.recount(
                conn, kind=kind, scope_id=scope_id, account_id=account_id, now=plugin.gateway.clock.time(), tz=plugin.tz
            )

    async def recent_usage(self, *, account_id: int, limit: int = 50) -> list[UsageItem]:
        async with self.plugin.gateway.database.connect() as conn:
            return await admin_reads.recent_usage(conn, account_id=account_id, limit=limit)

    async def ledger_entries(self, *, account_id: int, limit: int = 50) -> list[LedgerEntry]:
        async with self.plugin.gateway.database.connect() as conn:
            return await admin_reads.ledger_entries(conn, account_id=account_id, limit=limit)

    async def usage_rows(
        self, *, since: datetime | None, until: datetime | None, after_id: int = 0, limit: int = 1000
    ) -> list[UsageItem]:
        async with self.plugin.gateway.database.connect() as conn:
            return await admin_reads.usage_rows(conn, since=since, until=until, after_id=after_id, limit=limit)
