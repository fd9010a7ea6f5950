"""The WhatsApp Cloud API end to end (the `cloud` provider against the strict fake), on SQLite and MariaDB.

WhatsApp approves a template in one language only, so a user gets each notice as two template messages,
their language first: the second waits for the first (also across its retries) and for the pair rate, so
the fake never answers 131056. Admins get one, in their language. A provider that needs an operator
(token expired, account blocked or locked) raises one alert per admin however many messages fail, also
with two workers; a 2xx naming no message is a failure that is never retried.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from plugins.notify import templates
from tests.fakes.whatsapp import CloudTemplate, FakeSettings, FakeWhatsApp, run_fake
from tests.support.billing_events import BillingEvents
from tests.support.clock import ManualClock
from tests.support.portal import register_user
from tests.test_notify_outbox import (
    ADMIN_AR,
    ADMIN_EN,
    USER,
    admin_events,
    noon,
    notify_config,
    outbox_rows,
    publish,
    send_all,
    user_events,
)

ARABIC_DIGIT = re.compile("[\u0660-\u0669]")
PAIR = 6


def approved() -> list[CloudTemplate]:
    """Every event's template as the operator registers it with Meta: the shipped text in each language,
    its placeholders as the body parameters (so the fake counts the parameters and the 1024 characters)."""
    loaded = templates.load()
    found = []
    for (event, language), template in loaded.templates.items():
        fixed = sum(len(literal) for literal, _ in template.parts)
        name = "resayil_" + event.replace(".", "_")
        found.append(CloudTemplate(name, language, len(templates.EVENTS[event]), text_length=fixed))
    return found


@pytest.fixture
async def meta(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FakeWhatsApp, ManualClock]]:
    clock = noon()  # the provider alert is once a day: a run crossing midnight would rightly send two
    settings = FakeSettings(pair_interval=PAIR, clock=clock.monotonic, templates=approved())
    async with run_fake(settings) as fake:
        monkeypatch.setenv("RESAYIL_WHATSAPP_PROVIDER", "cloud")
        monkeypatch.setenv("RESAYIL_WHATSAPP_URL", fake.url)
        monkeypatch.setenv("RESAYIL_WHATSAPP_TOKEN", "test-token")
        monkeypatch.setenv("RESAYIL_WHATSAPP_CLOUD_PHONE_NUMBER_ID", fake.settings.phone_number_id)
        monkeypatch.setenv("RESAYIL_ADMIN_PHONES", f"{ADMIN_AR},{ADMIN_EN}:en")
        yield fake, clock


def sent_to(fake: FakeWhatsApp, phone: str) -> list[tuple[str, str]]:
    """(template, locale) of each message the phone was sent, in order."""
    return [(r["template"] or "", r["language"] or "") for r in fake.accepted if r["to"] == phone.removeprefix("+")]


async def drive(served: Any, clock: ManualClock, *, rounds: int, step: float = PAIR) -> None:
    for _ in range(rounds):
        await send_all(served, runs=1)
        clock.advance(step)


@pytest.mark.parametrize("locale", ["ar", "en"])
async def test_a_user_gets_each_notice_as_two_templates_their_language_first(
    serve: Any, ollama: Any, db_url: str, meta: tuple[FakeWhatsApp, ManualClock], locale: str
) -> None:
    fake, clock = meta
    config = notify_config(ollama, db_url, pair_interval_seconds=PAIR)
    async with serve(config, clock=clock, plugins=[BillingEvents()]) as served:
        user = await register_user(served, locale=locale, phone=USER, name="Fatima")
        events = user_events(user.account_id, user.user_id, locale)
        await publish(served, *(event for event, _ in events.values()))
        # Redelivered: nothing more is queued.
        for event, _ in events.values():
            await served.gateway.plugin("notify").resayil_event(event)
        await drive(served, clock, rounds=16)
        rows = await outbox_rows(served)

    assert {r.status for r in rows} == {"sent"} and len(rows) == 12  # the welcome and five notices, twice
    assert {r["code"] for r in fake.received} == {None}  # never refused: no 131056, no 132000, no 132005
    theirs, other = (locale, "en" if locale == "ar" else "ar")
    got = sent_to(fake, USER)
    assert len(got) == 12
    for event in ["user.registered", *events]:
        name = "resayil_" + event.replace(".", "_")
        assert [lang for template, lang in got if template == name] == [theirs, other], (event, got)
        # Their language's message is the one right before the other's: the pair arrives together, in order.
        first = got.index((name, theirs))
        assert got[first + 1] == (name, other)
    # Each language's message carries that language's values.
    low = [r for r in fake.accepted if r["template"] == "resayil_credits_low"]
    by_language = {r["language"]: r["params"] for r in low}
    assert by_language["en"][1] == "1,000" and ARABIC_DIGIT.search(by_language["ar"][1])


async def test_the_second_language_waits_for_the_first_across_its_retries(
    serve: Any, ollama: Any, db_url: str, meta: tuple[FakeWhatsApp, ManualClock]
) -> None:
    fake, clock = meta
    config = notify_config(ollama, db_url, pair_interval_seconds=PAIR, first_backoff_seconds=30)
    async with serve(config, clock=clock, plugins=[BillingEvents()]) as served:
        user = await register_user(served, locale="ar", phone=USER)
        await served.gateway.drain()
        await drive(served, clock, rounds=3)  # the welcome, both languages
        assert [r["template"] for r in fake.accepted] == ["resayil_user_registered"] * 2
        fake.received.clear()
        fake.settings.fail_next = [131000]
        await publish(served, user_events(user.account_id, user.user_id, "ar")["credits.exhausted"][0])
        await drive(served, clock, rounds=4, step=7)  # past the pair interval, before the 30 s backoff
        assert [(r["language"], r["code"]) for r in fake.received] == [("ar", 131000)]
        clock.advance(30)
        await drive(served, clock, rounds=3)
        rows = [r for r in await outbox_rows(served) if r.event_name == "credits.exhausted"]
    assert [(r["language"], r["code"]) for r in fake.received] == [("ar", 131000), ("ar", None), ("en", None)]
    assert [(r.language, r.status, r.attempts) for r in rows] == [("ar", "sent", 2), ("en", "sent", 1)]


async def test_an_admin_gets_one_template_in_their_language(
    serve: Any, ollama: Any, db_url: str, meta: tuple[FakeWhatsApp, ManualClock]
) -> None:
    fake, clock = meta
    async with serve(notify_config(ollama, db_url, pair_interval_seconds=PAIR), clock=clock) as served:
        await publish(served, *(event for event, _ in admin_events().values()))
        await drive(served, clock, rounds=6)
    assert sorted(sent_to(fake, ADMIN_EN)) == sorted((f"resayil_{e.replace('.', '_')}", "en") for e in admin_events())
    assert sorted(sent_to(fake, ADMIN_AR)) == sorted((f"resayil_{e.replace('.', '_')}", "ar") for e in admin_events())


@pytest.mark.parametrize("code", [190, 368, 131031])
async def test_a_provider_needing_an_operator_alerts_each_admin_once_across_workers(
    serve: Any, ollama: Any, db_url: str, redis_url: str, meta: tuple[FakeWhatsApp, ManualClock], code: int
) -> None:
    """Token expired (190), account blocked (368) or locked (131031): every send fails the same way; the
    admins hear of it once, not once per message nor once per worker, and the messages wait, then go."""
    fake, clock = meta
    fake.settings.pair_interval = 0
    fake.settings.fail_next = [code] * 100
    config = notify_config(
        ollama, db_url, redis_url=redis_url, pair_interval_seconds=0, alert_pause_seconds=60, batch=4
    )
    async with serve(config, clock=clock) as first, serve(config, clock=clock) as second:
        events = admin_events()
        await publish(first, *(event for event, _ in events.values()))
        # Four messages each: both workers see the provider refuse, and both ask for the alert.
        await send_all(first, runs=1)
        await send_all(second, runs=1)
        assert len(fake.received) == 8 and {r["code"] for r in fake.received} == {code}
        for _ in range(4):
            await send_all(first, runs=1)
            await send_all(second, runs=1)
            clock.advance(61)
        rows = await outbox_rows(first)
        alerts = [r for r in rows if r.event_name == "provider.alert"]
        assert sorted(r.recipient for r in alerts) == [ADMIN_AR, ADMIN_EN]
        held = [r for r in rows if r.event_name != "provider.alert"]
        assert len(held) == 8 and {(r.status, r.last_error) for r in held} == {("retrying", str(code))}
        assert fake.accepted == []
        fake.settings.fail_next = []
        for _ in range(6):
            await send_all(first, runs=1)
            await send_all(second, runs=1)
            clock.advance(61)
        rows = await outbox_rows(first)
    assert {r.status for r in rows} == {"sent"} and len(rows) == 10
    alerts_sent = [r for r in fake.accepted if r["template"] == "resayil_provider_alert"]
    assert sorted((r["to"], r["params"]) for r in alerts_sent) == [
        (ADMIN_AR[1:], [str(code)]),
        (ADMIN_EN[1:], [str(code)]),
    ]


async def test_a_2xx_naming_no_message_fails_once_and_is_never_retried(
    serve: Any, ollama: Any, db_url: str, meta: tuple[FakeWhatsApp, ManualClock]
) -> None:
    fake, clock = meta
    fake.settings.missing_id = True
    async with serve(notify_config(ollama, db_url, pair_interval_seconds=PAIR), clock=clock) as served:
        await publish(served, admin_events()["cloud.budget_80"][0])
        await drive(served, clock, rounds=3, step=3600)
        rows = await outbox_rows(served)
    assert [(r.status, r.attempts, r.last_error, r.provider_message_id) for r in rows] == [
        ("failed", 1, "no_message_id", None)
    ] * 2
    assert len(fake.received) == 2 and all(r["status"] == 200 for r in fake.received)
