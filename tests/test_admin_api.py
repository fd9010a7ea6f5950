"""The admins' API on SQLite and MariaDB: who may call each route (nobody, a user, a banned admin, an
admin), the audit trail's and the user search's filters against hostile input, one user's page (keys
without secrets, requests, ledger, orders), bans that stop keys at once on every worker, and the CSV
exports streamed in pages."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edge.services import ACCOUNTS, CREDITS
from plugins.auth_keys.keys import secret_digest
from tests.fakes.myfatoorah import FakeMyFatoorah, FakeSettings, run_fake
from tests.support.admin import admin_config, admin_gateway, chat, refused, text_of
from tests.support.billing import WEBHOOK_SECRET
from tests.support.billing_admin import audit_rows, call, paid_order
from tests.support.credits import until_settled
from tests.support.portal import LoggedIn, create_key, login, register_user


@pytest.fixture
async def fake() -> AsyncIterator[FakeMyFatoorah]:
    async with run_fake(FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)) as running:
        yield running


async def _grant(served: Any, user: LoggedIn, milli: int = 1_000_000) -> None:
    await served.gateway.service(CREDITS).grant(
        account_id=user.account_id, amount_milli=milli, kind="grant", idempotency_key=f"t-{user.user_id}"
    )


async def test_every_admin_route_answers_401_403_or_200_by_who_calls(serve: Any, ollama: Any, db_url: str) -> None:
    async with admin_gateway(serve, ollama, db_url, None) as served:
        user = await register_user(served)
        admin = await register_user(served, admin=True)
        other_admin = await register_user(served, admin=True)
        reads = [
            "/api/admin/overview",
            "/api/admin/audit",
            "/api/admin/users",
            f"/api/admin/users/{user.user_id}",
            "/api/admin/users.csv",
            "/api/admin/usage.csv",
        ]
        writes = [f"/api/admin/users/{user.user_id}/ban", f"/api/admin/users/{user.user_id}/unban"]
        for path in reads:
            assert (await text_of(served, path, {}))[0] == 401, path
            assert (await text_of(served, path, user.headers))[0] == 403, path
            assert (await text_of(served, path, admin.headers))[0] == 200, path
        for path in writes:
            anonymous = await call(served, "POST", path, None, {"reason": "x"})
            plain = await call(served, "POST", path, user, {"reason": "x"})
            forged = await call(served, "POST", path, admin, {"reason": "x"}, **{"X-CSRF-Token": "nope"})
            assert (anonymous[0], anonymous[1]["error"]["code"]) == (401, "not_authenticated"), path
            assert (plain[0], plain[1]["error"]["code"]) == (403, "admin_required"), path
            assert (forged[0], forged[1]["error"]["code"]) == (403, "csrf_failed"), path
        assert await audit_rows(served) == []

        # A banned admin's session is gone: every admin route is then a 401 for them.
        banned = await call(served, "POST", f"/api/admin/users/{other_admin.user_id}/ban", admin, {"reason": "left"})
        assert banned[0] == 200 and banned[1]["user"]["banned"] is True
        for path in reads:
            assert (await text_of(served, path, other_admin.headers))[0] == 401, path
        refused = await call(served, "POST", f"/api/admin/users/{admin.user_id}/ban", other_admin, {"reason": "x"})
        assert refused[0] == 401
        self_ban = await call(served, "POST", f"/api/admin/users/{admin.user_id}/ban", admin, {"reason": "x"})
        assert (self_ban[0], self_ban[1]["error"]["code"]) == (409, "cannot_ban_self")
        for path in ("/api/admin/users/0", "/api/admin/users/99999999", "/api/admin/users/abc", "/api/admin/users/1e3"):
            status, body = await call(served, "GET", path, admin)
            assert (status, body["error"]["code"]) == (404, "user_not_found"), path
        missing = await call(served, "POST", "/api/admin/users/99999999/ban", admin, {"reason": "x"})
        assert missing[0] == 404
        assert [r["action"] for r in await audit_rows(served)] == ["admin.ban_user"]


async def test_the_audit_trail_filters_pages_and_refuses_hostile_filters(serve: Any, ollama: Any, db_url: str) -> None:
    async with admin_gateway(serve, ollama, db_url, None) as served:
        admin, second = await register_user(served, admin=True), await register_user(served, admin=True)
        alice, bob = await register_user(served), await register_user(served)
        await call(served, "POST", f"/api/admin/users/{alice.user_id}/ban", admin, {"reason": "spam"})
        await call(served, "POST", f"/api/admin/users/{alice.user_id}/unban", second, {"reason": "appeal"})
        await call(served, "POST", f"/api/admin/users/{bob.user_id}/ban", second, {"reason": "fraud"})
        status, body = await call(served, "GET", "/api/admin/audit", admin)
        assert status == 200 and body["next_cursor"] is None
        entries = body["entries"]
        assert [(e["action"], e["target"], e["actor_user_id"], e["reason"]) for e in entries] == [
            ("admin.ban_user", f"user:{bob.user_id}", second.user_id, "fraud"),
            ("admin.unban_user", f"user:{alice.user_id}", second.user_id, "appeal"),
            ("admin.ban_user", f"user:{alice.user_id}", admin.user_id, "spam"),
        ]
        assert entries[0]["ip"] == "127.0.0.1" and entries[0]["details"]["account_id"] == bob.account_id

        def ids(answer: tuple[int, dict[str, Any]]) -> list[int]:
            assert answer[0] == 200, answer
            return [e["id"] for e in answer[1]["entries"]]

        everything = [e["id"] for e in entries]
        assert ids(await call(served, "GET", f"/api/admin/audit?actor={admin.user_id}", admin)) == everything[2:]
        assert ids(await call(served, "GET", f"/api/admin/audit?target=user:{alice.user_id}", admin)) == everything[1:]
        assert ids(await call(served, "GET", "/api/admin/audit?action=admin.unban_user", admin)) == everything[1:2]
        assert ids(await call(served, "GET", "/api/admin/audit?action=admin", admin)) == everything
        assert ids(await call(served, "GET", "/api/admin/audit?action=billing", admin)) == []
        # `_` is a LIKE wildcard: "admi_" must not match the admin plugin's actions.
        assert ids(await call(served, "GET", "/api/admin/audit?action=admi_", admin)) == []
        page1 = (await call(served, "GET", "/api/admin/audit?limit=2", admin))[1]
        page2 = await call(served, "GET", f"/api/admin/audit?limit=2&cursor={page1['next_cursor']}", admin)
        assert [e["id"] for e in page1["entries"]] == everything[:2] and ids(page2) == everything[2:]

        hostile = {
            "actor=-1": "actor_invalid",
            "actor=0": "actor_invalid",
            "actor=99999999999999999999": "actor_invalid",
            "actor=%D9%A3": "actor_invalid",
            "target=user:1%27%20OR%201%3D1--": "target_invalid",
            "target=" + "x" * 129: "target_invalid",
            "action=admin.%25": "action_invalid",
            "action=ADMIN": "action_invalid",
            "action=a%00b": "action_invalid",
            "cursor=abc": "cursor_invalid",
            "limit=0": "limit_invalid",
            "limit=101": "limit_invalid",
            "actor=1&actor=2": "actor_repeated",
            "who=1": "field_unknown",
        }
        await refused(served, admin, "/api/admin/audit", hostile)


async def test_the_user_search_matches_text_as_text_and_pages(serve: Any, ollama: Any, db_url: str) -> None:
    async with admin_gateway(serve, ollama, db_url, None) as served:
        admin = await register_user(served, admin=True, name="The Admin")
        percent = await register_user(served, name="Fifty % Off", email="deal@shop.example")
        under = await register_user(served, name="Under_Score")
        plain = await register_user(served, name="Ordinary Person", tier="pro", phone="+96590001234")
        arabic = await register_user(served, name="سارة الكويتية")

        async def found(query: str) -> list[int]:
            status, body = await call(served, "GET", f"/api/admin/users?{query}", admin)
            assert status == 200, (query, body)
            return [u["user_id"] for u in body["users"]]

        assert await found("") == [arabic.user_id, plain.user_id, under.user_id, percent.user_id, admin.user_id]
        assert await found("query=%25") == [percent.user_id]
        assert await found("query=_") == [under.user_id]
        assert await found("query=!") == []
        assert await found("query=deal%40shop") == [percent.user_id]
        assert await found("query=90001234") == [plain.user_id]
        assert await found("query=ordinary") == [plain.user_id]
        assert await found("query=Ordinary") == [plain.user_id]
        assert await found("query=%D8%B3%D8%A7%D8%B1%D8%A9") == [arabic.user_id]
        assert await found("query=%27%20OR%201%3D1--") == []
        assert await found("tier=pro") == [plain.user_id]
        await call(served, "POST", f"/api/admin/users/{under.user_id}/ban", admin, {"reason": "x"})
        assert await found("status=banned") == [under.user_id]
        assert under.user_id not in await found("status=active")
        first = (await call(served, "GET", "/api/admin/users?limit=2", admin))[1]
        second = (await call(served, "GET", f"/api/admin/users?limit=2&cursor={first['next_cursor']}", admin))[1]
        assert [u["user_id"] for u in first["users"] + second["users"]] == [
            arabic.user_id,
            plain.user_id,
            under.user_id,
            percent.user_id,
        ]
        hostile = {
            "tier=gold": "tier_invalid",
            "tier=pro%27--": "tier_invalid",
            "status=deleted": "status_invalid",
            "query=" + "a" * 101: "query_too_long",
            "cursor=-5": "cursor_invalid",
            "limit=1000": "limit_invalid",
            "query=a&query=b": "query_repeated",
            "order=id": "field_unknown",
        }
        await refused(served, admin, "/api/admin/users", hostile)


async def test_one_users_page_has_keys_without_secrets_requests_ledger_and_orders(
    serve: Any, ollama: Any, db_url: str, fake: FakeMyFatoorah
) -> None:
    async with admin_gateway(serve, ollama, db_url, fake) as served:
        admin, user = await register_user(served, admin=True), await register_user(served)
        await _grant(served, user)
        secret = await create_key(served, user, name="prod")
        assert await chat(served, secret) == 200
        await until_settled(served.gateway, user.account_id)
        order = await paid_order(served, fake, user, "pack-5000")
        status, body = await call(served, "GET", f"/api/admin/users/{user.user_id}", admin)
        assert status == 200
        assert body["user"]["email"] == user.email and body["user"]["banned"] is False
        assert body["account"] == {"id": user.account_id, "tier": "basic", "plan_expires_at": None}
        assert [(k["name"], k["prefix"]) for k in body["keys"]] == [("prod", secret[:12])]
        text = str(body)
        assert secret not in text and secret_digest(secret) not in text and "secret" not in text
        assert [(r["model"], r["status"], r["key_id"]) for r in body["requests"]] == [
            ("llama3.2:3b", 200, body["keys"][0]["id"])
        ]
        assert body["requests"][0]["cost_milli"] > 0
        assert [e["kind"] for e in body["ledger"]] == ["topup", "usage", "grant"]
        assert body["balance"]["balance_milli"] == body["ledger"][0]["balance_after_milli"]
        assert [(o["reference"], o["status"], o["price_fils"]) for o in body["orders"]] == [(order["id"], "paid", 5000)]


async def test_a_ban_stops_keys_on_every_worker_ends_sessions_and_refuses_login(
    serve: Any, ollama: Any, db_url: str, redis_url: str
) -> None:
    config = admin_config(ollama, db_url, None, redis_url=redis_url)
    async with serve(config) as first, serve(config) as second:
        admin, user = await register_user(first, admin=True), await register_user(first)
        await _grant(first, user)
        secret = await create_key(first, user)
        assert await chat(first, secret) == 200 and await chat(second, secret) == 200
        assert secret_digest(secret) in second.gateway.plugin("auth_keys").cache.entries

        status, body = await call(first, "POST", f"/api/admin/users/{user.user_id}/ban", admin, {"reason": "abuse"})
        assert status == 200 and body["user"]["banned"] is True and body["user"]["banned_at"]
        # At once on the worker that banned, and on the other as soon as Redis carries the message.
        assert await chat(first, secret) == 401
        deadline = time.monotonic() + 1.0
        while await chat(second, secret) != 401:
            assert time.monotonic() < deadline, "the other worker still serves a banned user's key"
            await asyncio.sleep(0.02)
        assert (await call(first, "GET", "/api/me", user))[0] == 401
        refused = await login(first, login=user.email, password=user.password)
        assert refused[0] == 403 and refused[1]["error"]["code"] == "account_banned" and refused[2] is None
        # A wrong password learns nothing about the ban.
        assert (await login(first, login=user.email, password="not the password"))[0] == 401
        assert [(r["action"], r["reason"]) for r in await audit_rows(first)] == [("admin.ban_user", "abuse")]

        status, body = await call(second, "POST", f"/api/admin/users/{user.user_id}/unban", admin, {"reason": "ok"})
        assert status == 200 and body["user"]["banned"] is False
        assert await chat(second, secret) == 200
        assert (await login(first, login=user.email, password=user.password))[0] == 200
        ban = f"/api/admin/users/{user.user_id}/ban"
        for body, code in [
            ({}, "reason_required"),
            ({"reason": "\u200b "}, "reason_required"),
            ({"reason": "x" * 501}, "reason_too_long"),
            ({"reason": "x", "banned_at": None}, "field_unknown"),
            ([], "invalid_json"),
        ]:
            answer = await call(first, "POST", ban, admin, body)
            assert (answer[0], answer[1]["error"]["code"]) == (422, code), body
        assert (await first.gateway.service(ACCOUNTS).user(user.user_id)).banned_at is None  # type: ignore[union-attr]


async def test_the_csv_exports_stream_every_row_in_pages_and_defuse_formulas(
    serve: Any, ollama: Any, db_url: str
) -> None:
    async with serve(admin_config(ollama, db_url, None, export_page_rows=10)) as served:
        admin = await register_user(served, admin=True)
        evil = await register_user(served, name='=HYPERLINK("http://x")')
        users = [await register_user(served) for _ in range(11)]
        await _grant(served, evil)
        secret = await create_key(served, evil)
        for _ in range(12):
            assert await chat(served, secret) == 200
        await until_settled(served.gateway, evil.account_id)

        status, text, headers = await text_of(served, "/api/admin/users.csv", admin.headers)
        assert status == 200 and headers["content-type"].startswith("text/csv")
        assert "attachment" in headers["content-disposition"]
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0][:3] == ["user_id", "account_id", "name"]
        assert [int(r[0]) for r in rows[1:]] == [u.user_id for u in reversed([admin, evil, *users])]
        by_id = {int(r[0]): r for r in rows[1:]}
        assert by_id[evil.user_id][2] == '\'=HYPERLINK("http://x")'
        assert by_id[evil.user_id][4] == evil.phone
        banned = await text_of(served, "/api/admin/users.csv?status=banned", admin.headers)
        assert banned[1].strip().count("\n") == 0

        status, text, _ = await text_of(served, "/api/admin/usage.csv", admin.headers)
        usage = list(csv.reader(io.StringIO(text)))
        assert status == 200 and usage[0][0] == "id" and len(usage) == 1 + 12
        assert [int(r[0]) for r in usage[1:]] == sorted(int(r[0]) for r in usage[1:])
        assert {r[3] for r in usage[1:]} == {str(evil.account_id)}
        later = await text_of(served, "/api/admin/usage.csv?from=2999-01-01T00:00:00Z", admin.headers)
        assert later[0] == 200 and len(list(csv.reader(io.StringIO(later[1])))) == 1
        earlier = await text_of(served, "/api/admin/usage.csv?to=2001-01-01T00:00:00Z", admin.headers)
        assert len(list(csv.reader(io.StringIO(earlier[1])))) == 1
        hostile = {
            "from=yesterday": "from_invalid",
            "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z": "to_before_from",
            "from=2026-01-01&from=2026-01-02": "from_repeated",
            "account=1": "field_unknown",
        }
        await refused(served, admin, "/api/admin/usage.csv", hostile)
