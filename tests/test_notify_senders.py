"""The three WhatsApp senders against the fake provider: every code class of the reference's policy."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import aiohttp
import pytest

from edge.logs import JsonFormatter
from edge.settings import ConfigError
from plugins.notify import policy
from plugins.notify.delivery import Policy, outcome_values
from plugins.notify.policy import Alert, NotConfigured, Permanent, Retry, Sent
from plugins.notify.provider import CloudSettings, ResayilSettings, from_env
from plugins.notify.senders import CloudSender, LogSender, Message, ResayilSender, build_sender, masked
from tests.fakes.whatsapp import CloudTemplate, FakeSettings, FakeWhatsApp, run_fake

PHONE = "+96512345678"
MESSAGE = Message(to=PHONE, language="ar", text="نص عربي\n\nEnglish text", event="credits.low", params=("20", "1,000"))
TEMPLATES = [CloudTemplate("resayil_credits_low", "ar", 2), CloudTemplate("resayil_credits_low", "en_US", 2)]

RETRY = [130429, 131056, 131000, 131016]
PERMANENT = [131026, 131050, 132001, 100]
ALERT = [190, 368, 131031]
CODE_OUTCOMES = (
    [(c, Retry(str(c))) for c in RETRY]
    + [(c, Permanent(str(c))) for c in PERMANENT]
    + [(c, Alert(str(c))) for c in ALERT]
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeWhatsApp]:
    async with run_fake(FakeSettings(templates=list(TEMPLATES), pair_interval=0)) as f:
        yield f


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def resayil(fake: FakeWhatsApp, http: aiohttp.ClientSession, **env: str) -> ResayilSender:
    settings = from_env(
        {
            "RESAYIL_WHATSAPP_PROVIDER": "resayil",
            "RESAYIL_WHATSAPP_URL": fake.url + "/api/v1",
            "RESAYIL_WHATSAPP_TOKEN": "test-token",
            **env,
        }
    )
    assert isinstance(settings, ResayilSettings)
    return ResayilSender(settings, http=http)


def cloud(fake: FakeWhatsApp, http: aiohttp.ClientSession, **env: str) -> CloudSender:
    settings = from_env(
        {
            "RESAYIL_WHATSAPP_PROVIDER": "cloud",
            "RESAYIL_WHATSAPP_URL": fake.url,
            "RESAYIL_WHATSAPP_TOKEN": "test-token",
            "RESAYIL_WHATSAPP_CLOUD_PHONE_NUMBER_ID": "1234567890",
            "RESAYIL_WHATSAPP_CLOUD_LOCALES": "ar=ar,en=en_US",
            **env,
        }
    )
    assert isinstance(settings, CloudSettings)
    return CloudSender(settings, http=http)


# ---------------------------------------------------------------------------- policy


def test_policy_follows_the_reference_code_by_code():
    for code in (130429, 131056, 131000):
        assert policy.for_code(code, status=400) == Retry(str(code))
    for code in PERMANENT:
        assert policy.for_code(code, status=500) == Permanent(str(code))
    for code in ALERT:
        assert policy.for_code(code, status=200) == Alert(str(code))
    assert policy.for_code(None, status=502) == Retry("http_502")
    assert policy.for_code(None, status=429) == Retry("http_429")
    assert policy.for_code(None, status=401) == Alert("http_401")
    assert policy.for_code(None, status=404) == Permanent("http_404")
    assert policy.for_code(131016, status=503) == Retry("131016")  # unlisted code: by its 5xx status
    assert policy.for_code(132000, status=400) == Permanent("132000")


# ---------------------------------------------------------------------------- resayil


async def test_resayil_sends_the_text_shape(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    outcome = await resayil(fake, http).send(message=MESSAGE)
    [got] = fake.accepted
    assert outcome == Sent(str(got["message_id"]))
    assert got["body"] == {"to": PHONE, "type": "text", "text": {"body": MESSAGE.text}}
    assert got["headers"]["Authorization"] == "Bearer test-token"


async def test_resayil_sends_the_legacy_shape_and_a_custom_one(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    sender = resayil(fake, http, RESAYIL_WHATSAPP_PATH="/send", RESAYIL_WHATSAPP_BODY="legacy")
    assert isinstance(await sender.send(message=MESSAGE), Sent)
    assert fake.accepted[-1]["body"] == {"phone": PHONE, "message": MESSAGE.text, "language": "ar"}
    custom = '{"language": "{language}", "message": "{text}", "phone": "{to}"}'
    sender = resayil(fake, http, RESAYIL_WHATSAPP_PATH="/send", RESAYIL_WHATSAPP_BODY=custom)
    hostile = Message(to=PHONE, language="en", text='{to}", "phone": "+1', event="user.registered")
    assert isinstance(await sender.send(message=hostile), Sent)
    # A text that looks like a placeholder or like JSON is sent as it is, in its own field.
    assert fake.accepted[-1]["body"] == {"phone": PHONE, "message": hostile.text, "language": "en"}


@pytest.mark.parametrize(("code", "outcome"), CODE_OUTCOMES)
async def test_resayil_error_codes(fake: FakeWhatsApp, http: aiohttp.ClientSession, code: int, outcome: object):
    fake.settings.fail_next = [code]
    assert await resayil(fake, http).send(message=MESSAGE) == outcome
    assert fake.accepted == []


async def test_resayil_failures_without_a_code(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    sender = resayil(fake, http)
    fake.settings.missing_id = True
    assert await sender.send(message=MESSAGE) == Permanent("no_message_id")
    fake.settings.missing_id = False
    fake.settings.outage_status = 502
    assert await sender.send(message=MESSAGE) == Retry("http_502")
    fake.settings.outage_status = None
    fake.settings.reset = True
    assert await sender.send(message=MESSAGE) == Retry("connection")
    fake.settings.reset = False
    assert await resayil(fake, http, RESAYIL_WHATSAPP_TOKEN="wrong").send(message=MESSAGE) == Alert("401")
    fake.settings.latency = 1.0
    assert await resayil(fake, http, RESAYIL_WHATSAPP_TIMEOUT="0.2").send(message=MESSAGE) == Retry("timeout")


async def test_resayil_pair_rate_is_a_retry(http: aiohttp.ClientSession):
    async with run_fake(FakeSettings(pair_interval=60)) as fake:
        sender = resayil(fake, http)
        assert isinstance(await sender.send(message=MESSAGE), Sent)
        assert await sender.send(message=MESSAGE) == Retry("131056")


async def test_resayil_refused_phone_is_permanent(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    bad = Message(to="96512345678", language="ar", text="x", event="user.registered")
    assert await resayil(fake, http).send(message=bad) == Permanent("100")


# ---------------------------------------------------------------------------- cloud


async def test_cloud_sends_the_events_template_in_the_approved_locale(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    sender = cloud(fake, http)
    outcome = await sender.send(message=MESSAGE)
    english = Message(to=PHONE, language="en", text="", event="credits.low", params=("20", "1,000"))
    assert isinstance(await sender.send(message=english), Sent)
    first, second = fake.accepted
    assert outcome == Sent(str(first["message_id"]))
    assert (first["to"], first["template"], first["language"], first["params"]) == (
        "96512345678",
        "resayil_credits_low",
        "ar",
        ["20", "1,000"],
    )
    assert (second["language"], second["path"]) == ("en_US", "/v21.0/1234567890/messages")


async def test_cloud_locale_must_match_exactly(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    english = Message(to=PHONE, language="en", text="", event="credits.low", params=("20", "1,000"))
    assert await cloud(fake, http, RESAYIL_WHATSAPP_CLOUD_LOCALES="ar=ar,en=en").send(message=english) == Permanent(
        "132001"
    )


async def test_cloud_parameters_are_made_acceptable(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    message = Message(to=PHONE, language="ar", text="", event="credits.low", params=("a\nb\tc      d", ""))
    assert isinstance(await cloud(fake, http).send(message=message), Sent)
    assert fake.accepted[0]["params"] == ["a b c d", "-"]


@pytest.mark.parametrize(("code", "outcome"), CODE_OUTCOMES)
async def test_cloud_error_codes(fake: FakeWhatsApp, http: aiohttp.ClientSession, code: int, outcome: object):
    fake.settings.fail_next = [code]
    assert await cloud(fake, http).send(message=MESSAGE) == outcome


async def test_cloud_refuses_a_body_filled_past_1024_characters(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    fake.settings.templates = [CloudTemplate("resayil_credits_low", "ar", 2, text_length=1000)]
    short = Message(to=PHONE, language="ar", text="", event="credits.low", params=("20", "1" * 22))
    assert isinstance(await cloud(fake, http).send(message=short), Sent)
    long = Message(to=PHONE, language="ar", text="", event="credits.low", params=("20", "1" * 23))
    fake.settings.pair_interval = 0
    assert await cloud(fake, http).send(message=long) == Permanent("132005")


async def test_cloud_failures_without_an_id(fake: FakeWhatsApp, http: aiohttp.ClientSession):
    fake.settings.missing_id = True
    assert await cloud(fake, http).send(message=MESSAGE) == Permanent("no_message_id")
    fake.settings.missing_id = False
    assert await cloud(fake, http, RESAYIL_WHATSAPP_TOKEN="expired").send(message=MESSAGE) == Alert("190")
    other = cloud(fake, http, RESAYIL_WHATSAPP_CLOUD_PHONE_NUMBER_ID="999")
    assert await other.send(message=MESSAGE) == Permanent("100")


# ---------------------------------------------------------------------------- log and settings


async def test_log_sender_masks_the_phone(caplog: pytest.LogCaptureFixture, http: aiohttp.ClientSession):
    sender = build_sender(from_env({}), http=http)
    assert isinstance(sender, LogSender)
    with caplog.at_level(logging.INFO, logger="resayil.notify"):
        assert await sender.send(message=MESSAGE) == NotConfigured()
    [record] = caplog.records
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["to"] == "+965******78" and fields["text"] == MESSAGE.text
    assert "12345678" not in JsonFormatter().format(record)
    assert masked("+1234") == "+****"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RESAYIL_WHATSAPP_PROVIDER": "twilio"}, "RESAYIL_WHATSAPP_PROVIDER"),
        (
            {"RESAYIL_WHATSAPP_PROVIDER": "resayil", "RESAYIL_WHATSAPP_URL": "https://x.example"},
            "RESAYIL_WHATSAPP_TOKEN",
        ),
        ({"RESAYIL_WHATSAPP_PROVIDER": "resayil", "RESAYIL_WHATSAPP_TOKEN": "sekrit"}, "RESAYIL_WHATSAPP_URL"),
        (
            {
                "RESAYIL_WHATSAPP_PROVIDER": "resayil",
                "RESAYIL_WHATSAPP_TOKEN": "sekrit",
                "RESAYIL_WHATSAPP_URL": "http://wa.example",
            },
            "RESAYIL_WHATSAPP_URL",
        ),
        (
            {
                "RESAYIL_WHATSAPP_PROVIDER": "resayil",
                "RESAYIL_WHATSAPP_TOKEN": "sekrit",
                "RESAYIL_WHATSAPP_URL": "https://wa.example",
                "RESAYIL_WHATSAPP_BODY": '{"to": "{to}", "body": "{txt}"}',
            },
            "RESAYIL_WHATSAPP_BODY",
        ),
        (
            {
                "RESAYIL_WHATSAPP_PROVIDER": "resayil",
                "RESAYIL_WHATSAPP_TOKEN": "sekrit",
                "RESAYIL_WHATSAPP_URL": "https://wa.example",
                "RESAYIL_WHATSAPP_PATH": "/send?x=1",
            },
            "RESAYIL_WHATSAPP_PATH",
        ),
        (
            {"RESAYIL_WHATSAPP_PROVIDER": "cloud", "RESAYIL_WHATSAPP_TOKEN": "sekrit"},
            "RESAYIL_WHATSAPP_CLOUD_PHONE_NUMBER_ID",
        ),
        (
            {
                "RESAYIL_WHATSAPP_PROVIDER": "cloud",
                "RESAYIL_WHATSAPP_TOKEN": "sekrit",
                "RESAYIL_WHATSAPP_CLOUD_PHONE_NUMBER_ID": "1",
                "RESAYIL_WHATSAPP_CLOUD_LOCALES": "ar=ar",
            },
            "RESAYIL_WHATSAPP_CLOUD_LOCALES",
        ),
    ],
)
def test_bad_settings_name_the_variable_and_never_the_token(env: dict[str, str], named: str):
    with pytest.raises(ConfigError) as caught:
        from_env(env)
    assert str(caught.value).startswith(named + ":")
    assert "sekrit" not in str(caught.value)


def test_settings_defaults():
    assert from_env({}) is None
    cloud_settings = from_env(
        {
            "RESAYIL_WHATSAPP_PROVIDER": "cloud",
            "RESAYIL_WHATSAPP_TOKEN": "t",
            "RESAYIL_WHATSAPP_CLOUD_PHONE_NUMBER_ID": "1",
        }
    )
    assert isinstance(cloud_settings, CloudSettings)
    assert (cloud_settings.base_url, cloud_settings.api_version, cloud_settings.locales) == (
        "https://graph.facebook.com",
        "v21.0",
        {"ar": "ar", "en": "en"},
    )
    assert "t'" not in repr(cloud_settings)


def test_tenacity_paces_the_retries_doubling_between_the_pair_interval_and_the_ceiling() -> None:
    retries = Policy(
        batch=1,
        pair_seconds=6,
        lease_seconds=60,
        max_attempts=7,
        first_backoff_seconds=2,
        max_backoff_seconds=40,
        alert_pause_seconds=900,
    )
    assert [retries.backoff(n) for n in range(1, 8)] == [6, 6, 8, 16, 32, 40, None]
    now = datetime(2026, 3, 1, 12, 0)
    second = outcome_values(Retry("131000"), attempts=2, policy=retries, now=now)
    assert (second["status"], second["next_attempt_at"]) == ("retrying", now + timedelta(seconds=6))
    alert = outcome_values(Alert("190"), attempts=3, policy=retries, now=now)
    assert alert["next_attempt_at"] == now + timedelta(seconds=900)
    assert outcome_values(Retry("131000"), attempts=7, policy=retries, now=now)["status"] == "failed"
    assert outcome_values(Alert("190"), attempts=7, policy=retries, now=now)["status"] == "failed"
