"""Refunds on SQLite and MariaDB: bounded by what was paid, one MakeRefund at a time, a double click making
one refund, credits taken back never below zero, and MyFatoorah's outcome webhook (code 2) settling it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edge.services import CREDITS
from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.billing import WEBHOOK_SECRET, ledger_rows, shop
from tests.support.billing_admin import audit_rows, call, paid_order
from tests.support.portal import LoggedIn, register_user


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)) as running:
        yield running


def refund_calls(fake: FakeMyFatoorah) -> list[dict[str, Any]]:
    return [body for path, body in fake.calls if path == "/v2/MakeRefund"]


async def paid_pack(served: Any, fake: FakeMyFatoorah) -> tuple[LoggedIn, LoggedIn, dict[str, Any], str]:
    """An admin, a customer who paid a 5,000-credit pack (5.000 KWD), the order, and its refund path."""
    admin, user = await register_user(served, admin=True), await register_user(served)
    order = await paid_order(served, fake, user, "pack-5000")
    return admin, user, order, f"/api/admin/orders/{order['id']}/refund"


async def balance(served: Any, account_id: int) -> int:
    return (await served.gateway.service(CREDITS).balance(account_id)).balance_milli


async def test_a_refund_is_bounded_idempotent_takes_credits_back_and_settles_by_webhook(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user, order, path = await paid_pack(served, fake)
        body = {"amount_fils": 2000, "reason": "customer asked"}
        status, first = await call(served, "POST", path, admin, body)
        refund = first["refund"]
        assert status == 201 and refund["status"] == "pending" and refund["amount_fils"] == 2000
        assert refund["credits_taken_milli"] == 2_000_000 and refund["provider_refund_id"]
        (made,) = refund_calls(fake)
        assert (made["Key"], str(made["Amount"]), made["KeyType"]) == (order["invoice_id"], "2.000", "InvoiceId")
        # A double click: the same refund, no second MakeRefund.
        status, again = await call(served, "POST", path, admin, body)
        assert status == 200 and again["refund"]["id"] == refund["id"] and len(refund_calls(fake)) == 1
        # More than is left (5000 paid - 2000 refunded) is refused before MyFatoorah is asked.
        status, over = await call(served, "POST", path, admin, {"amount_fils": 3001, "reason": "too much"})
        assert status == 422 and over["error"]["code"] == "amount_fils_too_large"
        assert over["error"]["param"] == "amount_fils" and len(refund_calls(fake)) == 1
        assert await balance(served, user.account_id) == 3_000_000
        rows = await ledger_rows(served, user.account_id)
        assert [(r.kind, r.amount_milli) for r in rows] == [("topup", 5_000_000), ("adjustment", -2_000_000)]

        fake.settle_refund(int(refund["provider_refund_id"]))
        await fake.webhooks_sent()
        assert fake.deliveries[-1].status == 200
        status, shown = await call(served, "GET", f"/api/admin/orders/{order['id']}", admin)
        assert status == 200 and shown["order"]["refunded_fils"] == 2000
        assert [r["status"] for r in shown["refunds"]] == ["refunded"]
        (row,) = await audit_rows(served, f"order:{order['id']}")
        assert row["action"] == "billing.refund" and row["actor_user_id"] == admin.user_id
        assert row["reason"] == "customer asked" and row["ip"] == "127.0.0.1"
        assert row["details"]["amount_fils"] == 2000 and row["details"]["credits_taken_milli"] == 2_000_000


async def test_a_refund_takes_back_only_the_credits_still_available(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user = await register_user(served, admin=True), await register_user(served)
        order = await paid_order(served, fake, user, "pack-5000")
        # The customer spent 4,200 of the 5,000 credits.
        await served.gateway.service(CREDITS).grant(
            account_id=user.account_id, amount_milli=-4_200_000, kind="adjustment", idempotency_key="spent"
        )
        path = f"/api/admin/orders/{order['id']}/refund"
        status, body = await call(served, "POST", path, admin, {"amount_fils": 5000, "reason": "full refund"})
        assert status == 201 and body["refund"]["credits_taken_milli"] == 800_000
        assert await balance(served, user.account_id) == 0
        # Nothing is left to refund, and nothing more to take.
        status, body = await call(served, "POST", path, admin, {"amount_fils": 1, "reason": "one more"})
        assert status == 422 and body["error"]["code"] == "amount_fils_too_large"
        assert await balance(served, user.account_id) == 0


async def test_a_rejected_or_refused_refund_gives_the_credits_back_and_frees_the_amount(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user, order, path = await paid_pack(served, fake)
        status, body = await call(served, "POST", path, admin, {"amount_fils": 5000, "reason": "first try"})
        assert status == 201 and await balance(served, user.account_id) == 0
        fake.settle_refund(int(body["refund"]["provider_refund_id"]), status="CANCELED")
        await fake.webhooks_sent()
        shown = (await call(served, "GET", f"/api/admin/orders/{order['id']}", admin))[1]
        assert [r["status"] for r in shown["refunds"]] == ["rejected"] and shown["order"]["refunded_fils"] == 0
        assert await balance(served, user.account_id) == 5_000_000
        # MyFatoorah refuses the next one (its own bound: the fake counted the first as refunded).
        status, body = await call(served, "POST", path, admin, {"amount_fils": 4000, "reason": "second try"})
        assert status == 201 and body["refund"]["status"] == "failed"
        assert await balance(served, user.account_id) == 5_000_000
        # MyFatoorah down: the refund may have been made, so its amount stays counted.
        fake.settings.fail_status, fake.settings.fail_times = 503, 1
        status, body = await call(served, "POST", path, admin, {"amount_fils": 1000, "reason": "third try"})
        assert status == 201 and body["refund"]["status"] == "unconfirmed"
        shown = (await call(served, "GET", f"/api/admin/orders/{order['id']}", admin))[1]
        assert shown["order"]["refunded_fils"] == 1000


async def test_concurrent_refunds_of_one_order_send_one_request_at_a_time_and_never_exceed_it(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user = await register_user(served, admin=True), await register_user(served)
        order = await paid_order(served, fake, user, "pack-5000")
        fake.settings.latency = 0.3
        path = f"/api/admin/orders/{order['id']}/refund"
        answers = await asyncio.gather(
            *(call(served, "POST", path, admin, {"amount_fils": 2000, "reason": f"click {i}"}) for i in range(6))
        )
        made = [b["refund"] for s, b in answers if s == 201]
        refused = [b["error"]["code"] for s, b in answers if s != 201]
        assert len(made) == 1 and set(refused) == {"refund_in_progress"}, answers
        assert len(refund_calls(fake)) == 1
        fake.settings.latency = 0
        for i in range(3):
            await call(served, "POST", path, admin, {"amount_fils": 2000, "reason": f"later {i}"})
        shown = (await call(served, "GET", f"/api/admin/orders/{order['id']}", admin))[1]
        assert shown["order"]["refunded_fils"] == 4000 and len(refund_calls(fake)) == 2
        assert await balance(served, user.account_id) == 1_000_000


async def test_refund_inputs_and_orders_that_cannot_be_refunded(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with shop(serve, ollama, db_url, fake) as served:
        admin, user, _, path = await paid_pack(served, fake)
        for body, code in [
            ({"amount_fils": 0, "reason": "r"}, "amount_fils_out_of_range"),
            ({"amount_fils": -5, "reason": "r"}, "amount_fils_out_of_range"),
            ({"amount_fils": 1.5, "reason": "r"}, "amount_fils_invalid"),
            ({"amount_fils": True, "reason": "r"}, "amount_fils_invalid"),
            ({"amount_fils": "100", "reason": "r"}, "amount_fils_invalid"),
            ({"amount_fils": 2**70, "reason": "r"}, "amount_fils_invalid"),
            ({"amount_fils": 100}, "reason_required"),
            ({"amount_fils": 100, "reason": "r" * 501}, "reason_too_long"),
            ({"amount_fils": 100, "reason": "r", "to": "me"}, "field_unknown"),
        ]:
            status, answer = await call(served, "POST", path, admin, body)
            assert status == 422 and answer["error"]["code"] == code, body
        status, answer = await call(
            served, "POST", path, admin, {"amount_fils": 1, "reason": "r"}, **{"Idempotency-Key": "a b"}
        )
        assert status == 422 and answer["error"]["code"] == "idempotency_key_invalid"
        pending = (await call(served, "POST", "/api/billing/checkout", user, {"product": "pro"}))[1]["order"]
        status, answer = await call(
            served, "POST", f"/api/admin/orders/{pending['id']}/refund", admin, {"amount_fils": 1, "reason": "r"}
        )
        assert status == 409 and answer["error"]["code"] == "order_not_refundable"
        status, answer = await call(
            served,
            "POST",
            "/api/admin/orders/ord_bbbbbbbbbbbbbbbbbbbb/refund",
            admin,
            {"amount_fils": 1, "reason": "r"},
        )
        assert status == 404
        assert refund_calls(fake) == [] and await audit_rows(served) == []
