"""Login sessions: cookies, CSRF, fixation, expiry, logout, profile and password changes, guards."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.gateway import Gateway
from edge.hookspecs import hookimpl
from edge.services import GUARDS
from plugins.auth_keys.tables import sessions
from tests.support.clock import ManualClock
from tests.support.inputs import field_codes
from tests.support.portal import PASSWORD, LoggedIn, auth_config, bearer, create_key, login, register_user


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"resayil_session={token}"}


async def call(served: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with served.request(method, path, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


class AdminProbe:
    """Routes guarded the way other plugins guard theirs."""

    name = "admin_probe"

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        async def who(request: Request) -> Response:
            user = await gateway.service(GUARDS).require_user(request)
            return JSONResponse({"user_id": user.user_id, "tier": user.tier, "role": user.role})

        async def admin_only(request: Request) -> Response:
            user = await gateway.service(GUARDS).require_admin(request)
            return JSONResponse({"admin": user.email})

        return [
            Route("/api/probe/who", who, methods=["GET", "POST"]),
            Route("/api/probe/admin", admin_only, methods=["GET", "POST"]),
        ]


async def test_login_by_email_or_phone_issues_a_new_session_each_time(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        status, body, by_email = await login(served, login=user.email.upper())
        assert status == 200, body
        assert body["user"]["id"] == user.user_id and body["csrf_token"]
        local = user.phone.removeprefix("+965")
        status, body, by_phone = await login(served, login=f"{local[:4]}-{local[4:]}")
        assert status == 200, body
        assert len({user.session, by_email, by_phone}) == 3
        for token in (user.session, by_email, by_phone):
            status, me = await call(served, "GET", "/api/me", headers=cookie(token or ""))
            assert status == 200 and me["user"]["email"] == user.email


async def test_not_logged_in_is_401_in_the_error_shape(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        for headers in ({}, cookie("x"), cookie(secrets.token_urlsafe(32)), cookie("' OR 1=1 --")):
            status, body = await call(served, "GET", "/api/me", headers=headers)
            assert status == 401
            assert body["error"]["code"] == "not_authenticated"
            assert body["error"]["type"] == "authentication_error"


async def test_session_fixation_a_planted_or_old_session_never_survives_login(
    ollama: Any, db_url: str, serve: Any
) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        planted = secrets.token_urlsafe(32)
        async with served.request(
            "POST", "/api/auth/login", json={"login": user.email, "password": PASSWORD}, headers=cookie(planted)
        ) as resp:
            assert resp.status == 200
            issued = resp.cookies["resayil_session"].value
        assert issued != planted
        assert (await call(served, "GET", "/api/me", headers=cookie(planted)))[0] == 401

        # A live session presented at login is replaced, not kept alongside the new one.
        async with served.request(
            "POST", "/api/auth/login", json={"login": user.email, "password": PASSWORD}, headers=cookie(issued)
        ) as resp:
            assert resp.status == 200
            fresh = resp.cookies["resayil_session"].value
        assert fresh != issued
        assert (await call(served, "GET", "/api/me", headers=cookie(issued)))[0] == 401
        assert (await call(served, "GET", "/api/me", headers=cookie(fresh)))[0] == 200


async def test_state_changing_calls_need_the_sessions_csrf_token(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url), plugins=[AdminProbe()]) as served:
        user = await register_user(served)
        other = await register_user(served)
        no_token = cookie(user.session)
        wrong = {**no_token, "X-CSRF-Token": other.csrf_token}
        attempts = [
            ("POST", "/api/keys", {"json": {"name": "k"}}),
            ("PATCH", "/api/me", {"json": {"name": "Mallory"}}),
            ("POST", "/api/me/password", {"json": {"current_password": PASSWORD, "new_password": "n" * 12}}),
            ("POST", "/api/probe/who", {}),
            ("POST", "/api/auth/logout", {}),
        ]
        for headers in (no_token, wrong):
            for method, path, kwargs in attempts:
                status, body = await call(served, method, path, headers=headers, **kwargs)
                assert status == 403, (method, path, body)
                assert body["error"]["code"] == "csrf_failed"
        # Nothing changed: no key, same name, same password, still logged in.
        status, keys = await call(served, "GET", "/api/keys", headers=no_token)
        assert status == 200 and keys["data"] == []
        status, me = await call(served, "GET", "/api/me", headers=no_token)
        assert me["user"]["name"] == "Test User"
        assert (await login(served, login=user.email))[0] == 200
        # Reading needs no token; with the right token the same calls work.
        assert (await call(served, "GET", "/api/probe/who", headers=no_token))[0] == 200
        status, body = await call(served, "POST", "/api/probe/who", headers=user.headers)
        assert (status, body["user_id"], body["tier"]) == (200, user.user_id, "basic")
        assert (await call(served, "PATCH", "/api/me", headers=user.headers, json={"name": "Sara"}))[0] == 200


async def test_require_admin(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url), plugins=[AdminProbe()]) as served:
        user = await register_user(served)
        admin = await register_user(served, admin=True)
        status, body = await call(served, "GET", "/api/probe/admin", headers=user.headers)
        assert (status, body["error"]["code"]) == (403, "admin_required")
        assert (await call(served, "GET", "/api/probe/admin"))[0] == 401
        status, body = await call(served, "GET", "/api/probe/admin", headers=admin.headers)
        assert (status, body) == (200, {"admin": admin.email})
        status, body = await call(served, "POST", "/api/probe/admin", headers=cookie(admin.session))
        assert (status, body["error"]["code"]) == (403, "csrf_failed")


async def test_profile_update(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        status, body = await call(
            served,
            "PATCH",
            "/api/me",
            headers=user.headers,
            json={"name": "  Sara   Ali ", "locale": "EN", "email": "ignored@example.com"},
        )
        assert status == 200, body
        assert (body["user"]["name"], body["user"]["locale"], body["user"]["email"]) == ("Sara Ali", "en", user.email)
        status, body = await call(served, "GET", "/api/me", headers=user.headers)
        assert (body["user"]["name"], body["user"]["locale"]) == ("Sara Ali", "en")
        status, body = await call(served, "PATCH", "/api/me", headers=user.headers, json={"locale": "de", "name": ""})
        assert status == 422
        assert field_codes(body) == {"name": "name_required", "locale": "locale_invalid"}


async def test_logout_ends_the_session_and_clears_the_cookie(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        async with served.request("POST", "/api/auth/logout", headers=user.headers) as resp:
            assert resp.status == 204
            set_cookie = resp.headers["Set-Cookie"]
        assert set_cookie.startswith('resayil_session=""') and "Max-Age=0" in set_cookie
        assert (await call(served, "GET", "/api/me", headers=user.headers))[0] == 401
        # Logging out again (or without a session) is harmless.
        async with served.request("POST", "/api/auth/logout") as resp:
            assert resp.status == 204


async def test_password_change_needs_the_current_one_and_ends_other_sessions(
    ollama: Any, db_url: str, serve: Any
) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        status, _, other_session = await login(served, login=user.email)
        assert status == 200 and other_session
        new = "a brand new passphrase"
        status, body = await call(
            served,
            "POST",
            "/api/me/password",
            headers=user.headers,
            json={"current_password": "wrong password", "new_password": new},
        )
        assert (status, field_codes(body)) == (422, {"current_password": "password_incorrect"})
        status, body = await call(
            served,
            "POST",
            "/api/me/password",
            headers=user.headers,
            json={"current_password": PASSWORD, "new_password": "short"},
        )
        assert (status, field_codes(body)) == (422, {"new_password": "password_too_short"})
        assert (await call(served, "GET", "/api/me", headers=cookie(other_session)))[0] == 200

        status, body = await call(
            served,
            "POST",
            "/api/me/password",
            headers=user.headers,
            json={"current_password": PASSWORD, "new_password": new},
        )
        assert (status, body) == (200, {"ok": True, "sessions_ended": 1})
        assert (await call(served, "GET", "/api/me", headers=cookie(other_session)))[0] == 401
        assert (await call(served, "GET", "/api/me", headers=user.headers))[0] == 200
        assert (await login(served, login=user.email))[0] == 401
        assert (await login(served, login=user.email, password=new))[0] == 200


async def test_idle_expiry(ollama: Any, db_url: str, serve: Any) -> None:
    config = auth_config(ollama, db_url, session_idle_seconds=2)
    clock = ManualClock()
    async with serve(config, clock=clock) as served:
        user = await register_user(served)
        await register_user(served)
        assert (await call(served, "GET", "/api/me", headers=user.headers))[0] == 200
        clock.advance(3.2)
        assert (await call(served, "GET", "/api/me", headers=user.headers))[0] == 401
        assert await session_count(served) == 1
    # Sessions nobody comes back for are purged when the gateway starts.
    async with serve(config, clock=clock) as served:
        assert await session_count(served) == 0


async def session_count(served: Any) -> int:
    async with served.gateway.database.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(sessions)) or 0)


async def test_absolute_expiry_despite_activity(ollama: Any, db_url: str, serve: Any) -> None:
    clock = ManualClock()
    async with serve(auth_config(ollama, db_url, session_absolute_seconds=3), clock=clock) as served:
        user = await register_user(served)
        for _ in range(2):
            assert (await call(served, "GET", "/api/me", headers=user.headers))[0] == 200
            clock.advance(1)
        clock.advance(2.2)
        assert (await call(served, "GET", "/api/me", headers=user.headers))[0] == 401


async def test_cookie_is_not_secure_when_the_public_url_is_http(ollama: Any, db_url: str, serve: Any) -> None:
    config = auth_config(ollama, db_url, server={"public_url": "http://127.0.0.1:8000"})
    async with serve(config) as served:
        async with served.request(
            "POST",
            "/api/auth/register",
            json={
                "name": "n",
                "email": "plain@example.com",
                "phone": "+96591234567",
                "password": PASSWORD,
            },
        ) as resp:
            assert resp.status == 201
            set_cookie = resp.headers["Set-Cookie"].lower()
        assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "secure" not in set_cookie


async def test_cookie_is_secure_when_the_request_came_over_https(ollama: Any, db_url: str, serve: Any) -> None:
    # The public URL says http (say, not configured yet), but the TLS proxy in front says https.
    config = auth_config(ollama, db_url, server={"public_url": "http://127.0.0.1:8000"})
    https = {"X-Forwarded-Proto": "https"}
    body = {"name": "n", "email": "tls@example.com", "phone": "+96591234568", "password": PASSWORD}
    async with serve(config) as served:
        async with served.request("POST", "/api/auth/register", json=body, headers=https) as resp:
            assert resp.status == 201
            registered = resp.headers["Set-Cookie"]
        async with served.request(
            "POST", "/api/auth/login", json={"login": body["email"], "password": PASSWORD}, headers=https
        ) as resp:
            assert resp.status == 200
            logged_in = resp.headers["Set-Cookie"]
            data = await resp.json()
            token = resp.cookies["resayil_session"].value
        headers = {**https, "Cookie": f"resayil_session={token}", "X-CSRF-Token": data["csrf_token"]}
        async with served.request("POST", "/api/auth/logout", headers=headers) as resp:
            assert resp.status == 204
            logged_out = resp.headers["Set-Cookie"]
    for set_cookie in (registered, logged_in, logged_out):
        attributes = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")}
        assert {"secure", "httponly"} <= attributes, set_cookie


async def test_no_password_session_or_key_secret_in_logs_or_errors(
    ollama: Any, db_url: str, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    async with serve(auth_config(ollama, db_url)) as served:
        user: LoggedIn = await register_user(served, password="hunter2-secret-pass")
        secret = await create_key(served, user)
        for path, json in (
            ("/api/auth/login", {"login": user.email, "password": "hunter2-wrong-pass"}),
            ("/api/auth/login", {"login": user.email, "password": user.password}),
            ("/api/auth/register", {"email": user.email, "password": user.password}),
        ):
            async with served.request("POST", path, json=json) as resp:
                bodies.append(await resp.text())
        for headers in (bearer(secret), bearer(secret + "x"), {"Authorization": secret}):
            async with served.request(
                "POST", "/v1/chat/completions", headers=headers, json={"model": "nope", "messages": []}
            ) as resp:
                bodies.append(await resp.text())
        async with served.request("GET", "/api/me", headers=cookie(user.session + "x")) as resp:
            bodies.append(await resp.text())
    logged = caplog.text + "\n".join(r.getMessage() + str(getattr(r, "fields", "")) for r in caplog.records)
    for secret_text in (
        "hunter2-secret-pass",
        "hunter2-wrong-pass",
        user.session,
        user.csrf_token,
        secret,
        secret[12:],
    ):
        assert secret_text not in logged
        assert all(secret_text not in body for body in bodies)
