"""What a full refund of a plan order does to the plan: the period that order paid for ends.

A plan order is fully refunded once its `refunded` refunds add up to its price (a partial refund keeps the
plan). That happens in the transaction that makes its last refund `refunded`: at once for a manual order,
on MyFatoorah's refund webhook otherwise (like the money itself; a pending refund may still be rejected).
The rule (see README.md, "Refunds and the plan"):
- The order's period counts only while it is part of the account's current plan: the account is on the
  order's tier with an expiry still ahead, the order's own period (its `plan_expires_at`) has not ended,
  and no later paid plan order of the account has another tier (an upgrade or a downgrade replaced it).
  Otherwise the period is used up or superseded, and the plan is left alone.
- When it counts, the account's expiry moves back by one period (`plan_days`): a refunded renewal takes
  back the days it added and keeps the periods paid before it; when nothing is left ahead the account
  falls back to `fallback_tier` with no expiry, as on expiry.
The change is conditional on the expiry read (a renewal committing meanwhile makes it read again), goes
through the accounts service in the caller's transaction (the key caches are told once it commits) and
is returned for the caller's audit row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import ACCOUNTS
from plugins.billing.order_rows import Row
from plugins.billing.tables import orders, refunds

if TYPE_CHECKING:
    from plugins.billing import Plugin

_TRIES = 5


@dataclass(frozen=True, slots=True)
class PlanCut:
    """The plan before and after a full refund took its period back."""

    tier_before: str
    expires_before: datetime
    tier_after: str
    expires_after: datetime | None

    def details(self) -> dict[str, object]:
        return {
            "plan_tier_before": self.tier_before,
            "plan_expires_before": self.expires_before.isoformat(),
            "plan_tier_after": self.tier_after,
            "plan_expires_after": None if self.expires_after is None else self.expires_after.isoformat(),
        }


async def fully_refunded(conn: AsyncConnection, *, order: Row) -> bool:
    total = await conn.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(refunds.c.amount_fils), 0)).where(
            refunds.c.order_reference == order.reference, refunds.c.status == "refunded"
        )
    )
    return int(total or 0) >= int(order.price_fils)


async def _superseded(conn: AsyncConnection, *, order: Row) -> bool:
    later = await conn.scalar(
        sa.select(orders.c.id)
        .where(
            orders.c.account_id == order.account_id,
            orders.c.id > order.id,
            orders.c.status == "paid",
            orders.c.kind == "plan",
            orders.c.tier != order.tier,
        )
        .limit(1)
    )
    return later is not None


async def end_period(plugin: Plugin, conn: AsyncConnection, *, order: Row, now: datetime) -> PlanCut | None:
    """Take back the period of the plan order `order` if it counts (module docstring); what changed."""
    if order.kind != "plan" or order.tier is None or order.plan_expires_at is None:
        return None
    if order.plan_expires_at <= now or await _superseded(conn, order=order):
        return None
    accounts = plugin.gateway.service(ACCOUNTS)
    account_id = int(order.account_id)
    for _ in range(_TRIES):
        account = await accounts.account(account_id, conn=conn)
        if account is None or account.tier != order.tier:
            return None
        expiry = account.plan_expires_at
        if expiry is None or expiry <= now:
            return None  # never expires (an admin's plan), or already over
        left = expiry - timedelta(days=plugin.rules.days)
        tier, after = (account.tier, left) if left > now else (plugin.gateway.config.fallback_tier, None)
        changed = await accounts.set_plan(
            account_id=account_id, tier=tier, plan_expires_at=after, if_plan_expires_at=expiry, conn=conn
        )
        if changed is not None:
            return PlanCut(tier_before=account.tier, expires_before=expiry, tier_after=tier, expires_after=after)
    raise RuntimeError(f"the plan of account {account_id} kept changing during a refund")
