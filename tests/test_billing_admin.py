"""The admins' billing API on SQLite and MariaDB: who may call it, the order list's filters against
hostile input, revenue, manual (bank transfer) orders marked paid exactly once, and the audit rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.billing import WEBHOOK_SECRET, ledger_rows, shop
from tests.support.billing_admin import audit_rows, call, paid_order
from tests.support.portal import register_user
from tests.support.recorder import Recorder

ORDER = "ord_" + "a" * 20


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)) as running:
        yield running


async def test_only_an_admin_may_use_the_admin_billing_routes(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        user = await register_user(served)
        admin = await register_user(served, admin=True)
        routes = [
            ("GET", "/api/admin/orders", None),
            ("GET", f"/api/admin/orders/{ORDER}", None),
            ("GET", "/api/admin/revenue?from=2026-01-01&to=2026-01-31", None),
            ("POST", "/api/admin/orders", {"account_id": user.account_id, "product": "pack-5000", "reason": "x"}),
            ("POST", f"/api/admin/orders/{ORDER}/refund", {"amount_fils": 1, "reason": "x"}),
            ("POST", f"/api/admin/orders/{ORDER}/mark-paid", {"reference": "T1", "reason": "x"}),
        ]
        for method, path, body in routes:
            anonymous = await call(served, method, path, None, body)
            plain = await call(served, method, path, user, body)
            assert (anonymous[0], anonymous[1]["error"]["code"]) == (401, "not_authenticated"), path
            assert (plain[0], plain[1]["error"]["code"]) == (403, "admin_required"), path
        # An admin without the CSRF header changes nothing.
        no_csrf = await call(served, "POST", "/api/admin/orders", admin, routes[3][2], **{"X-CSRF-Token": "nope"})
        assert no_csrf[0] == 403 and no_csrf[1]["error"]["code"] == "csrf_failed"
        assert await audit_rows(served) == []
        assert (await call(served, "GET", f"/api/admin/orders/{ORDER}", admin))[0] == 404
        assert (await call(served, "GET", "/api/admin/orders/1", admin))[0] == 404


async def test_the_order_list_filters_pages_and_refuses_hostile_filters(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin = await register_user(served, admin=True)
        alice, bob = await register_user(served), await register_user(served)
        first = await paid_order(served, fake, alice, "pack-5000")
        second = await paid_order(served, fake, bob, "pro")
        async with served.request("POST", "/api/billing/checkout", json={"product": "pack-5000"}, headers=bob.headers):
            pass

        status, body = await call(served, "GET", "/api/admin/orders", admin)
        assert status == 200 and len(body["orders"]) == 3 and body["next_cursor"] is None
        assert body["orders"][1]["id"] == second["id"] and body["orders"][1]["account_id"] == bob.account_id
        paid = (await call(served, "GET", "/api/admin/orders?status=paid", admin))[1]["orders"]
        assert [o["id"] for o in paid] == [second["id"], first["id"]]
        assert all(o["refunded_fils"] == 0 and o["manual"] is False for o in paid)
        by_product = (await call(served, "GET", "/api/admin/orders?product=pro", admin))[1]["orders"]
        assert [o["id"] for o in by_product] == [second["id"]]
        mine = (await call(served, "GET", f"/api/admin/orders?account={alice.account_id}", admin))[1]["orders"]
        assert [o["id"] for o in mine] == [first["id"]]
        future = (await call(served, "GET", "/api/admin/orders?from=2999-01-01T00:00:00Z", admin))[1]["orders"]
        assert future == []
        page1 = (await call(served, "GET", "/api/admin/orders?limit=2", admin))[1]
        page2 = (await call(served, "GET", f"/api/admin/orders?limit=2&cursor={page1['next_cursor']}", admin))[1]
        assert len(page1["orders"]) == 2 and [o["id"] for o in page2["orders"]] == [first["id"]]

        hostile = {
            "status=paid'--": "status_invalid",
            "product=pro%27%20OR%201%3D1": "product_invalid",
            "account=-1": "account_invalid",
            "account=99999999999999999999": "account_invalid",
            "account=%D9%A3": "account_invalid",
            "from=yesterday": "from_invalid",
            "to=2026-13-01": "to_invalid",
            "from=2026-02-01&to=2026-01-01": "to_before_from",
            "limit=0": "limit_invalid",
            "limit=101": "limit_invalid",
            "cursor=abc": "cursor_invalid",
            "status=paid&status=pending": "status_repeated",
            "sort=id": "field_unknown",
        }
        for query, code in hostile.items():
            status, body = await call(served, "GET", f"/api/admin/orders?{query}", admin)
            assert status == 422 and body["error"]["code"] == code, (query, body)
            assert body["error"]["fields"][body["error"]["param"]]["code"] == code


async def test_revenue_sums_paid_fils_by_product_and_by_day_within_a_capped_range(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user = await register_user(served, admin=True), await register_user(served)
        await paid_order(served, fake, user, "pack-5000")
        await paid_order(served, fake, user, "pack-5000")
        await paid_order(served, fake, user, "pro")
        today = datetime.now(UTC).astimezone(served.gateway.tz).date().isoformat()
        status, body = await call(served, "GET", f"/api/admin/revenue?from={today}&to={today}", admin)
        assert status == 200 and body["paid_fils"] == 5000 + 5000 + 7500 and body["orders"] == 3
        assert body["by_product"] == [
            {"product": "pack-5000", "orders": 2, "paid_fils": 10_000},
            {"product": "pro", "orders": 1, "paid_fils": 7500},
        ]
        assert body["by_day"] == [{"day": today, "orders": 3, "paid_fils": 17_500}]
        empty = (await call(served, "GET", "/api/admin/revenue?from=2020-01-01&to=2020-12-31", admin))[1]
        assert empty["paid_fils"] == 0 and empty["by_day"] == []
        for query, code in {
            "from=2020-01-01": "to_invalid",
            "from=2020-01-01&to=2021-01-02": "range_too_long",
            "from=2020-02-01&to=2020-01-01": "to_before_from",
            "from=2020-02-30&to=2020-03-01": "from_invalid",
            "from=20200101&to=2020-03-01": "from_invalid",
            "from=2020-01-01&to=2020-01-02&x=1": "field_unknown",
        }.items():
            status, body = await call(served, "GET", f"/api/admin/revenue?{query}", admin)
            assert status == 422 and body["error"]["code"] == code, (query, body)


async def test_a_manual_order_marked_paid_twice_and_concurrently_is_credited_once_and_audited(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    recorder = Recorder()
    async with shop(serve, ollama, db_url, fake, plugins=[recorder]) as served:
        admin, other_admin = await register_user(served, admin=True), await register_user(served, admin=True)
        customer = await register_user(served, name="Gulf Trading Co.")
        body = {"account_id": customer.account_id, "product": "enterprise", "reason": "bank transfer agreed"}
        status, created = await call(served, "POST", "/api/admin/orders", admin, body)
        order = created["order"]
        assert status == 201 and order["status"] == "pending" and order["manual"] is True
        assert order["account_id"] == customer.account_id and order["amount_fils"] == 25_000
        assert order["invoice_id"] is None and "payment_url" not in order
        path = f"/api/admin/orders/{order['id']}/mark-paid"
        answers = await asyncio.gather(
            *(
                call(served, "POST", path, who, {"reference": "NBK-2026-0042", "reason": "transfer received"})
                for who in [admin, other_admin] * 4
            )
        )
        assert [s for s, _ in answers] == [200] * 8
        assert sorted(b["credited"] for _, b in answers) == [False] * 7 + [True]
        again = await call(served, "POST", path, admin, {"reference": "NBK-2026-0042", "reason": "again"})
        assert again[0] == 200 and again[1]["credited"] is False and again[1]["order"]["status"] == "paid"

        (row,) = await ledger_rows(served, customer.account_id)
        assert (row.kind, row.amount_milli) == ("subscription", 20_000_000)
        trail = await audit_rows(served, f"order:{order['id']}")
        assert [r["action"] for r in trail] == ["billing.manual_order", "billing.mark_paid"]
        made, paid = trail
        assert made["actor_user_id"] == admin.user_id and made["reason"] == "bank transfer agreed"
        assert made["ip"] == "127.0.0.1" and made["details"]["account_id"] == customer.account_id
        assert paid["details"] == {"transfer_reference": "NBK-2026-0042", "amount_fils": 25_000}
        assert paid["reason"] == "transfer received" and paid["at"] is not None
        await served.gateway.drain()
        await recorder.wait_events(2)
        assert len(recorder.named("subscription.activated")) == 1
        assert len(recorder.named("enterprise.registered")) == 1


async def test_manual_orders_refuse_bad_input_and_online_orders_cannot_be_marked_paid(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user = await register_user(served, admin=True), await register_user(served)
        bad = {
            "account_id": ("account_id_invalid", {"account_id": "1", "product": "pro", "reason": "r"}),
            "unknown": ("account_id_not_found", {"account_id": 2**62, "product": "pro", "reason": "r"}),
            "product": ("product_invalid", {"account_id": user.account_id, "product": "gold", "reason": "r"}),
            "reason": ("reason_required", {"account_id": user.account_id, "product": "pro", "reason": "\u200b "}),
            "extra": ("field_unknown", {"account_id": user.account_id, "product": "pro", "reason": "r", "fils": 1}),
        }
        for name, (code, body) in bad.items():
            status, answer = await call(served, "POST", "/api/admin/orders", admin, body)
            assert status == 422 and answer["error"]["code"] == code, name
        online = await paid_order(served, fake, user, "pack-5000")
        status, answer = await call(
            served, "POST", f"/api/admin/orders/{online['id']}/mark-paid", admin, {"reference": "x", "reason": "y"}
        )
        assert status == 409 and answer["error"]["code"] == "not_a_manual_order"
        assert len(await ledger_rows(served, user.account_id)) == 1
        assert await audit_rows(served) == []
