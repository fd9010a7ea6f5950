"""Registration: normalised and unique email and phone, Argon2id, an account on Basic, a session, events,
and clean 422/413 answers for bad, hostile and oversized input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import sqlalchemy as sa

from plugins.auth_keys import strength
from plugins.auth_keys.tables import accounts, api_keys, sessions, users
from tests.conftest import Served
from tests.support.inputs import field_codes
from tests.support.portal import PASSWORD, auth_config, register_user, unique_email, unique_phone
from tests.support.recorder import Recorder


async def post(served: Any, path: str, body: Any, **kwargs: Any) -> tuple[int, Any, Any]:
    async with served.request("POST", path, json=body, **kwargs) as resp:
        return resp.status, await resp.json(), resp


def form(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "سارة العلي",
        "email": unique_email(),
        "phone": unique_phone(),
        "password": PASSWORD,
        "locale": "ar",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


async def user_rows(served: Any) -> list[Any]:
    async with served.gateway.database.connect() as conn:
        return list(await conn.execute(sa.select(users)))


async def test_register_normalises_creates_a_basic_account_and_logs_in(ollama: Any, db_url: str, serve: Any) -> None:
    local = f"9{unique_phone()[-7:]}"
    async with serve(auth_config(ollama, db_url)) as served:
        status, data, resp = await post(
            served,
            "/api/auth/register",
            form(email="  Sara.Ali+Test@Example.COM ", phone=f"{local[:4]} {local[4:]}", locale="en"),
        )
        assert status == 201, data
        user = data["user"]
        assert user["email"] == "sara.ali+test@example.com"
        assert user["phone"] == f"+965{local}"
        assert (user["name"], user["locale"], user["role"], user["tier"]) == ("سارة العلي", "en", "user", "basic")
        assert "password" not in orjson.dumps(data).decode() and "hash" not in data["user"]

        set_cookie = resp.headers["Set-Cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")}
        assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes
        assert "samesite=lax" in set_cookie.lower()
        token = resp.cookies["resayil_session"].value
        headers = {"Cookie": f"resayil_session={token}"}
        async with served.request("GET", "/api/me", headers=headers) as me:
            assert me.status == 200
            assert (await me.json())["user"]["id"] == user["id"]

        async with served.gateway.database.connect() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.id == user["id"]))).one()
            account = (await conn.execute(sa.select(accounts).where(accounts.c.id == user["account_id"]))).one()
            stored_sessions = (await conn.execute(sa.select(sessions.c.id))).scalars().all()
        assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash
        assert (account.tier, account.plan_expires_at) == ("basic", None)
        # The database keeps only a digest of the session cookie.
        assert stored_sessions and token not in stored_sessions


async def test_register_publishes_user_registered(ollama: Any, db_url: str, serve: Any) -> None:
    events = Recorder()
    async with serve(auth_config(ollama, db_url), plugins=[events]) as served:
        status, data, _ = await post(served, "/api/auth/register", form(locale=...))
        assert status == 201, data
    assert [name for name, _ in events.events] == ["user.registered"]
    payload = events.events[0][1]
    assert payload["user_id"] == data["user"]["id"] and payload["account_id"] == data["user"]["account_id"]
    assert (payload["tier"], payload["locale"], payload["email"]) == ("basic", "ar", data["user"]["email"])
    assert "password" not in payload


async def test_enterprise_registration_also_publishes_enterprise_registered(
    ollama: Any, db_url: str, serve: Any
) -> None:
    events = Recorder()
    async with serve(auth_config(ollama, db_url, registration_tier="enterprise"), plugins=[events]) as served:
        status, data, _ = await post(served, "/api/auth/register", form())
        assert status == 201 and data["user"]["tier"] == "enterprise"
    # Both, in no promised order (events are delivered at least once, order not guaranteed).
    assert sorted(name for name, _ in events.events) == ["enterprise.registered", "user.registered"]


async def test_missing_and_malformed_fields_get_422_with_codes(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        status, data, _ = await post(served, "/api/auth/register", {})
        assert status == 422
        error = data["error"]
        assert error["type"] == "invalid_request_error" and isinstance(error["message"], str)
        assert field_codes(data) == {
            "name": "name_required",
            "email": "email_required",
            "phone": "phone_required",
            "password": "password_required",
        }
        assert (error["code"], error["param"]) == ("name_required", "name")

        cases = [
            ({"email": "not-an-email"}, "email", "email_invalid"),
            ({"email": "a@b"}, "email", "email_invalid"),
            ({"email": "a..b@example.com"}, "email", "email_invalid"),
            ({"email": 12345}, "email", "email_invalid"),
            ({"phone": "12345"}, "phone", "phone_invalid"),
            ({"phone": "+96501234567"}, "phone", "phone_invalid"),
            ({"phone": ["+96599887766"]}, "phone", "phone_invalid"),
            ({"password": "seven77"}, "password", "password_too_short"),
            ({"password": "p" * 1025}, "password", "password_too_long"),
            ({"locale": "fr"}, "locale", "locale_invalid"),
            ({"locale": 1}, "locale", "locale_invalid"),
            ({"name": "   "}, "name", "name_required"),
            ({"name": {"first": "x"}}, "name", "name_required"),
            ({"name": "ن" * 101}, "name", "name_too_long"),
        ]
        for override, field, code in cases:
            status, data, _ = await post(served, "/api/auth/register", form(**override))
            assert status == 422, (override, data)
            assert field_codes(data) == {field: code}, override
            assert data["error"]["code"] == code
        assert await user_rows(served) == []


async def test_email_and_phone_are_unique_after_normalisation(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        first = form(email="owner@example.com", phone="+965 9876 5432")
        status, _, _ = await post(served, "/api/auth/register", first)
        assert status == 201
        variants = [
            (form(email="OWNER@Example.com"), {"email": "email_taken"}),
            # Full-width letters are the same address once NFKC-normalised.
            (form(email="ＯＷＮＥＲ@example.com"), {"email": "email_taken"}),
            (form(phone="98765432"), {"phone": "phone_taken"}),
            (form(phone="0096598765432"), {"phone": "phone_taken"}),
            (form(phone="٩٨٧٦٥٤٣٢"), {"phone": "phone_taken"}),
            (form(email="owner@example.com", phone="98765432"), {"email": "email_taken", "phone": "phone_taken"}),
        ]
        for body, fields in variants:
            status, data, _ = await post(served, "/api/auth/register", body)
            assert status == 422, body
            assert field_codes(data) == fields
        assert len(await user_rows(served)) == 1


async def test_oversized_and_non_json_bodies(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        big = orjson.dumps(form(name="x" * (70 * 1024)))
        async with served.request(
            "POST", "/api/auth/register", data=big, headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "request_too_large"

        async def chunks() -> Any:
            for _ in range(20):
                yield b" " * 4096

        # Without a Content-Length the body is counted while it is read.
        async with served.request(
            "POST", "/api/auth/register", data=chunks(), headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 413

        for raw in (b"{not json", b"[1, 2]", b'"text"', b'{"name": "\\ud800"}'):
            async with served.request(
                "POST", "/api/auth/register", data=raw, headers={"Content-Type": "application/json"}
            ) as resp:
                assert resp.status == 422, raw
                assert (await resp.json())["error"]["code"] == "invalid_json"
        assert await user_rows(served) == []


async def test_sql_looking_confusable_and_long_inputs_are_stored_or_refused_cleanly(
    ollama: Any, db_url: str, serve: Any
) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        sql_name = "Robert'); DROP TABLE users;--"
        status, data, _ = await post(served, "/api/auth/register", form(name=sql_name, email="o'brien+x@example.com"))
        assert status == 201, data
        assert (data["user"]["name"], data["user"]["email"]) == (sql_name, "o'brien+x@example.com")

        # Direction overrides and control characters are dropped; Arabic presentation forms and
        # emoji (4-byte UTF-8) survive as text.
        status, data, _ = await post(served, "/api/auth/register", form(name="\u202eأحمد\u0000 \u200f🚀 ﻻ"))
        assert status == 201, data
        assert data["user"]["name"] == "أحمد \u200f🚀 لا"

        refused = [
            form(email="аdmin@example.com"),  # Cyrillic а
            form(email="' OR 1=1 --@example.com"),
            form(email="x" * 300 + "@example.com"),
            form(phone="+965 9999 9999; DROP TABLE users"),
            form(phone="9" * 5000),
            form(name="a" * 10_000),
            form(password="p" * 60_000),
        ]
        for body in refused:
            status, data, _ = await post(served, "/api/auth/register", body)
            assert status == 422, data
            assert set(field_codes(data)) <= {"email", "phone", "name", "password"}
        async with served.gateway.database.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(users)) == 2
            assert await conn.scalar(sa.select(sa.func.count()).select_from(api_keys)) == 0


async def test_concurrent_registrations_with_one_email_create_one_user(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        email = unique_email()
        answers = await asyncio.gather(*(post(served, "/api/auth/register", form(email=email)) for _ in range(6)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [201, 422, 422, 422, 422, 422]
        assert all(field_codes(data) == {"email": "email_taken"} for status, data, _ in answers if status == 422)
        assert len(await user_rows(served)) == 1
        async with served.gateway.database.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(accounts)) == 1


def assert_too_many(status: int, data: Any, resp: Any, window: int) -> None:
    assert status == 429, data
    assert (data["error"]["type"], data["error"]["code"]) == ("rate_limit_error", "too_many_attempts")
    assert 1 <= int(resp.headers["Retry-After"]) <= window


@asynccontextmanager
async def from_ip(served: Any, ip: str) -> AsyncIterator[Any]:
    """A client whose connections come from another loopback address, so the gateway sees another IP."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0))) as http:
        yield Served(served.app, served.url, http)


async def test_probing_for_taken_emails_is_limited_per_ip(ollama: Any, db_url: str, serve: Any) -> None:
    limits = {"register_attempts_per_ip": 10, "register_attempts_per_name": 1000}
    async with serve(auth_config(ollama, db_url, **limits)) as served:
        assert (await post(served, "/api/auth/register", form(email="owner@example.com")))[0] == 201
        # 200 probes as fast as they go: before, every one answered 201 or 422 `email_taken` in 0.39 s.
        probes = [form(email="owner@example.com" if i % 2 else unique_email()) for i in range(200)]
        answers = await asyncio.gather(*(post(served, "/api/auth/register", body) for body in probes))
        statuses = [status for status, _, _ in answers]
        assert len(statuses) - statuses.count(429) == 9, statuses
        for status, data, resp in answers:
            if status == 429:
                assert_too_many(status, data, resp, window=3600)
        # Another address is not held up by this one.
        async with from_ip(served, "127.0.0.2") as other:
            assert (await post(other, "/api/auth/register", form()))[0] == 201
        assert len(await user_rows(served)) <= 11


async def test_probing_one_email_or_phone_is_limited_across_ips(ollama: Any, db_url: str, serve: Any) -> None:
    limits = {"register_attempts_per_ip": 1000, "register_attempts_per_name": 3}
    async with serve(auth_config(ollama, db_url, **limits)) as served:
        owner = form(email="owner@example.com", phone="+96598765432")
        assert (await post(served, "/api/auth/register", owner))[0] == 201
        spellings = ["OWNER@example.com", "ｏｗｎｅｒ@example.com", "owner@EXAMPLE.com"]
        for i, spelling in enumerate(spellings):
            async with from_ip(served, f"127.0.0.{10 + i}") as prober:
                status, data, resp = await post(prober, "/api/auth/register", form(email=spelling))
            if i < 2:
                assert (status, field_codes(data)) == (422, {"email": "email_taken"})
            else:
                assert_too_many(status, data, resp, window=3600)
        for i, spelling in enumerate(["98765432", "+965 9876 5432", "٩٨٧٦٥٤٣٢"]):
            async with from_ip(served, f"127.0.0.{20 + i}") as prober:
                status, data, resp = await post(prober, "/api/auth/register", form(phone=spelling))
            if i < 2:
                assert (status, field_codes(data)) == (422, {"phone": "phone_taken"})
            else:
                assert_too_many(status, data, resp, window=3600)


async def test_a_case_folded_variant_of_an_email_is_taken(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        assert (await post(served, "/api/auth/register", form(email="boss@example.com")))[0] == 201
        for variant in ("BOSS@EXAMPLE.COM", "boß@example.com", "BOẞ@example.com", "boſs@example.com"):
            status, data, _ = await post(served, "/api/auth/register", form(email=variant))
            assert (status, field_codes(data)) == (422, {"email": "email_taken"}), variant
        # Accented letters are not folded away: such an address is refused, never taken as boss's.
        status, data, _ = await post(served, "/api/auth/register", form(email="bóss@example.com"))
        assert (status, field_codes(data)) == (422, {"email": "email_invalid"})
        assert len(await user_rows(served)) == 1


WEAK = [
    "password",
    "12345678",
    "qwertyuiop",
    "1q2w3e4r5t",
    "P@ssw0rd1",
    "iloveyou123",
    "Password2026",
    "aaaaaaaaaaaa",
    "abcd1234abcd",
    "zaq1@WSX",
    "x" * 200,
]


async def test_common_and_pattern_passwords_are_refused(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        for weak in WEAK:
            status, data, _ = await post(served, "/api/auth/register", form(password=weak))
            assert status == 422, (weak, data)
            assert (data["error"]["code"], data["error"]["param"]) == ("password_too_weak", "password")
            assert field_codes(data) == {"password": "password_too_weak"}
        assert await user_rows(served) == []
        assert (await post(served, "/api/auth/register", form()))[0] == 201


async def test_passwords_made_of_the_email_or_phone_are_refused(ollama: Any, db_url: str, serve: Any) -> None:
    email, phone = "sara.ali.1990@example.com", "+96599887766"
    personal = [
        email,
        "SARA.ALI.1990@EXAMPLE.COM",
        "sara.ali.1990",
        "Sara.Ali.1990!!",
        "my sara.ali.1990@example.com pw",
        "99887766",
        "+965 9988 7766",
        "96599887766",
        "call me on ٩٩٨٨٧٧٦٦ please",
    ]
    async with serve(auth_config(ollama, db_url)) as served:
        for password in personal:
            body = form(email=email, phone=phone, password=password)
            status, data, _ = await post(served, "/api/auth/register", body)
            assert status == 422, (password, data)
            assert field_codes(data) == {"password": "password_personal"}, password
        assert await user_rows(served) == []
        user = await register_user(served, email=email, phone=phone)
        # Changing to such a password is refused the same way, naming the field.
        for new, code in (("99887766 forever", "password_personal"), ("password123", "password_too_weak")):
            async with served.request(
                "POST",
                "/api/me/password",
                headers=user.headers,
                json={"current_password": PASSWORD, "new_password": new},
            ) as resp:
                data = await resp.json()
                assert (resp.status, field_codes(data)) == (422, {"new_password": code}), new


def test_the_scorer_sees_a_bounded_prefix_so_no_password_is_slow_to_score() -> None:
    # zxcvbn tries every l33t reading of the symbols present over every substring: 40 characters of its
    # l33t symbols took 0.8 s, 72 took 1.3 s. The scored prefix bounds both.
    crafted = ["4@8({[<369!|17$5+%20" * 50, "|a1a7a$a5a+a" * 80, "p{<|17+word" * 90]
    for password in crafted:
        prefix = strength.scored(password)
        assert len(prefix) <= strength.SCORED_MAX
        assert len(set(prefix) & set("4@8({[<369!|17$5+%20")) <= strength.L33T_MAX
        started = time.perf_counter()
        strength.weakness(password, email="sara@example.com", phone="+96599887766", min_score=3)
        assert time.perf_counter() - started < 0.25, password[:20]
    # A long password made of a weak start is still refused.
    for weak in ("qwerty123" * 60, "password1234@8({[<369!|17$5+%20" * 10):
        assert strength.weakness(weak, email=None, phone=None, min_score=3) == "password_too_weak", weak[:20]


async def test_a_weak_password_reveals_nothing_and_costs_only_the_ips_place(
    ollama: Any, db_url: str, serve: Any
) -> None:
    limits = {"register_attempts_per_ip": 6, "register_attempts_per_name": 2}
    async with serve(auth_config(ollama, db_url, **limits)) as served:
        assert (await post(served, "/api/auth/register", form(email="owner@example.com")))[0] == 201
        # With a weak password nothing is looked up: a taken email is not named, so it cannot be probed.
        status, data, _ = await post(served, "/api/auth/register", form(email="owner@example.com", password="12345678"))
        assert (status, field_codes(data)) == (422, {"password": "password_too_weak"})
        # Someone trying passwords for their own address is not locked out of it (2 a window),
        email = unique_email()
        for weak in ("password", "qwertyuiop", "iloveyou123"):
            status, data, _ = await post(served, "/api/auth/register", form(email=email, password=weak))
            assert (status, field_codes(data)) == (422, {"password": "password_too_weak"})
        assert (await post(served, "/api/auth/register", form(email=email)))[0] == 201
        # but the scorer's work counts against the IP.
        status, data, resp = await post(served, "/api/auth/register", form(password="12345678"))
        assert_too_many(status, data, resp, window=3600)
