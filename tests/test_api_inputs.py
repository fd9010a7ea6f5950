"""Hostile bodies against every plugin's /api routes: one body limit (`api.max_body_bytes`), one 422 shape
(`edge/inputs.py`), one error shape for everything else, on SQLite and MariaDB. Nothing a refused call sent
is stored."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.routing import Route

from plugins.auth_keys.tables import accounts, api_keys, users
from plugins.credits.tables import ledger
from tests.conftest import base_config
from tests.support.inputs import assert_one_shape, field_codes
from tests.support.portal import auth_plugin_entry, register_user

LIMIT = 4096
JSON = {"content-type": "application/json"}


def config(ollama: Any, db_url: str, redis_url: str) -> dict[str, Any]:
    """Every plugin with /api routes, and a small body limit so the oversized bodies stay cheap."""
    cfg = base_config(
        ollama_url=ollama.url,
        database_url=db_url,
        redis_url=redis_url,
        plugins=[auth_plugin_entry(), {"name": "tiers"}, {"name": "credits"}, {"name": "failover"}],
    )
    cfg["api"] = {"max_body_bytes": LIMIT}
    return cfg


async def send(served: Any, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    """(status, body) of one call; a failed call's answer must be JSON (a successful one may be CSV)."""
    async with served.request(method, path, data=body, headers={**JSON, **headers}) as resp:
        text = await resp.text()
        assert "Traceback" not in text and "<html" not in text.lower(), text[:300]
        if resp.status < 400 and resp.content_type != "application/json":
            return resp.status, text
        assert resp.content_type == "application/json", (method, path, resp.status, text[:300])
        return resp.status, orjson.loads(text) if text else None


async def refused(served: Any, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    status, answer = await send(served, method, path, body, headers)
    assert status >= 400, (method, path, status, answer)
    assert_one_shape(answer, status=status)
    return status, answer


def nested(depth: int) -> bytes:
    return b'{"name": ' + b"[" * depth + b"]" * depth + b"}"


async def over_the_limit(*, stall: asyncio.Event) -> AsyncIterator[bytes]:
    """A chunked body (no Content-Length) past the limit that then never ends: it must be refused while read."""
    for _ in range(LIMIT // 512 + 2):
        yield b" " * 512
    await stall.wait()


def body_routes(account_id: int) -> list[tuple[str, str]]:
    """Every POST/PATCH route that reads a body, with a real account in the path."""
    return [
        ("POST", "/api/auth/register"),
        ("POST", "/api/auth/login"),
        ("PATCH", "/api/me"),
        ("POST", "/api/me/password"),
        ("POST", "/api/keys"),
        ("POST", f"/api/admin/accounts/{account_id}/credits"),
        ("PATCH", f"/api/admin/accounts/{account_id}"),
    ]


async def stored(served: Any, account_id: int) -> tuple[int, int, int, str]:
    """(users, keys, ledger rows, the account's tier): what a refused call must not have changed."""
    async with served.gateway.database.connect() as conn:
        user_count = (await conn.execute(sa.select(sa.func.count()).select_from(users))).scalar_one()
        key_count = (await conn.execute(sa.select(sa.func.count()).select_from(api_keys))).scalar_one()
        entries = (await conn.execute(sa.select(sa.func.count()).select_from(ledger))).scalar_one()
        tier = (await conn.execute(sa.select(accounts.c.tier).where(accounts.c.id == account_id))).scalar_one()
    return user_count, key_count, entries, tier


async def test_oversized_nested_and_non_object_bodies_get_the_one_shape_on_every_body_route(
    ollama: Any, db_url: str, redis_url: str, serve: Any
) -> None:
    async with serve(config(ollama, db_url, redis_url)) as served:
        admin = await register_user(served, admin=True)
        before = await stored(served, admin.account_id)
        for method, path in body_routes(admin.account_id):
            big = b'{"name": "' + b"x" * LIMIT + b'"}'
            status, answer = await refused(served, method, path, big, admin.headers)
            assert (status, answer["error"]["code"]) == (413, "request_too_large"), (path, answer)

            stall = asyncio.Event()
            async with asyncio.timeout(10):  # answered while the body is still coming, not after it ends
                status, answer = await refused(served, method, path, over_the_limit(stall=stall), admin.headers)
            stall.set()
            assert (status, answer["error"]["code"]) == (413, "request_too_large"), (path, answer)

            for raw in (nested(2000), b"{nope", b"[1, 2]", b'"text"', b"12", b'{"name": "\\ud800"}', b"1e400"):
                status, answer = await refused(served, method, path, raw, admin.headers)
                assert (status, answer["error"]["code"]) == (422, "invalid_json"), (path, raw, answer)
        assert await stored(served, admin.account_id) == before


async def test_wrong_types_bools_huge_numbers_and_unknown_fields_name_each_field(
    ollama: Any, db_url: str, redis_url: str, serve: Any
) -> None:
    async with serve(config(ollama, db_url, redis_url)) as served:
        admin = await register_user(served, admin=True)
        credits = f"/api/admin/accounts/{admin.account_id}/credits"
        account = f"/api/admin/accounts/{admin.account_id}"
        cases: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
            ("POST", credits, {"delta_milli": True, "reason": "r"}, {"delta_milli": "delta_milli_invalid"}),
            ("POST", credits, {"delta_milli": 1.0, "reason": "r"}, {"delta_milli": "delta_milli_invalid"}),
            ("POST", credits, {"delta_milli": "5", "reason": "r"}, {"delta_milli": "delta_milli_invalid"}),
            ("POST", credits, {"delta_milli": 2**64, "reason": "r"}, {"delta_milli": "delta_milli_invalid"}),
            # Past what a double holds: not a number JSON decoding accepts at all.
            ("POST", credits, {"delta_milli": 10**400, "reason": "r"}, {}),
            ("POST", credits, {"delta_milli": 10**16, "reason": "r"}, {"delta_milli": "delta_milli_out_of_range"}),
            ("POST", credits, {"delta_milli": -(2**63), "reason": "r"}, {"delta_milli": "delta_milli_out_of_range"}),
            ("POST", credits, {"delta_milli": 0, "reason": "r"}, {"delta_milli": "delta_milli_invalid"}),
            ("POST", credits, {"delta_milli": 5, "reason": ["r"]}, {"reason": "reason_required"}),
            ("POST", credits, {"delta_milli": 5, "reason": "\u202e\u200b "}, {"reason": "reason_required"}),
            ("POST", credits, {"delta_milli": 5, "reason": "r" * 501}, {"reason": "reason_too_long"}),
            (
                "POST",
                credits,
                {"delta_milli": 5, "reason": "r", "balance_milli": 0},
                {"balance_milli": "field_unknown"},
            ),
            ("POST", credits, {}, {"delta_milli": "delta_milli_invalid", "reason": "reason_required"}),
            ("PATCH", account, {"tier": True}, {"tier": "tier_invalid"}),
            ("PATCH", account, {"tier": 1}, {"tier": "tier_invalid"}),
            ("PATCH", account, {"tier": "PRO"}, {"tier": "tier_invalid"}),
            ("PATCH", account, {"plan_expires_at": 1700000000}, {"plan_expires_at": "plan_expires_at_invalid"}),
            ("PATCH", account, {"plan_expires_at": "9" * 100}, {"plan_expires_at": "plan_expires_at_invalid"}),
            ("PATCH", account, {"tier": "pro", "account_id": 9}, {"account_id": "field_unknown"}),
            ("PATCH", account, {}, {"tier": "tier_required"}),
            (
                "POST",
                "/api/keys",
                {"name": 5, "scopes": "admin", "expires_at": True},
                {"name": "name_required", "scopes": "scopes_invalid", "expires_at": "expires_at_invalid"},
            ),
            (
                "PATCH",
                "/api/me",
                {"name": {"first": "x"}, "locale": False},
                {"name": "name_required", "locale": "locale_invalid"},
            ),
            (
                "POST",
                "/api/auth/register",
                {"name": ["x"], "email": 1, "phone": True, "password": 12345678901, "locale": "ar"},
                {
                    "name": "name_required",
                    "email": "email_invalid",
                    "phone": "phone_invalid",
                    "password": "password_too_short",
                },
            ),
            (
                "POST",
                "/api/auth/login",
                {"login": 7, "password": False},
                {"login": "login_required", "password": "password_required"},
            ),
        ]
        before = await stored(served, admin.account_id)
        for method, path, body, codes in cases:
            status, answer = await refused(served, method, path, json.dumps(body).encode(), admin.headers)
            assert (status, field_codes(answer)) == (422, codes), (path, body, answer)
        assert await stored(served, admin.account_id) == before


async def test_the_one_body_limit_is_the_gateways_setting(ollama: Any, db_url: str, redis_url: str, serve: Any) -> None:
    """Just under `api.max_body_bytes` is read and checked; one byte more is 413, for every plugin alike."""
    async with serve(config(ollama, db_url, redis_url)) as served:
        admin = await register_user(served, admin=True)
        for method, path in body_routes(admin.account_id):
            filler = b'{"padding": "' + b"x" * (LIMIT - 16) + b'"}'
            fitting = filler + b" " * (LIMIT - len(filler))
            status, answer = await send(served, method, path, fitting, admin.headers)
            assert status in (200, 401, 422), (path, answer)  # read: checked, not refused for its size
            status, answer = await refused(served, method, path, fitting + b" ", admin.headers)
            assert (status, answer["error"]["code"]) == (413, "request_too_large"), path


def _concrete(route: Route, account_id: int) -> str:
    return re.sub(r"\{[a-z_]+:int\}", str(account_id), route.path)


async def test_every_api_route_answers_a_malformed_body_in_the_one_shape(
    ollama: Any, db_url: str, redis_url: str, serve: Any
) -> None:
    """Collected from the plugins, so a new route is covered without a new test: a malformed or oversized
    body, with and without a session, and a method the route does not have, answer JSON in the one shape
    (or, where the route reads no body, its ordinary answer), never HTML or a traceback."""
    async with serve(config(ollama, db_url, redis_url)) as served:
        admin = await register_user(served, admin=True)
        calls: list[tuple[str, str]] = []
        for contributed in served.gateway.chain.call("resayil_routes", gateway=served.gateway):
            for route in contributed:
                assert isinstance(route, Route)
                path = _concrete(route, admin.account_id)
                calls += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
        # Logging out ends the admin's session: last.
        calls.sort(key=lambda call: call == ("POST", "/api/auth/logout"))
        assert len(calls) >= 14, calls
        reads_body = {*body_routes(admin.account_id)}
        for method, path in calls:
            status, answer = await refused(served, "PUT", path, b"{nope", admin.headers)
            assert (status, answer["error"]["code"]) == (405, "method_not_allowed")
            for headers in ({}, admin.headers):
                status, answer = await send(served, method, path, b"{nope", headers)
                assert status < 500, (method, path, answer)
                if status >= 400:
                    assert_one_shape(answer, status=status)
            if (method, path) in reads_body:
                status, answer = await send(served, method, path, b"{nope", admin.headers)
                assert (status, answer["error"]["code"]) == (422, "invalid_json"), (method, path)
                status, answer = await refused(served, method, path, b"{" + b" " * LIMIT + b"}", admin.headers)
                assert (status, answer["error"]["code"]) == (413, "request_too_large"), (method, path)
        assert reads_body <= set(calls)
