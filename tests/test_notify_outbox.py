"""The notify plugin end to end against the fake WhatsApp provider: each of the ten events reaches its
recipients exactly once, in both languages in the right order; re-delivered events and racing senders send
nothing twice; retries, permanent failures, token alerts and pacing; the `log` default."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from edge.events import CloudBudget80, CloudBudget100, CreditsExhausted, CreditsLow, EnterpriseRegistered, Event
from plugins.billing.events import SubscriptionActivated, TopupPaid
from plugins.billing.lifecycle import SubscriptionRenewalDue
from plugins.notify.notices import IpBanned
from plugins.notify.tables import notify_outbox
from tests.conftest import base_config
from tests.fakes.whatsapp import FakeSettings, FakeWhatsApp, run_fake
from tests.support.billing_events import BillingEvents
from tests.support.clock import ManualClock
from tests.support.portal import auth_plugin_entry, register_user

ADMIN_AR = "+96590000001"
ADMIN_EN = "+96590000002"
USER = "+96551234567"
ARABIC = re.compile(r"[\u0600-\u06ff]")
EXPIRES = datetime(2026, 4, 14, 9, 0)  # UTC-naive, as events carry it


@pytest.fixture
async def fake() -> AsyncIterator[FakeWhatsApp]:
    async with run_fake(FakeSettings(pair_interval=0)) as f:
        yield f


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch, fake: FakeWhatsApp) -> FakeWhatsApp:
    monkeypatch.setenv("RESAYIL_WHATSAPP_PROVIDER", "resayil")
    monkeypatch.setenv("RESAYIL_WHATSAPP_URL", fake.url + "/api/v1")
    monkeypatch.setenv("RESAYIL_WHATSAPP_TOKEN", "test-token")
    monkeypatch.setenv("RESAYIL_ADMIN_PHONES", f"{ADMIN_AR},{ADMIN_EN}:en")
    return fake


def notify_config(ollama: Any, db_url: str, *, redis_url: str | None = None, **settings: Any) -> dict[str, Any]:
    notify = {"name": "notify", "settings": {"send_every_seconds": 3600, "pair_interval_seconds": 0, **settings}}
    return base_config(
        ollama_url=ollama.url, database_url=db_url, redis_url=redis_url, plugins=[auth_plugin_entry(), notify]
    )


async def publish(served: Any, *events: Event) -> None:
    await served.gateway.events.publish(*events)
    await served.gateway.drain()


async def send_all(served: Any, runs: int = 3) -> None:
    notify = served.gateway.plugin("notify")
    for _ in range(runs):
        await notify.send(served.gateway)


async def outbox_rows(served: Any) -> list[Any]:
    async with served.gateway.database.connect() as conn:
        return list((await conn.execute(sa.select(notify_outbox).order_by(notify_outbox.c.id))).all())


def noon() -> ManualClock:
    """A manual clock at the next 12:00 UTC, hours from a day's end (alerts are once a day)."""
    clock = ManualClock()
    clock.advance((12 * 3600 - clock.time()) % 86400)
    return clock


def blocks(text: str) -> list[str]:
    return text.split("\n\n")


def order(text: str) -> list[str]:
    """The languages of a bilingual text's two blocks, in order."""
    return ["ar" if ARABIC.search(block) else "en" for block in blocks(text)]


def user_events(account_id: int, user_id: int, locale: str) -> dict[str, tuple[Event, str]]:
    """Each user event for this account, with a phrase its English block must hold."""
    owner = {"account_id": account_id, "user_id": user_id, "locale": locale, "phone": USER}
    notice = {**owner, "tier": "pro", "top_up_url": "https://portal.example.test/#/billing"}
    order_fields = {"product": "pack-15000", "currency": "KWD", "receipt_number": "R-2026-000042"}
    return {
        "credits.low": (
            CreditsLow(
                **notice,
                balance_milli=1_000_000,
                plan_credits_milli=5_000_000,
                percent_remaining=20,
                threshold_percent=20,
            ),
            "Your balance is 1,000 credits.",
        ),
        "credits.exhausted": (
            CreditsExhausted(**notice, balance_milli=0, available_milli=0, needed_milli=64_000, model="llama3.2:3b"),
            "new requests now answer 402",
        ),
        "topup.paid": (
            TopupPaid(
                **owner,
                **order_fields,
                order_id="ord-1",
                amount_fils=12000,
                credits_milli=15_000_000,
                balance_milli=16_250_500,
            ),
            "15,000 credits were added to your account for 12.000 KWD",
        ),
        "subscription.activated": (
            SubscriptionActivated(
                **owner,
                **order_fields,
                order_id="ord-2",
                amount_fils=7500,
                credits_milli=5_000_000,
                balance_milli=5_000_000,
                tier="pro",
                plan_expires_at=EXPIRES,
            ),
            "Your Pro plan is active.",
        ),
        "subscription.renewal_due": (
            SubscriptionRenewalDue(**owner, tier="pro", plan_expires_at=EXPIRES, product="plan-pro", days_left=3),
            "Your Pro plan expires in 3 days, on 14 April 2026.",
        ),
    }


def admin_events() -> dict[str, tuple[Event, str]]:
    budget = {"day": date(2026, 3, 14), "cap": 500}
    registration = {
        "account_id": 77,
        "user_id": 770,
        "user_name": "Gulf Trading",
        "email": "ops@gulf.example",
        "phone": "+96512345678",
        "locale": "ar",
        "tier": "enterprise",
    }
    banned = datetime(2026, 3, 14, 18, 30)
    return {
        "cloud.budget_80": (CloudBudget80(**budget, used=400, percent=80), "400 of today's 500 cloud requests"),
        "cloud.budget_100": (CloudBudget100(**budget, used=500, percent=100), "reached the daily cap (500 of 500"),
        "ip.banned": (
            IpBanned(ip="203.0.113.9", jail="resayil-portal", failures=7, banned_at=banned),
            "203.0.113.9 was banned by the resayil-portal jail after 7 failures.\nTime: 14 March 2026, 21:30",
        ),
        "enterprise.registered": (EnterpriseRegistered(**registration), "Plan: Enterprise, for 25.000 KWD."),
    }


@pytest.mark.parametrize("locale", ["ar", "en"])
async def test_each_user_event_reaches_its_owner_once_in_both_languages_theirs_first(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp, locale: str
) -> None:
    async with serve(notify_config(ollama, db_url), plugins=[BillingEvents()]) as served:
        user = await register_user(served, locale=locale, phone=USER, name="Fatima")
        events = user_events(user.account_id, user.user_id, locale)
        await publish(served, *(event for event, _ in events.values()))
        # Every event again, as a redelivery would hand it over, and the sender run again and again.
        notify = served.gateway.plugin("notify")
        for event, _ in events.values():
            await notify.resayil_event(event)
        await send_all(served)
        await send_all(served)

    got = {r["text"].split("\n")[0]: r for r in provider.accepted}
    assert len(provider.accepted) == 6, [r["text"] for r in provider.accepted]  # five events + the welcome
    assert {r["to"] for r in provider.accepted} == {USER}
    theirs = ["en", "ar"] if locale == "en" else ["ar", "en"]
    for received in provider.accepted:
        assert order(received["text"] or "") == theirs
    english = [blocks(r["text"] or "")[theirs.index("en")] for r in provider.accepted]
    for _, phrase in events.values():
        assert sum(phrase in text for text in english) == 1, phrase
    assert sum("Hello Fatima, welcome" in text for text in english) == 1
    assert got  # every text is non-empty and keyed


async def test_each_admin_event_reaches_every_admin_once_in_their_language(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp
) -> None:
    async with serve(notify_config(ollama, db_url)) as served:
        events = admin_events()
        await publish(served, *(event for event, _ in events.values()))
        for event, _ in events.values():
            await served.gateway.plugin("notify").resayil_event(event)
        await send_all(served)
        rows = await outbox_rows(served)

    assert len(provider.accepted) == 8 and len(rows) == 8
    for phone, language in ((ADMIN_AR, "ar"), (ADMIN_EN, "en")):
        texts = [r["text"] or "" for r in provider.accepted if r["to"] == phone]
        assert len(texts) == 4
        assert all(order(t) == [language] for t in texts), texts
        if language == "en":
            for _, phrase in events.values():
                assert sum(phrase in t for t in texts) == 1, phrase
    assert {row.status for row in rows} == {"sent"}
    assert all(row.provider_message_id for row in rows)


async def test_registering_on_enterprise_tells_the_user_and_the_admins_once(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp
) -> None:
    config = notify_config(ollama, db_url)
    config["plugins"][0]["settings"]["registration_tier"] = "enterprise"
    async with serve(config) as served:
        await register_user(served, phone=USER, name="Gulf Trading", locale="en")
        await served.gateway.drain()
        await send_all(served)
    assert sorted(r["to"] or "" for r in provider.accepted) == sorted([USER, ADMIN_AR, ADMIN_EN])
    admin_text = next(r["text"] or "" for r in provider.accepted if r["to"] == ADMIN_EN)
    assert "New Enterprise customer: Gulf Trading." in admin_text and "+96551234567" in admin_text


async def test_opted_out_users_get_no_low_credit_or_renewal_notice_but_the_rest(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp
) -> None:
    async with serve(notify_config(ollama, db_url), plugins=[BillingEvents()]) as served:
        user = await register_user(served, phone=USER)
        body = {"notifications": {"credits.low": False, "subscription.renewal_due": False}}
        async with served.request("PATCH", "/api/me", json=body, headers=user.headers) as resp:
            assert resp.status == 200 and (await resp.json())["user"]["notifications"] == body["notifications"]
        events = user_events(user.account_id, user.user_id, "ar")
        await publish(served, *(event for event, _ in events.values()))
        await send_all(served)
    names = [r["event_name"] for r in await_rows(provider)]
    assert sorted(names) == ["credits.exhausted", "subscription.activated", "topup.paid", "user.registered"]


def await_rows(fake: FakeWhatsApp) -> list[dict[str, str]]:
    """Which template each accepted message came from, by its English opening."""
    openings = {
        "You are out of credits": "credits.exhausted",
        "Your Pro plan is active": "subscription.activated",
        "Thank you:": "topup.paid",
        "Hello ": "user.registered",
        "Heads up": "credits.low",
        "Your Pro plan expires": "subscription.renewal_due",
    }
    found = []
    for r in fake.accepted:
        english = blocks(r["text"] or "")[1]
        found.append({"event_name": next(v for k, v in openings.items() if english.startswith(k))})
    return found


async def test_the_owner_is_found_through_the_accounts_service_when_the_event_has_no_phone(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp
) -> None:
    async with serve(notify_config(ollama, db_url)) as served:
        user = await register_user(served, phone=USER, locale="en")
        low = CreditsLow(
            account_id=user.account_id,
            user_id=None,
            locale=None,
            phone=None,
            tier=None,
            balance_milli=200_000,
            top_up_url="https://portal.example.test/#/billing",
            plan_credits_milli=1_000_000,
            percent_remaining=20,
            threshold_percent=20,
        )
        await publish(served, low)
        await send_all(served)
    texts = [r["text"] or "" for r in provider.accepted if "Heads up" in (r["text"] or "")]
    assert len(texts) == 1 and order(texts[0]) == ["en", "ar"]


async def test_the_log_provider_is_the_default_and_records_not_configured(
    serve: Any,
    ollama: Any,
    db_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("RESAYIL_WHATSAPP_PROVIDER", "RESAYIL_WHATSAPP_URL", "RESAYIL_WHATSAPP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RESAYIL_ADMIN_PHONES", ADMIN_AR)
    caplog.set_level(logging.INFO, logger="resayil.notify")
    async with serve(notify_config(ollama, db_url, redis_url=redis_url)) as served:
        await publish(served, admin_events()["cloud.budget_80"][0])
        await send_all(served)
        rows = await outbox_rows(served)
    assert [(row.status, row.attempts, row.provider) for row in rows] == [("not_configured", 1, "log")]
    logged = [r for r in caplog.records if r.getMessage().startswith("whatsapp message not sent")]
    assert len(logged) == 1 and logged[0].fields["to"] == "+965******01"  # type: ignore[attr-defined]


async def test_a_retryable_failure_is_retried_with_backoff_then_sent(
    serve: Any, ollama: Any, db_url: str, redis_url: str, provider: FakeWhatsApp
) -> None:
    clock = ManualClock()
    provider.settings.fail_next = [131000, 130429]
    config = notify_config(ollama, db_url, redis_url=redis_url, first_backoff_seconds=30)
    async with serve(config, clock=clock) as served:
        await publish(served, admin_events()["ip.banned"][0])
        assert len(await outbox_rows(served)) == 2
        await send_all(served, runs=1)  # both admins: the first fails (131000), the second (130429)
        rows = await outbox_rows(served)
        assert [(r.status, r.attempts, r.last_error) for r in rows] == [
            ("retrying", 1, "131000"),
            ("retrying", 1, "130429"),
        ]
        await send_all(served, runs=2)  # not due yet: nothing is sent
        assert len(provider.accepted) == 0
        clock.advance(31)
        await send_all(served, runs=1)
        rows = await outbox_rows(served)
    assert [(r.status, r.attempts, r.last_error) for r in rows] == [("sent", 2, None), ("sent", 2, None)]
    assert len(provider.accepted) == 2 and len(provider.received) == 4


async def test_retries_are_bounded(
    serve: Any, ollama: Any, db_url: str, redis_url: str, provider: FakeWhatsApp
) -> None:
    clock = ManualClock()
    provider.settings.outage_status = 503
    async with serve(
        notify_config(ollama, db_url, redis_url=redis_url, max_attempts=3, first_backoff_seconds=10), clock=clock
    ) as served:
        await publish(served, admin_events()["cloud.budget_100"][0])
        for _ in range(6):
            await send_all(served, runs=1)
            clock.advance(3600)
        rows = await outbox_rows(served)
    assert [(r.status, r.attempts, r.last_error) for r in rows] == [("failed", 3, "http_503")] * 2
    assert len(provider.received) == 0  # the outage page answers before the fake records anything


async def test_a_permanent_failure_is_never_retried(
    serve: Any, ollama: Any, db_url: str, redis_url: str, provider: FakeWhatsApp
) -> None:
    clock = ManualClock()
    provider.settings.fail_next = [131026]
    async with serve(notify_config(ollama, db_url, redis_url=redis_url), clock=clock) as served:
        await publish(served, admin_events()["cloud.budget_80"][0])
        for _ in range(3):
            await send_all(served, runs=1)
            clock.advance(3600)
        rows = await outbox_rows(served)
    assert sorted((r.status, r.attempts, r.last_error) for r in rows) == [("failed", 1, "131026"), ("sent", 1, None)]
    assert len(provider.received) == 2


async def test_an_expired_token_holds_messages_and_alerts_the_admins_once(
    serve: Any, ollama: Any, db_url: str, redis_url: str, provider: FakeWhatsApp, caplog: pytest.LogCaptureFixture
) -> None:
    clock = noon()  # the alert is once a day: a test run crossing midnight would rightly send two
    provider.settings.token = "rotated"  # ours is now wrong: 401 from the Resayil gateway
    caplog.set_level(logging.ERROR, logger="resayil.notify")
    async with serve(
        notify_config(ollama, db_url, redis_url=redis_url, alert_pause_seconds=600), clock=clock
    ) as served:
        await publish(served, admin_events()["cloud.budget_80"][0], admin_events()["cloud.budget_100"][0])
        for _ in range(3):
            await send_all(served, runs=1)
            clock.advance(601)
        rows = await outbox_rows(served)
        alerts = [r for r in rows if r.event_name == "provider.alert"]
        held = [r for r in rows if r.event_name != "provider.alert"]
        assert sorted(r.recipient for r in alerts) == [ADMIN_AR, ADMIN_EN]
        assert {(r.status, r.last_error) for r in held} == {("retrying", "401")}
        provider.settings.token = "test-token"
        clock.advance(601)
        await send_all(served)
        rows = await outbox_rows(served)
    assert {r.status for r in rows} == {"sent"}
    errors = [r for r in caplog.records if "needs an operator" in r.getMessage()]
    assert len(errors) == 1
    english = [r["text"] or "" for r in provider.accepted if r["to"] == ADMIN_EN]
    assert sum("refused to send with code 401" in t for t in english) == 1


async def test_messages_to_one_recipient_are_paced(
    serve: Any, ollama: Any, db_url: str, redis_url: str, provider: FakeWhatsApp
) -> None:
    clock = ManualClock()
    provider.settings.pair_interval = 6
    provider.settings.clock = clock.monotonic
    async with serve(
        notify_config(ollama, db_url, redis_url=redis_url, pair_interval_seconds=6), clock=clock
    ) as served:
        events = admin_events()
        await publish(served, events["cloud.budget_80"][0], events["cloud.budget_100"][0])
        await send_all(served, runs=3)
        assert len(provider.accepted) == 2  # one to each admin, the second message to each waits
        clock.advance(5)
        await send_all(served, runs=1)
        assert len(provider.accepted) == 2
        clock.advance(1.5)
        await send_all(served, runs=1)
        rows = await outbox_rows(served)
    assert len(provider.accepted) == 4 and {r["code"] for r in provider.received} == {None}  # no 131056
    assert {r.status for r in rows} == {"sent"}


@pytest.mark.slow
async def test_two_senders_racing_send_each_message_once(
    serve: Any, ollama: Any, db_url: str, redis_url: str, provider: FakeWhatsApp
) -> None:
    provider.settings.latency = 0.05
    config = notify_config(ollama, db_url, redis_url=redis_url, batch=50)
    async with serve(config) as first, serve(config) as second:
        for n in range(10):
            budget = CloudBudget80(day=date(2026, 1, 1) + timedelta(days=n), used=400, cap=500, percent=80)
            await publish(first, budget)
            # The same event reaches the second worker too, as a redelivery would.
            await second.gateway.plugin("notify").resayil_event(budget)
        a, b = first.gateway.plugin("notify"), second.gateway.plugin("notify")
        for _ in range(12):  # one message per recipient per run: 10 each, raced by three senders
            await asyncio.gather(a.send(first.gateway), b.send(second.gateway), a.send(first.gateway))
        rows = await outbox_rows(first)
    assert len(rows) == 20 and {r.status for r in rows} == {"sent"}
    assert len(provider.accepted) == 20 == len({r.provider_message_id for r in rows})
    assert all(r.attempts == 1 for r in rows)
