"""The `billing.renewals` job on SQLite and MariaDB: `subscription.renewal_due` once per account and expiry
however often it runs, a renewal earning its own reminder, and an ended plan falling back to
`fallback_tier` once, with the events naming the expiry the account row holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from edge.outbox import events
from plugins.billing import renewals
from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.billing import WEBHOOK_SECRET, account_row, shop
from tests.support.billing_admin import paid_order
from tests.support.portal import register_user, set_tier


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)) as running:
        yield running


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


async def published(served: Any, name: str) -> list[dict[str, Any]]:
    async with served.gateway.database.connect() as conn:
        rows = (
            await conn.execute(sa.select(events.c.payload).where(events.c.name == name).order_by(events.c.id))
        ).all()
    return [orjson.loads(row.payload) for row in rows]


async def test_renewal_due_fires_once_per_expiry_and_an_ended_plan_falls_back_once(
    serve: Any, ollama: Any, db_url: str
) -> None:
    async with shop(serve, ollama, db_url, None, renewal_reminder_days=3) as served:
        plugin = served.gateway.pm.get_plugin("billing")
        start = now()
        soon = await register_user(served, locale="en")
        later = await register_user(served)
        await set_tier(served, account_id=soon.account_id, tier="pro", plan_expires_at=start + timedelta(days=2))
        await set_tier(served, account_id=later.account_id, tier="pro", plan_expires_at=start + timedelta(days=10))
        for _ in range(4):
            await renewals.run(plugin, now=start)
        (due,) = await published(served, "subscription.renewal_due")
        assert due["account_id"] == soon.account_id and due["tier"] == "pro" and due["product"] == "pro"
        assert due["plan_expires_at"] == (start + timedelta(days=2)).isoformat() and due["days_left"] == 2
        assert due["user_id"] == soon.user_id and due["locale"] == "en"

        # Renewed: the new expiry gets its own reminder, once.
        renewed = start + timedelta(days=32)
        await set_tier(served, account_id=soon.account_id, tier="pro", plan_expires_at=renewed)
        for _ in range(3):
            await renewals.run(plugin, now=start + timedelta(days=30))
        dues = await published(served, "subscription.renewal_due")
        assert [d["account_id"] for d in dues] == [soon.account_id, soon.account_id]
        assert dues[1]["plan_expires_at"] == renewed.isoformat()
        # The other plan ended unrenewed meanwhile (its window passed while the job did not run: no reminder).
        (gone,) = await published(served, "subscription.expired")
        assert (gone["account_id"], gone["tier"], gone["fallback_tier"]) == (later.account_id, "pro", "basic")

        # Not renewed again: past the expiry the account is on the fallback tier, announced once.
        for _ in range(3):
            await renewals.run(plugin, now=renewed + timedelta(minutes=1))
        expired = await published(served, "subscription.expired")
        assert [e["account_id"] for e in expired] == [later.account_id, soon.account_id]
        assert expired[1]["plan_expires_at"] == renewed.isoformat()
        account = await account_row(served, soon.account_id)
        assert (account.tier, account.plan_expires_at) == ("basic", None)
        assert len(await published(served, "subscription.renewal_due")) == 2


async def test_an_expiry_renewed_after_the_job_read_it_is_not_undone(serve: Any, ollama: Any, db_url: str) -> None:
    async with shop(serve, ollama, db_url, None) as served:
        accounts = served.gateway.service(renewals.ACCOUNTS)
        user = await register_user(served)
        old = now() - timedelta(hours=1)
        await set_tier(served, account_id=user.account_id, tier="pro", plan_expires_at=old)
        (seen,) = await accounts.expiring(before=now())
        await set_tier(served, account_id=user.account_id, tier="pro", plan_expires_at=old + timedelta(days=30))
        assert await accounts.lapse(account_id=seen.id, plan_expires_at=old, tier="basic") is False
        account = await account_row(served, user.account_id)
        assert (account.tier, account.plan_expires_at) == ("pro", old + timedelta(days=30))


async def test_a_paid_plans_event_names_the_expiry_the_account_holds(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        user = await register_user(served)
        await paid_order(served, fake, user, "pro")
        (activated,) = await published(served, "subscription.activated")
        account = await account_row(served, user.account_id)
        assert activated["plan_expires_at"] == account.plan_expires_at.isoformat()
        await renewals.run(served.gateway.pm.get_plugin("billing"), now=account.plan_expires_at - timedelta(days=1))
        (due,) = await published(served, "subscription.renewal_due")
        assert due["plan_expires_at"] == activated["plan_expires_at"]
