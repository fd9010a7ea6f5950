"""The WhatsApp Cloud API's status webhooks, on SQLite and MariaDB: Meta's signed posts mark sent messages
delivered or failed; a forged, unsigned or unconfigured post is 401 and changes nothing; an unknown id is
ignored; the GET handshake echoes the challenge only for the verify token."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.fakes.whatsapp import CloudTemplate, FakeSettings, FakeWhatsApp, run_fake
from tests.test_notify_outbox import ADMIN_AR, ADMIN_EN, admin_events, notify_config, outbox_rows, publish, send_all

SECRET = "meta-app-secret-0123456789"
VERIFY = "verify-token-0123456789"
PATH = "/api/notify/webhooks/whatsapp"


@pytest.fixture
async def cloud_fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeWhatsApp]:
    async with run_fake(FakeSettings(pair_interval=0, app_secret=SECRET, webhook_delay=0.2)) as fake:
        monkeypatch.setenv("RESAYIL_WHATSAPP_PROVIDER", "cloud")
        monkeypatch.setenv("RESAYIL_WHATSAPP_URL", fake.url)
        monkeypatch.setenv("RESAYIL_WHATSAPP_TOKEN", "test-token")
        monkeypatch.setenv("RESAYIL_WHATSAPP_CLOUD_PHONE_NUMBER_ID", fake.settings.phone_number_id)
        monkeypatch.setenv("RESAYIL_ADMIN_PHONES", f"{ADMIN_AR},{ADMIN_EN}:en")
        monkeypatch.setenv("RESAYIL_WHATSAPP_CLOUD_APP_SECRET", SECRET)
        monkeypatch.setenv("RESAYIL_WHATSAPP_CLOUD_VERIFY_TOKEN", VERIFY)
        yield fake


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}


def status_body(message_id: str, status: str) -> bytes:
    item = {"id": message_id, "status": status, "timestamp": "1773523800", "recipient_id": ADMIN_AR[1:]}
    change = {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": [item]}}
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [change]}]})


async def post(served: Any, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with served.request("POST", PATH, data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def sent_rows(served: Any, fake: FakeWhatsApp) -> list[Any]:
    """ip.banned to both admins, sent through the Cloud API with templates the fake knows."""
    await publish(served, admin_events()["ip.banned"][0])
    params = len(orjson.loads((await outbox_rows(served))[0].params))
    fake.settings.templates = [CloudTemplate("resayil_ip_banned", code, params) for code in ("ar", "en")]
    await send_all(served, runs=1)
    rows = await outbox_rows(served)
    assert [(r.status, r.provider) for r in rows] == [("sent", "cloud")] * 2
    return rows


async def test_metas_status_webhooks_mark_messages_delivered_or_failed(
    serve: Any, ollama: Any, db_url: str, cloud_fake: FakeWhatsApp
) -> None:
    cloud_fake.settings.undeliverable = {ADMIN_EN}
    async with serve(notify_config(ollama, db_url)) as served:
        cloud_fake.settings.webhook_url = served.url + PATH
        await sent_rows(served, cloud_fake)
        await asyncio.wait_for(cloud_fake.webhooks_sent(), timeout=10)
        rows = {r.recipient: r for r in await outbox_rows(served)}
    # sent, delivered, read for one; failed for the other: all signed, all taken.
    assert cloud_fake.webhook_answers == [200] * 4
    assert (rows[ADMIN_AR].status, rows[ADMIN_AR].last_error) == ("delivered", None)
    assert (rows[ADMIN_EN].status, rows[ADMIN_EN].last_error) == ("failed", "131026")


async def test_forged_unsigned_and_unknown_statuses_change_nothing(
    serve: Any, ollama: Any, db_url: str, cloud_fake: FakeWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve(notify_config(ollama, db_url)) as served:
        rows = await sent_rows(served, cloud_fake)
        message_id = rows[0].provider_message_id
        body = status_body(message_id, "failed")
        forged = [
            {"Content-Type": "application/json"},
            signed(body, secret="not-the-secret"),
            {"X-Hub-Signature-256": signed(body)["X-Hub-Signature-256"].upper()},
            signed(body + b" "),
            {"X-Hub-Signature-256": "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()},
        ]
        for headers in forged:
            status, answer = await post(served, body, headers)
            assert (status, answer["error"]["code"]) == (401, "invalid_signature"), headers
        unknown = status_body("wamid.unknown", "delivered")
        status, answer = await post(served, unknown, signed(unknown))
        assert (status, answer["changed"]) == (200, 0)
        status, answer = await post(served, b"not json", signed(b"not json"))
        assert (status, answer["statuses"]) == (200, 0)
        assert [r.status for r in await outbox_rows(served)] == ["sent", "sent"]
        # The genuine one lands, once; repeating it changes nothing more.
        assert (await post(served, body, signed(body)))[1]["changed"] == 1
        assert (await post(served, body, signed(body)))[1]["changed"] == 0
        assert [r.status for r in await outbox_rows(served)] == ["failed", "sent"]

    monkeypatch.delenv("RESAYIL_WHATSAPP_CLOUD_APP_SECRET")
    async with serve(notify_config(ollama, db_url)) as served:
        status, _ = await post(served, body, signed(body))
        assert status == 401


async def test_the_subscription_handshake_answers_only_the_verify_token(
    serve: Any, ollama: Any, sqlite_url: str, cloud_fake: FakeWhatsApp
) -> None:
    async with serve(notify_config(ollama, sqlite_url)) as served:

        async def handshake(**query: str) -> tuple[int, str]:
            async with served.request("GET", PATH, params=query) as resp:
                return resp.status, await resp.text()

        good = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
        assert await handshake(**good) == (200, "1158201444")
        assert (await handshake(**{**good, "hub.verify_token": VERIFY + "x"}))[0] == 403
        assert (await handshake(**{**good, "hub.mode": "unsubscribe"}))[0] == 403
        assert (await handshake(**{**good, "hub.challenge": "<script>alert(1)</script>"}))[0] == 403
        assert (await handshake(**{k: v for k, v in good.items() if k != "hub.verify_token"}))[0] == 403
