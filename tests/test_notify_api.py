"""notify's HTTP side: fail2ban's endpoint (loopback, token, input), the admins' outbox and resend, the
failed-login line fail2ban reads, and templates checked before the gateway starts."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from edge import config as config_module
from edge.app import create_app
from edge.logs import JsonFormatter
from edge.settings import ConfigError
from plugins.notify.templates import DIRECTORY
from tests.fakes.whatsapp import FakeWhatsApp
from tests.support.portal import register_user
from tests.test_notify_fail2ban import banned_host
from tests.test_notify_outbox import ADMIN_AR, ADMIN_EN, fake, notify_config, outbox_rows, provider, send_all

__all__ = ["fake", "provider"]  # fixtures, used by name

TOKEN = "f2b-token-0123456789abcdef"
BAN = {"ip": "203.0.113.9", "jail": "resayil-portal", "failures": 7, "time": 1773523800.5}


@pytest.fixture
def fail2ban_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RESAYIL_FAIL2BAN_TOKEN", TOKEN)
    return TOKEN


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_ban(served: Any, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with served.request("POST", "/internal/fail2ban", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_ban_from_fail2ban_on_this_host_alerts_every_admin(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp, fail2ban_token: str
) -> None:
    async with serve(notify_config(ollama, db_url)) as served:
        status, body = await post_ban(served, BAN, bearer(fail2ban_token))
        assert status == 202 and len(body["id"]) == 32
        await served.gateway.drain()
        await send_all(served)
    english = [r["text"] or "" for r in provider.accepted if r["to"] == ADMIN_EN]
    assert english == [
        "Admin alert: 203.0.113.9 was banned by the resayil-portal jail after 7 failures.\n"
        "Time: 15 March 2026, 00:30 Kuwait time."
    ]
    assert [r["to"] for r in provider.accepted if r["to"] == ADMIN_AR] == [ADMIN_AR]


async def test_fail2ban_needs_the_token_and_a_direct_local_call(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp, fail2ban_token: str
) -> None:
    config = notify_config(ollama, db_url)
    config["server"]["trusted_proxies"] = ["127.0.0.1/32"]
    async with serve(config) as served:
        refused = [
            {},
            bearer("wrong-token-0123456789abcdef"),
            bearer(TOKEN + "x"),
            {"Authorization": TOKEN},
            # Through a trusted proxy the client is the forwarded address, not this host.
            {**bearer(TOKEN), "X-Forwarded-For": "198.51.100.7"},
            # Relayed by anything (a proxy that forwards as loopback) is not a local call either.
            {**bearer(TOKEN), "X-Forwarded-For": "127.0.0.1"},
            {**bearer(TOKEN), "X-Real-IP": "127.0.0.1"},
        ]
        for headers in refused:
            status, body = await post_ban(served, BAN, headers)
            assert (status, body["error"]["code"]) == (403, "forbidden"), headers
        assert await outbox_rows(served) == []


async def test_without_a_configured_token_fail2ban_is_always_refused(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RESAYIL_FAIL2BAN_TOKEN", raising=False)
    async with serve(notify_config(ollama, db_url)) as served:
        for headers in ({}, bearer(""), {"Authorization": "Bearer "}, bearer("None")):
            status, _ = await post_ban(served, BAN, headers)
            assert status == 403


def test_a_short_fail2ban_token_stops_startup(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setenv("RESAYIL_FAIL2BAN_TOKEN", "short")
    config = notify_config(type("O", (), {"url": "http://127.0.0.1:9"})(), sqlite_url)
    with pytest.raises(ConfigError, match="RESAYIL_FAIL2BAN_TOKEN"):
        create_app(config_module.parse(config, env={}))


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({**BAN, "ip": "203.0.113.300"}, "ip", "ip_invalid"),
        ({**BAN, "ip": "<script>"}, "ip", "ip_invalid"),
        ({**BAN, "jail": "resayil portal; rm -rf"}, "jail", "jail_invalid"),
        ({**BAN, "jail": "x" * 65}, "jail", "jail_invalid"),
        ({**BAN, "failures": -1}, "failures", "failures_out_of_range"),
        ({**BAN, "failures": "7"}, "failures", "failures_invalid"),
        ({**BAN, "time": True}, "time", "time_invalid"),
        ({**BAN, "time": 1e20}, "time", "time_invalid"),
        ({k: v for k, v in BAN.items() if k != "time"}, "time", "time_invalid"),
        ({**BAN, "extra": 1}, "extra", "field_unknown"),
    ],
)
async def test_fail2ban_input_is_checked_into_the_one_422(
    serve: Any,
    ollama: Any,
    sqlite_url: str,
    provider: FakeWhatsApp,
    fail2ban_token: str,
    body: Any,
    field: str,
    code: str,
) -> None:
    async with serve(notify_config(ollama, sqlite_url)) as served:
        status, answer = await post_ban(served, body, bearer(fail2ban_token))
        assert status == 422
        assert answer["error"]["fields"][field]["code"] == code
        status, answer = await post_ban(served, [BAN], bearer(fail2ban_token))
        assert (status, answer["error"]["code"]) == (422, "invalid_json")
        assert await outbox_rows(served) == []


async def test_the_admins_outbox_lists_filters_pages_and_resends(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp, fail2ban_token: str
) -> None:
    provider.settings.fail_next = [131026]
    async with serve(notify_config(ollama, db_url)) as served:
        admin = await register_user(served, admin=True, locale="en")
        user = await register_user(served)
        await post_ban(served, BAN, bearer(fail2ban_token))
        await served.gateway.drain()
        await send_all(served)
        async with served.request("GET", "/api/admin/outbox") as resp:
            assert resp.status == 401
        async with served.request("GET", "/api/admin/outbox", headers=user.headers) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (403, "admin_required")
        async with served.request("GET", "/api/admin/outbox", headers=admin.headers) as resp:
            listed = await resp.json()
        # Two welcomes, and the ban for the two configured admins and the admin user's own phone.
        assert resp.status == 200 and len(listed["data"]) == 5 and listed["next_cursor"] is None
        ids = [m["id"] for m in listed["data"]]
        assert ids == sorted(ids, reverse=True)
        query = f"/api/admin/outbox?event=ip.banned&recipient=%2B{admin.phone[1:]}"
        async with served.request("GET", query, headers=admin.headers) as resp:
            (own,) = (await resp.json())["data"]
        assert own["language"] == "en" and own["status"] in {"sent", "failed"}
        async with served.request("GET", "/api/admin/outbox?status=failed", headers=admin.headers) as resp:
            (failed,) = (await resp.json())["data"]
        assert (failed["attempts"], failed["last_error"]) == (1, "131026")
        async with served.request("GET", "/api/admin/outbox?limit=2", headers=admin.headers) as resp:
            first = await resp.json()
        async with served.request(
            "GET", f"/api/admin/outbox?limit=2&cursor={first['next_cursor']}", headers=admin.headers
        ) as resp:
            second = await resp.json()
        assert [m["id"] for m in first["data"] + second["data"]] == ids[:4]
        for bad in ("status=lost", "event=nope", "recipient=12345", "limit=0", "limit=500", "cursor=x", "x=1"):
            async with served.request("GET", f"/api/admin/outbox?{bad}", headers=admin.headers) as resp:
                assert resp.status == 422, bad
                assert (await resp.json())["error"]["param"] == bad.split("=")[0]

        path = f"/api/admin/outbox/{failed['id']}/resend"
        async with served.request("POST", path, headers=user.headers) as resp:
            assert resp.status == 403
        async with served.request("POST", path, headers={"Cookie": admin.headers["Cookie"]}) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (403, "csrf_failed")
        async with served.request("POST", path, headers=admin.headers) as resp:
            resent = (await resp.json())["message"]
        assert resp.status == 200 and (resent["status"], resent["attempts"]) == ("queued", 0)
        await send_all(served)
        for missing in ("/api/admin/outbox/999999/resend", f"/api/admin/outbox/{2**64}/resend"):
            async with served.request("POST", missing, headers=admin.headers) as resp:
                assert (resp.status, (await resp.json())["error"]["code"]) == (404, "message_not_found")
        rows = await outbox_rows(served)
    assert {r.status for r in rows} == {"sent"}
    assert [(r.attempts, r.last_error) for r in rows if r.id == failed["id"]] == [(1, None)]
    assert len(provider.accepted) == 5 and len(provider.received) == 6


async def test_the_old_preferences_route_is_gone(serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp) -> None:
    """Opt-outs moved to `PATCH /api/me` (test_notify_preferences.py); one place, one vocabulary."""
    async with serve(notify_config(ollama, db_url)) as served:
        user = await register_user(served)
        for method in ("GET", "PATCH"):
            async with served.request(method, "/api/me/notifications", json={}, headers=user.headers) as resp:
                assert resp.status in {404, 405}


async def test_a_failed_login_writes_the_line_fail2ban_bans_on(
    serve: Any, ollama: Any, sqlite_url: str, provider: FakeWhatsApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resayil.auth")
    config = notify_config(ollama, sqlite_url)
    config["server"]["trusted_proxies"] = ["127.0.0.1/32"]
    async with serve(config) as served:
        user = await register_user(served)
        body = {"login": user.email, "password": "wrong password here"}
        async with served.request("POST", "/api/auth/login", json=body) as resp:
            assert resp.status == 401
        forwarded = {"X-Forwarded-For": "198.51.100.23"}
        async with served.request("POST", "/api/auth/login", json=body, headers=forwarded) as resp:
            assert resp.status == 401
        async with served.request("POST", "/api/auth/login", json={**body, "password": user.password}) as resp:
            assert resp.status == 200
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == "resayil.auth"]
    assert [banned_host(line) for line in lines] == ["127.0.0.1", "198.51.100.23"]
    assert all(user.email not in line for line in lines)


def test_a_bad_template_stops_startup_naming_it(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RESAYIL_WHATSAPP_PROVIDER", raising=False)
    copy = tmp_path / "templates"
    shutil.copytree(DIRECTORY, copy)
    (copy / "topup.paid.en.txt").write_text("Thanks, {name}: {credits} credits for {price}. {receipt_url}")
    config = notify_config(type("O", (), {"url": "http://127.0.0.1:9"})(), sqlite_url, templates_dir=str(copy))
    with pytest.raises(ConfigError, match=r"templates/topup.paid.en.txt: unknown placeholder \{name\}"):
        create_app(config_module.parse(config, env={}))
    (copy / "topup.paid.en.txt").write_text("Thanks: {credits} credits for {price}. {receipt_url}")
    with pytest.raises(ConfigError, match=r"topup.paid.en.txt: placeholder \{balance\} is missing"):
        create_app(config_module.parse(config, env={}))
