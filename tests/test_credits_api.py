"""The credits JSON API: a user's balance and usage, and admin adjustments with their audit trail."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from tests.support.bodies import chat_body
from tests.support.credits import crashed_request, credits_config, table_rows, until_settled
from tests.support.inputs import field_codes
from tests.support.portal import auth_plugin_entry, create_key, register_user


def config(ollama: Any, db_url: str) -> dict[str, Any]:
    return credits_config(ollama_url=ollama.url, database_url=db_url, extra_plugins=[auth_plugin_entry()], chart_days=7)


async def call(served: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with served.request(method, path, **kwargs) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def chat(served: Any, secret: str, text: str = "مرحبا، hello") -> None:
    async with served.request(
        "POST",
        "/v1/chat/completions",
        data=chat_body(text=text),
        headers={"content-type": "application/json", "Authorization": f"Bearer {secret}"},
    ) as r:
        assert r.status == 200, await r.text()


async def test_credits_shows_balance_against_the_plan(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        status, body = await call(served, "GET", "/api/credits")
        assert status == 401 and body["error"]["code"] == "not_authenticated"
        basic = await register_user(served)
        pro = await register_user(served, tier="pro")
        plugin = served.gateway.plugin("credits")
        assert await call(served, "GET", "/api/credits", headers=basic.headers) == (
            200,
            {
                "account_id": basic.account_id,
                "balance_milli": 0,
                "reserved_milli": 0,
                "available_milli": 0,
                "plan_credits_milli": 1_000_000,
                "percent_remaining": 0,
            },
        )
        await plugin.grant(account_id=basic.account_id, amount_milli=250_999, kind="grant", reference="b")
        await plugin.grant(account_id=pro.account_id, amount_milli=6_000_000, kind="grant", reference="p")
        _, mine = await call(served, "GET", "/api/credits", headers=basic.headers)
        _, theirs = await call(served, "GET", "/api/credits", headers=pro.headers)
    assert (mine["balance_milli"], mine["available_milli"], mine["percent_remaining"]) == (250_999, 250_999, 25)
    assert (theirs["plan_credits_milli"], theirs["percent_remaining"]) == (5_000_000, 100)


async def test_usage_pages_newest_first_with_daily_totals_and_only_the_callers_rows(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        plugin = served.gateway.plugin("credits")
        user = await register_user(served)
        other = await register_user(served)
        for who in (user, other):
            await plugin.grant(
                account_id=who.account_id, amount_milli=100_000, kind="grant", reference=f"s{who.account_id}"
            )
        secret = await create_key(served, user)
        for text in ("one", "two", "three"):
            await chat(served, secret, text)
        await chat(served, await create_key(served, other), "theirs")
        await until_settled(served.gateway)

        status, first = await call(served, "GET", "/api/usage?limit=2", headers=user.headers)
        assert status == 200
        status, second = await call(
            served, "GET", f"/api/usage?limit=2&cursor={first['next_cursor']}", headers=user.headers
        )
        assert status == 200
        rows = await table_rows(served.gateway, "usage", account_id=user.account_id)
        month = await plugin.month_usage(user.account_id)
        bad = [
            await call(served, "GET", f"/api/usage?{q}", headers=user.headers)
            for q in ("limit=0", "limit=500", "limit=x", "cursor=abc")
        ]
    assert len(first["data"]) == 2 and second["next_cursor"] is None and len(second["data"]) == 1
    listed = first["data"] + second["data"]
    assert [u["id"] for u in listed] == sorted((r["id"] for r in rows), reverse=True)
    assert all(u["model"] == "llama3.2:3b" and u["outcome"] == "ok" and u["created_at"].endswith("Z") for u in listed)
    assert {"request_id", "prompt_tokens", "completion_tokens", "cost_milli", "latency_ms"} <= set(listed[0])
    days = first["days"]
    today = datetime.now(ZoneInfo("Asia/Kuwait")).date().isoformat()
    assert month == {
        "account_id": user.account_id,
        "since": today[:8] + "01",
        "requests": 3,
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": 15,
        "cost_milli": sum(r["cost_milli"] for r in rows),
    }
    assert len(days) == 7 and days[-1]["day"] == today and days[0]["requests"] == 0
    assert days[-1]["requests"] == 3
    assert days[-1]["cost_milli"] == sum(r["cost_milli"] for r in rows)
    assert days[-1]["completion_tokens"] == 15
    for status, body in bad:
        assert status == 422 and body["error"]["type"] == "invalid_request_error"
        assert set(field_codes(body)) <= {"limit", "cursor"} and field_codes(body)


async def test_usage_csv_has_a_header_and_every_row(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        user = await register_user(served)
        await served.gateway.plugin("credits").grant(
            account_id=user.account_id, amount_milli=100_000, kind="grant", reference="seed"
        )
        secret = await create_key(served, user)
        for _ in range(2):
            await chat(served, secret)
        await until_settled(served.gateway)
        async with served.request("GET", "/api/usage.csv", headers=user.headers) as resp:
            assert resp.status == 200
            assert resp.headers["content-type"].startswith("text/csv")
            assert "attachment" in resp.headers["content-disposition"]
            text = await resp.text()
        status, _ = await call(served, "GET", "/api/usage.csv")
    assert status == 401
    # The columns and their order are what users' spreadsheets rely on.
    assert text.splitlines()[0] == (
        "created_at,request_id,model,endpoint,route,upstream,stream,prompt_tokens,completion_tokens,usage_source,"
        "multiplier,cost_milli,credits,status,outcome,latency_ms,ttft_ms,key_id,user_id"
    )
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == 2
    assert table[0]["model"] == "llama3.2:3b" and table[0]["outcome"] == "ok"
    cost = int(table[0]["cost_milli"])
    assert table[0]["credits"] == f"{cost // 1000}.{cost % 1000:03d}"


async def test_admin_adjustments_add_to_the_balance_with_an_audit_row(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        admin = await register_user(served, admin=True)
        user = await register_user(served, locale="en")
        path = f"/api/admin/accounts/{user.account_id}/credits"
        await served.gateway.plugin("credits").grant(
            account_id=user.account_id, amount_milli=10_000, kind="subscription", reference="month"
        )

        status, body = await call(served, "POST", path, json={"delta_milli": 5000, "reason": "x"}, headers=user.headers)
        assert status == 403 and body["error"]["code"] == "admin_required"
        status, body = await call(
            served, "POST", path, json={"delta_milli": 5000, "reason": "x"}, headers={"Cookie": admin.headers["Cookie"]}
        )
        assert status == 403 and body["error"]["code"] == "csrf_failed"
        for sent, field in (
            ({"delta_milli": 5000}, "reason"),
            ({"delta_milli": 5000, "reason": "  "}, "reason"),
            ({"delta_milli": 0, "reason": "r"}, "delta_milli"),
            ({"delta_milli": "5000", "reason": "r"}, "delta_milli"),
            ({"delta_milli": 1.5, "reason": "r"}, "delta_milli"),
            ({"delta_milli": True, "reason": "r"}, "delta_milli"),
            ({"delta_milli": 5, "reason": "r", "balance_milli": 0}, "balance_milli"),
        ):
            status, body = await call(served, "POST", path, json=sent, headers=admin.headers)
            assert status == 422 and field in field_codes(body), (sent, body)
        status, body = await call(served, "POST", path, data=b"{nope", headers=admin.headers)
        assert status == 422 and body["error"]["code"] == "invalid_json"
        status, body = await call(
            served,
            "POST",
            "/api/admin/accounts/987654/credits",
            json={"delta_milli": 5, "reason": "r"},
            headers=admin.headers,
        )
        assert status == 404 and body["error"]["code"] == "account_not_found"

        status, added = await call(
            served, "POST", path, json={"delta_milli": 5000, "reason": " goodwill "}, headers=admin.headers
        )
        assert status == 201
        assert {
            k: added[k] for k in ("account_id", "kind", "amount_milli", "balance_after_milli", "actor", "reason")
        } == {
            "account_id": user.account_id,
            "kind": "adjustment",
            "amount_milli": 5000,
            "balance_after_milli": 15_000,
            "actor": f"user:{admin.user_id}",
            "reason": "goodwill",
        }

        # A live hold makes part of the balance unavailable: an adjustment may not take that part away.
        await served.gateway.plugin("credits").resayil_reserve(ctx=crashed_request(served, user.account_id))
        available = (await served.gateway.plugin("credits").balance(user.account_id))["available_milli"]
        assert available < 15_000
        status, body = await call(
            served, "POST", path, json={"delta_milli": -(available + 1), "reason": "too much"}, headers=admin.headers
        )
        assert status == 409 and body["error"]["code"] == "balance_too_low"
        assert body["error"]["available_milli"] == available

        retry = {**admin.headers, "Idempotency-Key": "click-1"}
        status, taken = await call(
            served, "POST", path, json={"delta_milli": -available, "reason": "refund"}, headers=retry
        )
        assert status == 201 and taken["balance_after_milli"] == 15_000 - available
        status, again = await call(
            served, "POST", path, json={"delta_milli": -available, "reason": "refund"}, headers=retry
        )
        assert status == 200 and again == taken

        status, page = await call(
            served, "GET", f"/api/admin/accounts/{user.account_id}/ledger?limit=2", headers=admin.headers
        )
        assert status == 200
        status, rest = await call(
            served,
            "GET",
            f"/api/admin/accounts/{user.account_id}/ledger?cursor={page['next_cursor']}",
            headers=admin.headers,
        )
        forbidden, _ = await call(served, "GET", f"/api/admin/accounts/{user.account_id}/ledger", headers=user.headers)
    assert forbidden == 403
    rows = page["data"] + rest["data"]
    assert [r["kind"] for r in rows] == ["adjustment", "adjustment", "subscription"]
    assert [r["amount_milli"] for r in rows] == [-available, 5000, 10_000]
    assert rows[0]["actor"] == f"user:{admin.user_id}" and rows[0]["reason"] == "refund"
    assert page["account"]["balance_milli"] == 15_000 - available == sum(r["amount_milli"] for r in rows)
    assert page["account"]["available_milli"] == 0


@pytest.mark.parametrize("delta", [10**16, -(10**16)])
async def test_admin_adjustment_refuses_absurd_amounts(db_url: str, ollama: Any, serve: Any, delta: int) -> None:
    async with serve(config(ollama, db_url)) as served:
        admin = await register_user(served, admin=True)
        status, body = await call(
            served,
            "POST",
            f"/api/admin/accounts/{admin.account_id}/credits",
            data=orjson.dumps({"delta_milli": delta, "reason": "r"}),
            headers=admin.headers,
        )
    assert status == 422 and "delta_milli" in field_codes(body)
