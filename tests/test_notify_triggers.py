"""Issue 18's proof: each of the ten WhatsApp notices produced by its real trigger, with the example config's
plugins (auth_keys, tiers, ratelimit, credits, failover, billing, notify) on SQLite and MariaDB with Redis,
arrives exactly once at the fake provider, in both languages in the right order.

The triggers: registering; buying a pack and a plan through the fake MyFatoorah; spending through /v1 below
20% of the plan and then being refused for want of credits; billing's renewal job at 3 days before expiry
(and not a minute earlier, and once); buying Enterprise; the cloud cap filling to 80% and 100% through /v1;
a ban posted by fail2ban. Through the free-text `resayil` provider (one bilingual text) and through the Cloud
API (two templates per user notice, theirs first).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from edge.services import CREDITS
from plugins.billing import renewals
from plugins.notify.tables import notify_outbox
from tests.conftest import ROOT, base_config
from tests.fakes import myfatoorah
from tests.fakes.myfatoorah import FakeMyFatoorah
from tests.fakes.whatsapp import FakeSettings, FakeWhatsApp, run_fake
from tests.support.billing import WEBHOOK_PATH, WEBHOOK_SECRET, account_row, billing_entry
from tests.support.billing_admin import paid_order
from tests.support.portal import FAST_PASSWORDS, MANY_REGISTRATIONS, PASSWORD, bearer, create_key, register_user
from tests.test_notify_cloud import approved
from tests.test_notify_outbox import ADMIN_AR, ADMIN_EN, blocks, order

F2B_TOKEN = "f2b-token-0123456789abcdef"
USER = "+96551234567"
ARABIC_USER = {"name": "نورة", "email": "noura@example.com", "phone": "+96551234568", "password": PASSWORD}
CLOUD_MODEL = "deepseek-v3.1:671b-cloud"
# A model whose requests cost a lot, so that a few requests spend a plan: 1000 milli-credits a token.
COSTLY_MODEL = "qwen3:30b"
COSTLY: dict[str, Any] = {"name": COSTLY_MODEL, "upstream": "ollama", "class": "local-large", "multiplier": 1000}


@pytest.fixture
async def whatsapp(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeWhatsApp]:
    async with run_fake(FakeSettings(pair_interval=0)) as fake:
        monkeypatch.setenv("RESAYIL_WHATSAPP_PROVIDER", "resayil")
        monkeypatch.setenv("RESAYIL_WHATSAPP_URL", fake.url + "/api/v1")
        monkeypatch.setenv("RESAYIL_WHATSAPP_TOKEN", "test-token")
        monkeypatch.setenv("RESAYIL_ADMIN_PHONES", f"{ADMIN_AR},{ADMIN_EN}:en")
        monkeypatch.setenv("RESAYIL_FAIL2BAN_TOKEN", F2B_TOKEN)
        yield fake


@pytest.fixture
async def meta(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeWhatsApp]:
    async with run_fake(FakeSettings(pair_interval=0, templates=approved())) as fake:
        monkeypatch.setenv("RESAYIL_WHATSAPP_PROVIDER", "cloud")
        monkeypatch.setenv("RESAYIL_WHATSAPP_URL", fake.url)
        monkeypatch.setenv("RESAYIL_WHATSAPP_TOKEN", "test-token")
        monkeypatch.setenv("RESAYIL_WHATSAPP_CLOUD_PHONE_NUMBER_ID", fake.settings.phone_number_id)
        monkeypatch.setenv("RESAYIL_ADMIN_PHONES", f"{ADMIN_AR},{ADMIN_EN}:en")
        monkeypatch.setenv("RESAYIL_FAIL2BAN_TOKEN", F2B_TOKEN)
        yield fake


@pytest.fixture
async def payments() -> AsyncIterator[FakeMyFatoorah]:
    settings = myfatoorah.FakeSettings(webhook_secret=WEBHOOK_SECRET, webhook_retry_seconds=0.05)
    async with myfatoorah.run_fake(settings) as running:
        yield running


def example_config(*, ollama: Any, cloud: Any, db_url: str, redis_url: str, payments: FakeMyFatoorah) -> dict[str, Any]:
    """The example config's plugins, in its order, with settings for the fakes and a quick test."""
    example = yaml.safe_load((ROOT / "config" / "gateway.example.yaml").read_text(encoding="utf-8"))
    names = [entry["name"] for entry in example["plugins"]]
    assert names == ["auth_keys", "tiers", "ratelimit", "credits", "failover", "teams", "billing", "admin", "notify"], (
        names
    )
    settings: dict[str, dict[str, Any]] = {
        "auth_keys": {**FAST_PASSWORDS, **MANY_REGISTRATIONS},
        "failover": {"cloud_daily_cap": 5, "retry_backoff_seconds": 0.01, "retry_backoff_max_seconds": 0.05},
        "billing": billing_entry(payments, renewal_reminder_days=3)["settings"],
        "notify": {"send_every_seconds": 3600, "pair_interval_seconds": 0},
    }
    plugins = [{"name": name, "settings": settings.get(name, {})} for name in names]
    config = base_config(
        ollama_url=ollama.url, cloud_url=cloud.url, database_url=db_url, redis_url=redis_url, plugins=plugins
    )
    config["models"] = [COSTLY if m["name"] == COSTLY_MODEL else m for m in config["models"]]
    return config


async def chat(served: Any, key: dict[str, str], model: str, *, account_id: int) -> int:
    """One request, then its settlement: the reply reaches the client before settle gives back the rest of
    its hold, and the next request must see the balance a customer waiting between requests would."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with served.request("POST", "/v1/chat/completions", json=body, headers=key) as resp:
        await resp.read()
        status = int(resp.status)
    credits = served.gateway.service(CREDITS)
    for _ in range(500):
        if (await credits.balance(account_id)).reserved_milli == 0:
            return status
        await asyncio.sleep(0.01)
    raise AssertionError("the request's hold was never settled")


async def settle(served: Any) -> None:
    """Every published event handed to notify, and every queued message sent."""
    await served.gateway.drain()
    notify = served.gateway.plugin("notify")
    for _ in range(3):
        await notify.send(served.gateway)


async def pull_every_trigger(served: Any, ollama: Any, payments: FakeMyFatoorah) -> list[Any]:
    """Each of the ten triggers, in a customer's order; then every message sent. The outbox rows, by id."""
    payments.settings.webhook_url = served.url + WEBHOOK_PATH
    # NOTIF-01: registering, in English, and (Arabic being the default) without choosing a language.
    user = await register_user(served, locale="en", name="Fatima", phone=USER)
    async with served.request("POST", "/api/auth/register", json=ARABIC_USER) as resp:
        assert resp.status == 201, await resp.text()
    # NOTIF-05, then NOTIF-02: a pack and the Pro plan bought and paid through MyFatoorah.
    await paid_order(served, payments, user, "pack-5000")
    await paid_order(served, payments, user, "pro")
    await payments.webhooks_sent()
    assert (await account_row(served, user.account_id)).tier == "pro"

    # NOTIF-03, then NOTIF-04: spending through /v1 below 20% of Pro's 5,000 credits, then refused (402).
    key = bearer(await create_key(served, user))
    ollama.settings.usage = {"prompt_tokens": 1, "completion_tokens": 2000}
    statuses = [await chat(served, key, COSTLY_MODEL, account_id=user.account_id)]
    while statuses[-1] == 200 and len(statuses) < 20:
        statuses.append(await chat(served, key, COSTLY_MODEL, account_id=user.account_id))
    statuses.append(await chat(served, key, COSTLY_MODEL, account_id=user.account_id))
    assert statuses[-2:] == [402, 402] and set(statuses[:-2]) == {200}, statuses
    ollama.settings.usage = None

    # NOTIF-06: billing's renewal job (reminder 3 days ahead): not a minute before the 3 days, then at 3
    # days, then again a day later (the same expiry: nothing more).
    expires = (await account_row(served, user.account_id)).plan_expires_at
    billing = served.gateway.pm.get_plugin("billing")
    reminded = [
        (await renewals.run(billing, now=expires - before)).reminded
        for before in (timedelta(days=3, minutes=1), timedelta(days=3), timedelta(days=2))
    ]
    assert reminded == [0, 1, 0]

    # NOTIF-10: Enterprise bought; then NOTIF-07 and NOTIF-08: its cloud requests fill the cap of 5.
    await paid_order(served, payments, user, "enterprise")
    await payments.webhooks_sent()
    assert [await chat(served, key, CLOUD_MODEL, account_id=user.account_id) for _ in range(6)] == [200] * 5 + [503]

    # NOTIF-09: fail2ban reports a ban from this host.
    ban = {"ip": "203.0.113.9", "jail": "resayil-portal", "failures": 7, "time": 1773523800}
    headers = {"Authorization": f"Bearer {F2B_TOKEN}"}
    async with served.request("POST", "/internal/fail2ban", json=ban, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
    await settle(served)
    await settle(served)
    async with served.gateway.database.connect() as conn:
        return list((await conn.execute(sa.select(notify_outbox).order_by(notify_outbox.c.id))).all())


USER_EVENTS = [
    "user.registered",
    "topup.paid",
    "subscription.activated",
    "credits.low",
    "credits.exhausted",
    "subscription.renewal_due",
    "subscription.activated",  # Enterprise is a plan too
]
ADMIN_EVENTS = ["cloud.budget_80", "cloud.budget_100", "ip.banned", "enterprise.registered"]


async def test_each_notice_arrives_once_from_its_real_trigger(
    serve: Any,
    ollama: Any,
    cloud: Any,
    db_url: str,
    redis_url: str,
    payments: FakeMyFatoorah,
    whatsapp: FakeWhatsApp,
) -> None:
    config = example_config(ollama=ollama, cloud=cloud, db_url=db_url, redis_url=redis_url, payments=payments)
    async with serve(config) as served:
        rows = await pull_every_trigger(served, ollama, payments)

    accepted = [r for r in whatsapp.received if r["status"] == 200]
    by_id = {r["message_id"]: r for r in accepted}
    # Exactly once: one accepted send per outbox row, and every row sent.
    assert len(by_id) == len(accepted) == len(rows), [(r.event_name, r.status, r.last_error) for r in rows]
    assert all(row.status == "sent" and row.provider_message_id in by_id for row in rows)
    to_user = [r.event_name for r in rows if r.recipient == USER]
    assert sorted(to_user) == sorted(USER_EVENTS)
    for admin in (ADMIN_AR, ADMIN_EN):
        assert sorted(r.event_name for r in rows if r.recipient == admin) == sorted(ADMIN_EVENTS)

    def english(event: str, to: str) -> list[str]:
        texts = [by_id[r.provider_message_id]["text"] or "" for r in rows if (r.event_name, r.recipient) == (event, to)]
        # The user chose English: English first, then Arabic; an admin gets their own language only.
        expected = ["en", "ar"] if to == USER else (["en"] if to == ADMIN_EN else ["ar"])
        assert all(order(text) == expected for text in texts), texts
        return [blocks(text)[0] for text in texts]

    assert "Hello Fatima, welcome" in english("user.registered", USER)[0]
    (welcome,) = [by_id[r.provider_message_id]["text"] or "" for r in rows if r.recipient == ARABIC_USER["phone"]]
    arabic, english_block = blocks(welcome)
    # Arabic first; the English block names her in Arabic letters, so it is told by its English words.
    assert "نورة" in arabic and "welcome" not in arabic and english_block.startswith("Hello")
    assert "welcome" in english_block
    assert "5,000 credits were added to your account for 5.000 KWD" in english("topup.paid", USER)[0]
    assert "Your Pro plan is active." in english("subscription.activated", USER)[0]
    assert "Your balance is" in english("credits.low", USER)[0]
    assert "new requests now answer 402" in english("credits.exhausted", USER)[0]
    assert "expires in 3 days" in english("subscription.renewal_due", USER)[0]
    assert "4 of today's 5 cloud requests" in english("cloud.budget_80", ADMIN_EN)[0]
    assert "reached the daily cap (5 of 5" in english("cloud.budget_100", ADMIN_EN)[0]
    assert "203.0.113.9 was banned by the resayil-portal jail after 7 failures" in english("ip.banned", ADMIN_EN)[0]
    assert "Plan: Enterprise, for 25.000 KWD." in english("enterprise.registered", ADMIN_EN)[0]
    for event in ADMIN_EVENTS:
        english(event, ADMIN_AR)


async def test_through_the_cloud_api_each_user_notice_is_two_templates_theirs_first(
    serve: Any,
    ollama: Any,
    cloud: Any,
    db_url: str,
    redis_url: str,
    payments: FakeMyFatoorah,
    meta: FakeWhatsApp,
) -> None:
    config = example_config(ollama=ollama, cloud=cloud, db_url=db_url, redis_url=redis_url, payments=payments)
    async with serve(config) as served:
        rows = await pull_every_trigger(served, ollama, payments)

    assert {r["code"] for r in meta.received} == {None}  # Meta refused nothing
    assert len(meta.accepted) == len(rows) == len({r.provider_message_id for r in rows})
    assert {(r.status, r.provider) for r in rows} == {("sent", "cloud")}

    def template(event: str) -> str:
        return "resayil_" + event.replace(".", "_")

    to_user = sorted((r["template"], r["language"]) for r in meta.accepted if r["to"] == USER[1:])
    assert to_user == sorted((template(event), language) for event in USER_EVENTS for language in ("en", "ar"))
    # The user chose English: each notice's Arabic message went after its English one. (That the two also
    # arrive back to back is tested with WhatsApp's pacing on, in test_notify_cloud.py; here pacing is off.)
    sent_at = {r["message_id"]: n for n, r in enumerate(meta.accepted)}
    by_key = {r.dedup_key: r for r in rows}
    followers = [r for r in rows if r.after_key is not None]
    assert len(followers) == len(USER_EVENTS) + 1  # and the Arabic user's welcome
    for second in followers:
        first = by_key[second.after_key]
        theirs = ("en", "ar") if second.recipient == USER else ("ar", "en")
        assert (first.event_name, first.language, second.language) == (second.event_name, *theirs)
        assert first.recipient == second.recipient
        assert sent_at[first.provider_message_id] < sent_at[second.provider_message_id]
    for admin, language in ((ADMIN_AR, "ar"), (ADMIN_EN, "en")):
        got = sorted((r["template"], r["language"]) for r in meta.accepted if r["to"] == admin[1:])
        assert got == sorted((template(event), language) for event in ADMIN_EVENTS)
    low = {r["language"]: r["params"] for r in meta.accepted if r["template"] == "resayil_credits_low"}
    # Each language's message carries its own formatting of the same numbers: Arabic-Indic digits in Arabic.
    western = str.maketrans("٠١٢٣٤٥٦٧٨٩٬", "0123456789,")
    assert low["en"][:2] == [p.translate(western) for p in low["ar"][:2]] and low["en"][:2] != low["ar"][:2]
