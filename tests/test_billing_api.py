"""The billing API's edges: products, refusals, other accounts' orders, paging, and no token at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.billing import WEBHOOK_SECRET, billing_config, checkout, get_order
from tests.support.portal import register_user
from tests.support.servers import clean_env, run_cli


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET)) as running:
        yield running


async def test_products_list_plans_and_packs_in_both_languages(serve: Any, ollama: Any, sqlite_url: str) -> None:
    async with serve(billing_config(ollama, sqlite_url, None)) as served:
        async with served.request("GET", "/api/billing/products") as resp:
            body = await resp.json()
    assert resp.status == 200
    ids = [(p["id"], p["kind"], p["price_fils"], p.get("tier")) for p in body["products"]]
    assert ids[:3] == [
        ("basic", "plan", 2500, "basic"),
        ("pro", "plan", 7500, "pro"),
        ("enterprise", "plan", 25000, "enterprise"),
    ]
    assert [p["id"] for p in body["products"][3:]] == ["pack-5000", "pack-15000", "pack-50000"]
    assert body["products"][1]["price"] == {"ar": "٧٫٥٠٠ د.ك", "en": "7.500 KWD"}


async def test_without_a_token_checkout_answers_503_in_the_users_language(serve: Any, ollama: Any, db_url: str) -> None:
    async with serve(billing_config(ollama, db_url, None)) as served:
        for locale, words in (("ar", "الدفع الإلكتروني غير متاح"), ("en", "Online payment is not available")):
            user = await register_user(served, locale=locale)
            async with served.request(
                "POST", "/api/billing/checkout", json={"product": "pack-5000"}, headers=user.headers
            ) as resp:
                body = await resp.json()
            assert resp.status == 503 and body["error"]["code"] == "payments_not_configured", body
            assert body["error"]["message"].startswith(words)
            async with served.request("GET", "/api/billing/orders", headers=user.headers) as resp:
                assert resp.status == 200 and (await resp.json())["orders"] == []


async def test_check_config_says_payments_are_not_configured_without_a_token() -> None:
    code, out, err = await run_cli("check-config", env=clean_env())
    assert code == 0, err
    assert "note: payments are not configured" in out and "billing" in out
    code, out, err = await run_cli(
        "check-config", env=clean_env(RESAYIL_MYFATOORAH_TOKEN="t", RESAYIL_MYFATOORAH_WEBHOOK_SECRET="s")
    )
    assert code == 0 and "payments are not configured" not in out, err


async def test_checkout_refusals_need_a_session_csrf_and_a_real_product(
    serve: Any, ollama: Any, sqlite_url: str, fake: FakeMyFatoorah
) -> None:
    async with serve(billing_config(ollama, sqlite_url, fake)) as served:
        user = await register_user(served)
        async with served.request("POST", "/api/billing/checkout", json={"product": "pack-5000"}) as resp:
            assert resp.status == 401
        no_csrf = {"Cookie": user.headers["Cookie"]}
        async with served.request("POST", "/api/billing/checkout", json={"product": "pack-5000"}, headers=no_csrf) as r:
            assert r.status == 403
        for body in ({"product": "free"}, {"product": 5}, {}, {"product": "pack-5000", "price_fils": 1}):
            async with served.request("POST", "/api/billing/checkout", json=body, headers=user.headers) as resp:
                assert resp.status == 422, body
        assert not fake.invoices


async def test_another_accounts_order_is_404_like_a_missing_one(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with serve(billing_config(ollama, db_url, fake)) as served:
        owner = await register_user(served)
        other = await register_user(served)
        order = await checkout(served, owner, "pack-5000")
        assert (await get_order(served, owner, order["id"]))[0] == 200
        theirs = await get_order(served, other, order["id"])
        missing = await get_order(served, other, "ord_" + "a" * 20)
        assert theirs[0] == missing[0] == 404 and theirs[1] == missing[1]
        for bad in ("1", "ord_%2e%2e", "x" * 300):
            assert (await get_order(served, other, bad))[0] == 404


async def test_orders_are_listed_newest_first_a_page_at_a_time(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with serve(billing_config(ollama, db_url, fake)) as served:
        user = await register_user(served)
        made = [(await checkout(served, user, p))["id"] for p in ("pack-5000", "basic", "pack-15000")]
        async with served.request("GET", "/api/billing/orders?limit=2", headers=user.headers) as resp:
            first = await resp.json()
        assert [o["id"] for o in first["orders"]] == made[::-1][:2] and first["next_cursor"] is not None
        path = f"/api/billing/orders?limit=2&cursor={first['next_cursor']}"
        async with served.request("GET", path, headers=user.headers) as resp:
            second = await resp.json()
        assert [o["id"] for o in second["orders"]] == [made[0]] and second["next_cursor"] is None
        async with served.request("GET", "/api/billing/orders?limit=0", headers=user.headers) as resp:
            assert resp.status == 422


async def test_too_many_unfinished_payments_are_refused(
    serve: Any, ollama: Any, sqlite_url: str, fake: FakeMyFatoorah
) -> None:
    async with serve(billing_config(ollama, sqlite_url, fake, max_pending_orders=2)) as served:
        user = await register_user(served)
        await checkout(served, user, "pack-5000")
        await checkout(served, user, "pack-5000")
        async with served.request(
            "POST", "/api/billing/checkout", json={"product": "pack-5000"}, headers=user.headers
        ) as resp:
            assert resp.status == 429 and (await resp.json())["error"]["code"] == "too_many_pending_orders"
        assert len(fake.invoices) == 2


async def test_myfatoorah_down_at_checkout_answers_503_and_leaves_a_failed_order(
    serve: Any, ollama: Any, sqlite_url: str, fake: FakeMyFatoorah
) -> None:
    async with serve(billing_config(ollama, sqlite_url, fake)) as served:
        user = await register_user(served, locale="en")
        fake.settings.fail_status = 503
        async with served.request(
            "POST", "/api/billing/checkout", json={"product": "pack-5000"}, headers=user.headers
        ) as resp:
            body = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "payment_provider_unavailable"
        async with served.request("GET", "/api/billing/orders", headers=user.headers) as resp:
            (order,) = (await resp.json())["orders"]
        assert order["status"] == "failed" and order["invoice_id"] is None
