"""Users' opt-outs of the optional WhatsApp notices through auth_keys' `PATCH /api/me` (the `PREFERENCES`
service notify provides): shown by `GET /api/me`, checked into the one 422, stored in the request's one
transaction, one user's choices never another's; refused with a field error when notify is off; and an
opted-out user spending down through /v1 gets `credits.exhausted` but no `credits.low`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from plugins.notify.tables import notify_outbox
from tests.fakes.myfatoorah import FakeMyFatoorah
from tests.fakes.whatsapp import FakeWhatsApp
from tests.support.billing import WEBHOOK_PATH
from tests.support.billing_admin import paid_order
from tests.support.portal import auth_config, bearer, create_key, register_user
from tests.test_notify_outbox import fake, notify_config, provider
from tests.test_notify_triggers import COSTLY_MODEL, chat, example_config, payments, settle, whatsapp

__all__ = ["fake", "payments", "provider", "whatsapp"]  # fixtures, used by name

ALL_ON = {"credits.low": True, "subscription.renewal_due": True}


async def call(served: Any, method: str, headers: dict[str, str], body: Any = None) -> tuple[int, dict[str, Any]]:
    """`/api/me`; a `bytes` body is sent as it is (duplicate keys), anything else as JSON."""
    if isinstance(body, bytes):
        options: dict[str, Any] = {"data": body, "headers": {**headers, "Content-Type": "application/json"}}
    else:
        options = {"json": body, "headers": headers} if body is not None else {"headers": headers}
    async with served.request(method, "/api/me", **options) as resp:
        return resp.status, await resp.json()


async def test_patch_me_turns_optional_notices_off_and_on_for_that_user_only(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp
) -> None:
    async with serve(notify_config(ollama, db_url)) as served:
        user = await register_user(served)
        other = await register_user(served)
        assert (await call(served, "GET", user.headers))[1]["user"]["notifications"] == ALL_ON
        status, body = await call(served, "PATCH", user.headers, {"notifications": {"credits.low": False}})
        assert status == 200 and body["user"]["notifications"] == {**ALL_ON, "credits.low": False}
        # Name, language and notices in one request.
        change = {"name": "Sara", "locale": "en", "notifications": {"subscription.renewal_due": False}}
        status, body = await call(served, "PATCH", user.headers, change)
        assert status == 200, body
        shown = body["user"]
        assert (shown["name"], shown["locale"]) == ("Sara", "en")
        assert shown["notifications"] == {"credits.low": False, "subscription.renewal_due": False}
        status, body = await call(served, "PATCH", user.headers, {"notifications": {"credits.low": True}})
        assert body["user"]["notifications"] == {"credits.low": True, "subscription.renewal_due": False}
        # An empty object changes nothing; so does a PATCH without the field.
        for same in ({"notifications": {}}, {"name": "Sara"}):
            status, body = await call(served, "PATCH", user.headers, same)
            assert status == 200 and body["user"]["notifications"]["subscription.renewal_due"] is False
        assert (await call(served, "GET", user.headers))[1]["user"]["notifications"] == {
            "credits.low": True,
            "subscription.renewal_due": False,
        }
        # The other user's choices are their own.
        assert (await call(served, "GET", other.headers))[1]["user"]["notifications"] == ALL_ON
        assert (await call(served, "PATCH", {}, {"notifications": {"credits.low": False}}))[0] == 401


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"notifications": {"credits.low": "false"}}, "notifications", "notifications_not_boolean"),
        ({"notifications": {"credits.low": 0}}, "notifications", "notifications_not_boolean"),
        ({"notifications": {"credits.low": None}}, "notifications", "notifications_not_boolean"),
        ({"notifications": {"Credits.Low": False}}, "notifications", "notifications_unknown_event"),
        ({"notifications": {"credits_low": False}}, "notifications", "notifications_unknown_event"),
        ({"notifications": {"cloud.budget_80": False}}, "notifications", "notifications_unknown_event"),
        ({"notifications": {"provider.alert": False}}, "notifications", "notifications_unknown_event"),
        ({"notifications": {"credits.exhausted": False}}, "notifications", "notifications_always_sent"),
        ({"notifications": {"user.registered": False}}, "notifications", "notifications_always_sent"),
        ({"notifications": ["credits.low"]}, "notifications", "notifications_invalid"),
        ({"notifications": None}, "notifications", "notifications_invalid"),
        ({"notifications": False}, "notifications", "notifications_invalid"),
        # A case variant of the field itself would otherwise be ignored, and look saved.
        ({"Notifications": {"credits.low": False}}, "Notifications", "field_unknown"),
        ({"NOTIFICATIONS": {"credits.low": False}}, "NOTIFICATIONS", "field_unknown"),
    ],
)
async def test_bad_choices_are_the_one_422_and_change_nothing(
    serve: Any, ollama: Any, sqlite_url: str, provider: FakeWhatsApp, body: dict[str, Any], field: str, code: str
) -> None:
    async with serve(notify_config(ollama, sqlite_url)) as served:
        user = await register_user(served, name="Before")
        # A good change next to the bad one is not stored either: one request, all or nothing.
        status, answer = await call(served, "PATCH", user.headers, {"name": "After", **body})
        assert status == 422, answer
        error = answer["error"]
        assert (error["param"], error["code"]) == (field, code)
        assert error["fields"] == {field: {"code": code, "message": error["message"]}}
        shown = (await call(served, "GET", user.headers))[1]["user"]
        assert (shown["name"], shown["notifications"]) == ("Before", ALL_ON)


async def test_a_bad_choice_is_named_with_the_profiles_other_bad_fields(
    serve: Any, ollama: Any, sqlite_url: str, provider: FakeWhatsApp
) -> None:
    async with serve(notify_config(ollama, sqlite_url)) as served:
        user = await register_user(served)
        body = {"name": "", "locale": "de", "notifications": {"credits.low": "no"}}
        status, answer = await call(served, "PATCH", user.headers, body)
    assert status == 422
    assert {k: v["code"] for k, v in answer["error"]["fields"].items()} == {
        "name": "name_required",
        "locale": "locale_invalid",
        "notifications": "notifications_not_boolean",
    }


async def test_duplicate_keys_store_what_was_checked(
    serve: Any, ollama: Any, db_url: str, provider: FakeWhatsApp
) -> None:
    """JSON with a key twice is read once (the last wins) and that one reading is both checked and stored:
    a bad first value cannot slip past the check, nor a checked value differ from the stored one."""
    async with serve(notify_config(ollama, db_url)) as served:
        user = await register_user(served)
        for raw, expected in (
            (b'{"notifications": {"credits.low": true, "credits.low": false}}', False),
            (b'{"notifications": {"credits.low": "no", "credits.low": true}}', True),
            (b'{"notifications": {"credits.low": false}, "notifications": {"credits.low": true}}', True),
        ):
            status, body = await call(served, "PATCH", user.headers, raw)
            assert status == 200, body
            assert body["user"]["notifications"]["credits.low"] is expected
            assert (await call(served, "GET", user.headers))[1]["user"]["notifications"]["credits.low"] is expected
        status, body = await call(served, "PATCH", user.headers, b'{"notifications": {"credits.low": false, "x": 1}}')
        assert (status, body["error"]["code"]) == (422, "notifications_unknown_event")
        assert (await call(served, "GET", user.headers))[1]["user"]["notifications"]["credits.low"] is True


async def test_without_notify_the_field_is_refused_not_ignored(serve: Any, ollama: Any, db_url: str) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served, name="Before")
        status, body = await call(served, "GET", user.headers)
        assert status == 200 and "notifications" not in body["user"]
        status, body = await call(
            served, "PATCH", user.headers, {"name": "After", "notifications": {"credits.low": False}}
        )
        assert status == 422, body
        assert (body["error"]["param"], body["error"]["code"]) == ("notifications", "notifications_unavailable")
        assert (await call(served, "GET", user.headers))[1]["user"]["name"] == "Before"
        # The rest of the profile still works.
        assert (await call(served, "PATCH", user.headers, {"name": "After"}))[0] == 200


async def _spend_down(served: Any, user: Any, key: dict[str, str]) -> list[int]:
    statuses = [await chat(served, key, COSTLY_MODEL, account_id=user.account_id)]
    while statuses[-1] == 200 and len(statuses) < 20:
        statuses.append(await chat(served, key, COSTLY_MODEL, account_id=user.account_id))
    return statuses


async def test_an_opted_out_user_spending_down_gets_exhausted_but_no_low_notice(
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
        payments.settings.webhook_url = served.url + WEBHOOK_PATH
        quiet = await register_user(served, locale="en", phone="+96551230001")
        told = await register_user(served, locale="en", phone="+96551230002")
        status, body = await call(served, "PATCH", quiet.headers, {"notifications": {"credits.low": False}})
        assert status == 200 and body["user"]["notifications"]["credits.low"] is False
        for user in (quiet, told):
            await paid_order(served, payments, user, "pro")
        await payments.webhooks_sent()
        ollama.settings.usage = {"prompt_tokens": 1, "completion_tokens": 2000}
        for user in (quiet, told):
            statuses = await _spend_down(served, user, bearer(await create_key(served, user)))
            assert statuses[-1] == 402 and set(statuses[:-1]) == {200}, statuses
        await settle(served)
        await settle(served)
        async with served.gateway.database.connect() as conn:
            rows = list((await conn.execute(sa.select(notify_outbox).order_by(notify_outbox.c.id))).all())
        assert (await call(served, "GET", told.headers))[1]["user"]["notifications"] == ALL_ON

    def events(phone: str) -> list[str]:
        return [r.event_name for r in rows if r.recipient == phone and r.event_name.startswith("credits.")]

    assert events(quiet.phone) == ["credits.exhausted"]
    assert events(told.phone) == ["credits.low", "credits.exhausted"]
    accepted = {r["message_id"]: r for r in whatsapp.accepted}
    texts = [accepted[r.provider_message_id]["text"] or "" for r in rows if r.recipient == quiet.phone]
    assert sum("out of credits" in t for t in texts) == 1 and not any("Heads up" in t for t in texts)


async def test_concurrent_changes_for_a_new_user_all_succeed(
    serve: Any, ollama: Any, db_url: str, redis_url: str, provider: FakeWhatsApp
) -> None:
    """The first change creates the user's row: many at once must not collide into a 500 (one upsert)."""
    async with serve(notify_config(ollama, db_url, redis_url=redis_url)) as served:
        user = await register_user(served)
        bodies = [{"notifications": {"credits.low": n % 2 == 0, "subscription.renewal_due": False}} for n in range(8)]
        answers = await asyncio.gather(*(call(served, "PATCH", user.headers, body) for body in bodies))
        assert [status for status, _ in answers] == [200] * 8, answers
        shown = (await call(served, "GET", user.headers))[1]["user"]["notifications"]
    assert shown["subscription.renewal_due"] is False and shown["credits.low"] in {True, False}
