"""A full refund of a plan order ends the period it paid for, on SQLite and MariaDB through the fake
MyFatoorah: the current plan falls back to `fallback_tier` once MyFatoorah confirms the refund (and /v1
sees it on the next request), a refunded renewal takes back only its own period, a refund of a period an
upgrade replaced leaves the plan alone, a partial refund keeps it, and a manual order's refund ends it at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge.services import ACCOUNTS
from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.billing import WEBHOOK_SECRET, account_row, order_row, shop
from tests.support.billing_admin import audit_rows, call, paid_order
from tests.support.portal import LoggedIn, bearer, create_key, register_user, set_tier


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)) as running:
        yield running


async def refund(served: Any, fake: FakeMyFatoorah, admin: LoggedIn, order: dict[str, Any], fils: int) -> None:
    """Refund `fils` of the order and let MyFatoorah confirm it (webhook code 2)."""
    path = f"/api/admin/orders/{order['id']}/refund"
    status, body = await call(served, "POST", path, admin, {"amount_fils": fils, "reason": f"refund {fils}"})
    assert status == 201 and body["refund"]["status"] == "pending", body
    fake.settle_refund(int(body["refund"]["provider_refund_id"]))
    await fake.webhooks_sent()
    assert fake.deliveries[-1].status == 200


async def v1_plan(served: Any, secret: str) -> tuple[str, Any]:
    async with served.request("GET", "/v1/account", headers=bearer(secret)) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    return body["tier"], body["plan_expires_at"]


async def plan(served: Any, account_id: int) -> tuple[str, Any]:
    row = await account_row(served, account_id)
    return row.tier, row.plan_expires_at


async def test_a_full_refund_of_the_current_plan_falls_back_at_once_and_a_partial_one_keeps_it(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user = await register_user(served, admin=True), await register_user(served)
        secret = await create_key(served, user)
        order = await paid_order(served, fake, user, "pro")
        paid = await order_row(served, order["id"])
        assert await plan(served, user.account_id) == ("pro", paid.plan_expires_at)
        assert (await v1_plan(served, secret))[0] == "pro"  # the key's principal is cached as pro
        price = int(paid.price_fils)

        # A partial refund, confirmed: the plan stays.
        await refund(served, fake, admin, order, price - 1)
        assert await plan(served, user.account_id) == ("pro", paid.plan_expires_at)
        assert (await v1_plan(served, secret))[0] == "pro"
        # Not confirmed yet: the plan stays while MyFatoorah's finance team decides.
        path = f"/api/admin/orders/{order['id']}/refund"
        status, body = await call(served, "POST", path, admin, {"amount_fils": 1, "reason": "the rest"})
        assert status == 201 and body["refund"]["status"] == "pending"
        assert await plan(served, user.account_id) == ("pro", paid.plan_expires_at)
        # Confirmed: the whole price is refunded, the plan ends now, and /v1 sees it on the next request.
        fake.settle_refund(int(body["refund"]["provider_refund_id"]))
        await fake.webhooks_sent()
        assert await plan(served, user.account_id) == ("basic", None)
        assert await v1_plan(served, secret) == ("basic", None)
        trail = [r for r in await audit_rows(served, f"order:{order['id']}") if r["action"] == "billing.plan_refunded"]
        (row,) = trail
        assert row["actor_user_id"] == admin.user_id and row["details"]["plan_tier_before"] == "pro"
        assert row["details"]["plan_tier_after"] == "basic" and row["details"]["plan_expires_after"] is None
        # A replayed confirmation changes nothing more.
        fake.settle_refund(int(body["refund"]["provider_refund_id"]))
        await fake.webhooks_sent()
        assert len([r for r in await audit_rows(served) if r["action"] == "billing.plan_refunded"]) == 1


async def test_a_refunded_renewal_takes_back_its_own_period_and_then_the_first_one_ends_the_plan(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user = await register_user(served, admin=True), await register_user(served)
        secret = await create_key(served, user)
        first = await paid_order(served, fake, user, "pro")
        renewal = await paid_order(served, fake, user, "pro")
        one, two = await order_row(served, first["id"]), await order_row(served, renewal["id"])
        assert two.plan_expires_at == one.plan_expires_at + timedelta(days=30)
        assert await plan(served, user.account_id) == ("pro", two.plan_expires_at)

        await refund(served, fake, admin, renewal, int(two.price_fils))
        # The first period, already paid for, is kept.
        assert await plan(served, user.account_id) == ("pro", one.plan_expires_at)
        tier, expiry = await v1_plan(served, secret)
        assert tier == "pro" and expiry is not None and expiry.startswith(one.plan_expires_at.isoformat()[:19])
        await refund(served, fake, admin, first, int(one.price_fils))
        assert await plan(served, user.account_id) == ("basic", None)
        assert (await v1_plan(served, secret)) == ("basic", None)


async def test_refunding_the_older_order_of_a_renewal_takes_one_period_and_the_later_one_the_rest(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user = await register_user(served, admin=True), await register_user(served)
        first = await paid_order(served, fake, user, "pro")
        renewal = await paid_order(served, fake, user, "pro")
        one, two = await order_row(served, first["id"]), await order_row(served, renewal["id"])
        await refund(served, fake, admin, first, int(one.price_fils))
        # One period paid for is left: the newer order's, counted from where the plan began.
        assert await plan(served, user.account_id) == ("pro", one.plan_expires_at)
        await refund(served, fake, admin, renewal, int(two.price_fils))
        assert await plan(served, user.account_id) == ("basic", None)


async def test_a_refund_of_a_plan_another_tier_replaced_leaves_the_newer_plan_alone(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user = await register_user(served, admin=True), await register_user(served)
        other = await register_user(served)
        pro = await paid_order(served, fake, user, "pro")
        enterprise = await paid_order(served, fake, user, "enterprise")
        upgraded = await order_row(served, enterprise["id"])
        # Back to pro: a new period from now, which the first pro order's period is no part of.
        again = await paid_order(served, fake, user, "pro")
        current = await order_row(served, again["id"])
        await refund(served, fake, admin, pro, int((await order_row(served, pro["id"])).price_fils))
        assert await plan(served, user.account_id) == ("pro", current.plan_expires_at)
        await refund(served, fake, admin, enterprise, int(upgraded.price_fils))
        assert await plan(served, user.account_id) == ("pro", current.plan_expires_at)
        # Another account's plan is never touched by this account's refunds.
        other_order = await paid_order(served, fake, other, "pro")
        other_row = await order_row(served, other_order["id"])
        # A pack's full refund takes credits only.
        pack = await paid_order(served, fake, user, "pack-5000")
        await refund(served, fake, admin, pack, 5000)
        assert await plan(served, user.account_id) == ("pro", current.plan_expires_at)
        assert await plan(served, other.account_id) == ("pro", other_row.plan_expires_at)


async def test_a_plan_change_is_conditional_on_the_expiry_read(serve: Any, ollama: Any, db_url: str) -> None:
    """What a refund relies on when a renewal commits between its read and its write."""
    async with shop(serve, ollama, db_url, None) as served:
        user = await register_user(served)
        accounts = served.gateway.service(ACCOUNTS)
        start = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        await set_tier(served, account_id=user.account_id, tier="pro", plan_expires_at=start + timedelta(days=60))
        moved = await accounts.set_plan(
            account_id=user.account_id, tier="basic", plan_expires_at=None, if_plan_expires_at=start
        )
        assert moved is None and await plan(served, user.account_id) == ("pro", start + timedelta(days=60))
        moved = await accounts.set_plan(
            account_id=user.account_id, plan_expires_at=start, if_plan_expires_at=start + timedelta(days=60)
        )
        assert moved is not None and await plan(served, user.account_id) == ("pro", start)


async def test_a_manual_plan_order_refunded_in_full_ends_the_plan_in_the_refund_itself(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, customer = await register_user(served, admin=True), await register_user(served)
        secret = await create_key(served, customer)
        body = {"account_id": customer.account_id, "product": "enterprise", "reason": "bank transfer"}
        status, created = await call(served, "POST", "/api/admin/orders", admin, body)
        order = created["order"]
        path = f"/api/admin/orders/{order['id']}"
        status, _ = await call(served, "POST", f"{path}/mark-paid", admin, {"reference": "NBK-1", "reason": "in"})
        assert status == 200 and (await v1_plan(served, secret))[0] == "enterprise"
        status, made = await call(served, "POST", f"{path}/refund", admin, {"amount_fils": 25_000, "reason": "back"})
        assert status == 201 and made["refund"]["status"] == "refunded"
        assert await plan(served, customer.account_id) == ("basic", None)
        assert await v1_plan(served, secret) == ("basic", None)
        (row,) = [r for r in await audit_rows(served, f"order:{order['id']}") if r["action"] == "billing.refund"]
        assert row["details"]["plan_tier_before"] == "enterprise" and row["details"]["plan_tier_after"] == "basic"
