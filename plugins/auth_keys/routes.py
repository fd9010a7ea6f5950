"""The portal's JSON API for accounts and keys: /api/auth/*, /api/me, /api/keys."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.errors import Forbidden, GatewayError, NotFound
from edge.inputs import FieldError, Form, read_json
from edge.security import over_https
from edge.services import CREDITS, PREFERENCES, TEAMS, TeamJoin
from plugins.auth_keys import inputs, strength
from plugins.auth_keys.guards import check_csrf
from plugins.auth_keys.inputs import invalid
from plugins.auth_keys.sessions import COOKIE_NAME
from plugins.auth_keys.throttle import Ticket, ip_bucket
from plugins.auth_keys.users import Taken

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from plugins.auth_keys import Plugin

NO_STORE = {"cache-control": "no-store"}
# What `PATCH /api/me` changes.
PROFILE_FIELDS = ("name", "locale", "notifications")
NOTIFICATIONS_OFF = FieldError(
    "notifications_unavailable", "WhatsApp notifications are not enabled on this gateway, so there is nothing to set."
)
# Its "login failed" lines are what fail2ban's filter (config/fail2ban/filter.d/resayil-portal.conf) matches.
auth_log = logging.getLogger("resayil.auth")


def build(plugin: Plugin) -> list[BaseRoute]:
    api = AuthApi(plugin)
    return [
        Route("/api/auth/register", api.register, methods=["POST"]),
        Route("/api/auth/login", api.login, methods=["POST"]),
        Route("/api/auth/logout", api.logout, methods=["POST"]),
        Route("/api/me", api.me, methods=["GET"]),
        Route("/api/me", api.update_me, methods=["PATCH"]),
        Route("/api/me/password", api.change_password, methods=["POST"]),
        Route("/api/keys", api.list_keys, methods=["GET"]),
        Route("/api/keys", api.create_key, methods=["POST"]),
        Route("/api/keys/{key_id:int}", api.update_key, methods=["PATCH"]),
        Route("/api/keys/{key_id:int}", api.revoke_key, methods=["DELETE"]),
    ]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def login_windows(login: str, ip: str) -> dict[str, str]:
    """The windows one login attempt counts in, by kind: `name_ip` (this login from this client's IP bucket:
    the small limit, so one address locks out only itself), `name` (this login from every address: the
    larger limit a distributed guesser meets) and `ip`. The name is the normal form of what was typed,
    never the account it names: what was done to an email never shows in the answers for the phone, and an
    unknown login counts exactly like a known one."""
    bucket = ip_bucket(ip)
    # An IP bucket has no space in it, so the first space separates the two parts unambiguously.
    return {"name_ip": f"{bucket} {login}", "name": login, "ip": bucket}


def wrong_login() -> GatewayError:
    return GatewayError("The login or the password is not correct.", status=401, code="invalid_credentials")


class AuthApi:
    """The route handlers; each reads its body through the gateway's one size-capped reader."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    async def _form(self, request: Request) -> Form:
        return inputs.form(await read_json(request))

    def _secure(self, request: Request) -> bool:
        return over_https(request.scope, public_url=self.plugin.gateway.config.server.public_url)

    async def _weak(self, form: Form, field: str, password: str | None, *, email: Any, phone: Any) -> bool:
        """Whether the new password is refused (then the form names `field`)."""
        if password is None:
            return False
        s = self.plugin.settings
        code = await strength.check(password, email=email, phone=phone, min_score=s.password_min_score)
        if code is not None:
            form.fail(field, code)
        return code is not None

    async def _verified(self, ticket: Ticket) -> None:
        # The right password: this attempt stops counting against the IP and the name, and the name starts
        # afresh from this address (its failures were the user's own typos). Failures from other addresses
        # stay counted: a user logging in must not hand a distributed guesser a fresh allowance.
        await self.plugin.throttle.give_back(ticket, kinds=("ip", "name"))
        await self.plugin.throttle.forget(ticket, kind="name_ip")

    def _signed_in(self, request: Request, status: int, body: dict[str, Any], token: str, csrf: str) -> Response:
        response = JSONResponse({**body, "csrf_token": csrf}, status_code=status, headers=NO_STORE)
        response.set_cookie(
            COOKIE_NAME,
            token,
            max_age=self.plugin.settings.session_absolute_seconds,
            path="/",
            secure=self._secure(request),
            httponly=True,
            samesite="lax",
        )
        return response

    async def _start_session(
        self, request: Request, *, user_id: int, status: int, extra: dict[str, Any] | None = None
    ) -> Response:
        p = self.plugin
        token, csrf = await p.sessions.create(
            user_id=user_id,
            ip=client_ip(request),
            user_agent=request.headers.get("user-agent"),
            replacing=request.cookies.get(COOKIE_NAME),
        )
        profile = await p.users.profile(user_id)
        assert profile is not None
        return self._signed_in(request, status, {"user": profile, **(extra or {})}, token, csrf)

    async def register(self, request: Request) -> Response:
        p = self.plugin
        form = await self._form(request)
        name = form.take("name", inputs.name)
        email = form.take("email", inputs.email)
        phone = form.take("phone", inputs.phone)
        password = form.take("password", inputs.password)
        locale = form.take("locale", inputs.locale)
        invitation = form.take("invitation", inputs.invitation)
        teams = p.gateway.maybe(TEAMS)
        if invitation is not None and teams is None:
            form.fail("invitation", "invitation_not_found")
        if email is not None or phone is not None:
            # Counted before anything is scored or looked up, so `email_taken`/`phone_taken` cannot be
            # probed in bulk, nor the password scorer kept busy.
            ticket = await p.register_throttle.take(ip=client_ip(request), email=email, phone=phone)
            if await self._weak(form, "password", password, email=email, phone=phone):
                # Nothing was looked up, so nothing was learnt about the email or phone: only the IP's place
                # stays used, and someone trying passwords does not lock their own address out.
                await p.register_throttle.give_back(ticket, kinds=("email", "phone"))
            else:
                for field, code in (await p.users.taken(email=email, phone=phone)).items():
                    form.fail(field, code)
        form.check()
        tier = p.settings.registration_tier
        joined: list[TeamJoin] = []

        async def announce(conn: AsyncConnection, *, user_id: int, account_id: int) -> None:
            registration = {
                "user_id": user_id,
                "account_id": account_id,
                "user_name": name,
                "email": email,
                "phone": phone,
                "locale": locale,
                "tier": tier,
            }
            await p.publish_registered(conn, registration)
            if invitation is not None and teams is not None:
                # Into the team in the same transaction: a refused invitation (used, revoked, expired,
                # someone else's) raises its answer here, and nobody is registered.
                ip = client_ip(request) or None
                joined.append(
                    await teams.join_registering(
                        conn, token=invitation, user_id=user_id, email=email, phone=phone, ip=ip
                    )
                )

        try:
            user_id, _ = await p.users.create(
                name=name,
                email=email,
                phone=phone,
                password_hash=await p.passwords.hash(password),
                locale=locale,
                tier=tier,
                announce=announce,
            )
        except Taken as exc:
            raise invalid(exc.fields) from None
        team = {"team": {"account_id": joined[0].account_id, "role": joined[0].role}} if joined else None
        return await self._start_session(request, user_id=user_id, status=201, extra=team)

    async def login(self, request: Request) -> Response:
        p = self.plugin
        form = await self._form(request)
        login = form.take("login", inputs.login)
        password = form.take("password", inputs.given_password)
        form.check()
        # The attempt counts from here, before anything is looked up or the password checked (throttle.py).
        ticket = await p.throttle.take(**login_windows(login, client_ip(request)))
        found = await p.users.credentials(login)
        # Unknown logins are checked against a dummy hash: the same answer, after the same work.
        if not await p.passwords.verify(found.password_hash if found else None, password):
            # The client's address as edge/forwarded.py determined it (the proxy's only when it is not
            # trusted); never the login typed, which is the user's, not the attacker's.
            auth_log.warning("login failed", extra={"fields": {"client_ip": client_ip(request)}})
            raise wrong_login()
        assert found is not None
        await self._verified(ticket)
        # Only after the right password: the ban is told to the user, not to whoever guesses a login.
        if found.banned_at is not None:
            raise Forbidden(
                "This account has been suspended by an administrator. Contact support to restore it.",
                code="account_banned",
            )
        if p.passwords.needs_rehash(found.password_hash):
            await p.users.set_password(user_id=found.id, password_hash=await p.passwords.hash(password))
        return await self._start_session(request, user_id=found.id, status=200)

    async def logout(self, request: Request) -> Response:
        user = await self.plugin.guards.current_user(request)
        if user is not None:
            check_csrf(request, user)
            await self.plugin.sessions.end(request.cookies.get(COOKIE_NAME, ""))
        response = Response(status_code=204, headers=NO_STORE)
        response.delete_cookie(COOKIE_NAME, path="/", secure=self._secure(request), httponly=True, samesite="lax")
        return response

    async def _profile(self, user_id: int) -> dict[str, Any]:
        """The user as the portal shows them, with their notification choices when notify is enabled."""
        profile = await self.plugin.users.profile(user_id)
        assert profile is not None
        preferences = self.plugin.gateway.maybe(PREFERENCES)
        if preferences is not None:
            profile["notifications"] = (await preferences.current(user_id)).as_json()
        return profile

    async def me(self, request: Request) -> Response:
        user = await self.plugin.guards.require_user(request)
        profile = await self._profile(user.user_id)
        return JSONResponse({"user": profile, "csrf_token": user.csrf_token}, headers=NO_STORE)

    async def update_me(self, request: Request) -> Response:
        """PATCH `name`, `locale` and `notifications` (the optional WhatsApp notices, checked and stored by
        the `PREFERENCES` service in this request's one transaction). Other fields are ignored, but a field
        spelt with other capitals (`Notifications`) is refused: ignoring it would look like a saved change."""
        p = self.plugin
        user = await self.plugin.guards.require_user(request)
        form = await self._form(request)
        data = form.data
        for key in data:
            if key not in PROFILE_FIELDS and key.casefold() in PROFILE_FIELDS:
                form.fail(key, FieldError("field_unknown", f"Unknown field; send only {', '.join(PROFILE_FIELDS)}."))
        values = {}
        if "name" in data:
            values["name"] = form.take("name", inputs.name)
        if "locale" in data:
            values["locale"] = form.take("locale", inputs.locale)
        preferences = p.gateway.maybe(PREFERENCES)
        change = None
        if "notifications" in data:
            if preferences is None:
                form.fail("notifications", NOTIFICATIONS_OFF)
            else:
                change = form.take("notifications", preferences.check)
        form.check()

        async def save_notifications(conn: AsyncConnection) -> None:
            assert preferences is not None and change is not None
            await preferences.save(conn, user_id=user.user_id, change=change)

        await p.users.update(
            user_id=user.user_id, values=values, also=save_notifications if change is not None else None
        )
        if "locale" in values:
            await p.accounts.invalidate_user(user.user_id)
        return JSONResponse({"user": await self._profile(user.user_id)})

    async def change_password(self, request: Request) -> Response:
        p = self.plugin
        user = await self.plugin.guards.require_user(request)
        form = await self._form(request)
        current = form.take("current_password", inputs.given_password)
        new = form.take("new_password", inputs.password)
        form.check()
        # Guessing the current password here counts against the same allowance as logging in with the email.
        ticket = await p.throttle.take(**login_windows(user.email, client_ip(request)))
        if not await p.passwords.verify(await p.users.password_hash(user.user_id), current):
            raise invalid({"current_password": "password_incorrect"})
        await self._verified(ticket)
        # Scored only now, so the scorer's CPU is never spent on a request that has not proved itself.
        if await self._weak(form, "new_password", new, email=user.email, phone=user.phone):
            form.check()
        await p.users.set_password(user_id=user.user_id, password_hash=await p.passwords.hash(new))
        ended = await p.sessions.end_others(user_id=user.user_id, keep_session_id=user.session_id)
        return JSONResponse({"ok": True, "sessions_ended": ended})

    async def list_keys(self, request: Request) -> Response:
        user = await self.plugin.guards.require_user(request)
        return JSONResponse({"object": "list", "data": await self.plugin.keys.for_account(account_id=user.account_id)})

    async def create_key(self, request: Request) -> Response:
        user = await self.plugin.guards.require_user(request)
        form = await self._form(request)
        name = form.take("name", inputs.name)
        scopes = form.take("scopes", inputs.scopes)
        expires_at = form.take("expires_at", inputs.expires_at)
        limit = inputs.key_limit(form)
        form.check()
        key, secret = await self.plugin.keys.create(
            account_id=user.account_id,
            user_id=user.user_id,
            name=name,
            scopes=scopes,
            expires_at=expires_at,
            limit=limit,
        )
        return JSONResponse({"key": key, "secret": secret}, status_code=201, headers=NO_STORE)

    async def update_key(self, request: Request) -> Response:
        """PATCH a key's spend limit (`limit_milli`, `limit_period`); every worker applies it to the key's
        next request."""
        user = await self.plugin.guards.require_user(request)
        key_id = _key_id(request)
        form = await self._form(request)
        form.only(("limit_milli", "limit_period"))
        current = await self.plugin.keys.limit(key_id=key_id, account_id=user.account_id) if key_id else None
        if current is None:
            raise _no_key()
        limit_milli, limit_period = inputs.key_limit(form, current=current)
        form.check()
        key = await self.plugin.keys.set_limit(
            key_id=key_id, account_id=user.account_id, limit_milli=limit_milli, limit_period=limit_period
        )
        if key is None:
            raise _no_key()
        await self.plugin.accounts.invalidate_key(key_id)
        credits = self.plugin.gateway.maybe(CREDITS)
        if limit_milli is not None and credits is not None:
            # After the invalidation: what the key spent unlimited until then counts against the new limit.
            await credits.recount_spend(account_id=user.account_id, kind="key", scope_id=key_id)
        return JSONResponse({"key": key})

    async def revoke_key(self, request: Request) -> Response:
        user = await self.plugin.guards.require_user(request)
        key_id = _key_id(request)
        key = await self.plugin.keys.revoke(key_id=key_id, account_id=user.account_id) if key_id else None
        if key is None:
            raise _no_key()
        await self.plugin.accounts.invalidate_key(key_id)
        return JSONResponse({"key": key})


def _key_id(request: Request) -> int:
    """The path's key id, 0 for one no key can have (past BIGINT)."""
    key_id = int(request.path_params["key_id"])
    return key_id if key_id < 2**63 else 0


def _no_key() -> NotFound:
    # Another account's key answers exactly like a key that does not exist.
    return NotFound("There is no API key with this id.", code="key_not_found")
