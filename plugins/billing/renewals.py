"""The `billing.renewals` job: a reminder before a plan ends, and the fallback tier once it has ended.

KNET has no recurring payments, so a plan is renewed by buying it again; `subscription.renewal_due` tells
the account's owner `renewal_reminder_days` before the expiry. When the expiry passes unrenewed, the
account is put on the config's `fallback_tier` with no expiry and `subscription.expired` is published.
(The tiers plugin already applies the fallback tier to an expired plan on every request; this job makes
the stored plan, and so every view of the account, say the same.)

What stays true, however often the job runs and on whichever worker:
- Each announcement happens once per (account, expiry, kind): its `billing_plan_notices` row is the key,
  inserted in the transaction that publishes the event, so a repeat run (or a second runner) finds the
  row and publishes nothing. A renewal gives a new expiry, and so a new reminder next time.
- The fallback is conditional on the expiry the job read (`Accounts.lapse`): a plan paid in between is
  never undone. The `expired` event is stored before the account changes, so a crash in between repeats
  the change on the next run and never loses the event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from edge.clock import utc_now
from edge.events import Event
from edge.services import ACCOUNTS, Account
from plugins.billing.lifecycle import SubscriptionExpired, SubscriptionRenewalDue
from plugins.billing.tables import plan_notices

if TYPE_CHECKING:
    from plugins.billing import Plugin

log = logging.getLogger("resayil.billing")
PAGE = 500


@dataclass
class Renewals:
    """What one run did."""

    reminded: int = 0
    expired: int = 0


async def run(plugin: Plugin, *, now: datetime | None = None) -> Renewals:
    """One run of the job: every account whose plan ends within the reminder window, or has ended."""
    now = now or utc_now()
    window = now + timedelta(days=plugin.settings.renewal_reminder_days)
    accounts = plugin.gateway.service(ACCOUNTS)
    done = Renewals()
    after = 0
    while page := await accounts.expiring(before=window + timedelta(seconds=1), after_id=after, limit=PAGE):
        for account in page:
            expiry = account.plan_expires_at
            assert expiry is not None
            if expiry <= now:
                done.expired += await _expire(plugin, account=account, expiry=expiry)
            elif plugin.settings.renewal_reminder_days > 0:
                done.reminded += await _remind(plugin, account=account, expiry=expiry, now=now)
        after = page[-1].id
    if done.reminded or done.expired:
        log.info("plans: %d reminded, %d fell back", done.reminded, done.expired)
    return done


async def _announce(plugin: Plugin, *, account: Account, expiry: datetime, kind: str, event: Event) -> bool:
    """Publish `event` once per (account, expiry, kind): its notice row is the transaction's first write,
    so a second runner waits for the first and then finds the key taken. Whether this call published."""
    try:
        async with plugin.gateway.database.begin() as conn:
            await conn.execute(
                plan_notices.insert().values(
                    account_id=account.id, plan_expires_at=expiry, kind=kind, created_at=utc_now()
                )
            )
            await plugin.gateway.events.publish(event, conn=conn)
    except sa.exc.IntegrityError:
        return False
    return True


async def _remind(plugin: Plugin, *, account: Account, expiry: datetime, now: datetime) -> int:
    tiers = plugin.gateway.config.tiers
    product = account.tier if any(p.id == account.tier for p in plugin.products) else None
    event = SubscriptionRenewalDue(
        account_id=account.id,
        user_id=account.owner_user_id,
        locale=account.locale,
        phone=account.phone,
        tier=account.tier if account.tier in tiers else plugin.gateway.config.fallback_tier,
        plan_expires_at=expiry,
        product=product,
        # Whole days left, rounded up: "3" from 2 days and 1 hour on.
        days_left=-(-int((expiry - now).total_seconds()) // 86400),
    )
    return int(await _announce(plugin, account=account, expiry=expiry, kind="due", event=event))


async def _expire(plugin: Plugin, *, account: Account, expiry: datetime) -> int:
    fallback = plugin.gateway.config.fallback_tier
    event = SubscriptionExpired(
        account_id=account.id,
        user_id=account.owner_user_id,
        locale=account.locale,
        phone=account.phone,
        tier=account.tier,
        plan_expires_at=expiry,
        fallback_tier=fallback,
    )
    await _announce(plugin, account=account, expiry=expiry, kind="expired", event=event)
    lapsed = await plugin.gateway.service(ACCOUNTS).lapse(account_id=account.id, plan_expires_at=expiry, tier=fallback)
    return int(lapsed)
