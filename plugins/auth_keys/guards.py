"""Guards for portal routes, here and in other plugins: who is logged in, and may they do this.

user = await session_user(request)   # 401 when not logged in; 403 csrf_failed on a bad X-CSRF-Token
admin = await require_admin(request)  # 403 admin_required unless the user's role is admin
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.requests import Request

from edge.errors import Forbidden, GatewayError
from plugins.auth_keys.sessions import COOKIE_NAME, SessionUser

if TYPE_CHECKING:
    from plugins.auth_keys import Plugin

__all__ = ["SAFE_METHODS", "SessionUser", "auth_plugin", "check_csrf", "require_admin", "session_user"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PLUGIN_NAME = "auth_keys"


def auth_plugin(request: Request) -> Plugin:
    plugin = request.app.state.gateway.plugin(PLUGIN_NAME)
    if plugin is None:
        raise RuntimeError("the auth_keys plugin is not enabled")
    return plugin  # type: ignore[no-any-return]


def not_logged_in() -> GatewayError:
    return GatewayError("Log in to continue.", status=401, code="not_authenticated")


def check_csrf(request: Request, user: SessionUser) -> None:
    """A state-changing call made with a session must echo the session's CSRF token."""
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get("x-csrf-token", "")
    if not hmac.compare_digest(sent.encode(), user.csrf_token.encode()):
        raise Forbidden("The X-CSRF-Token header is missing or does not match this session.", code="csrf_failed")


async def optional_session_user(request: Request) -> SessionUser | None:
    """The logged-in user, or None; no CSRF check. Loaded once per request."""
    if hasattr(request.state, "auth_user"):
        cached: SessionUser | None = request.state.auth_user
        return cached
    user = await auth_plugin(request).sessions.load(request.cookies.get(COOKIE_NAME))
    request.state.auth_user = user
    return user


async def session_user(request: Request) -> SessionUser:
    """The logged-in user; 401 `not_authenticated` without a live session, 403 `csrf_failed` for a
    state-changing method whose X-CSRF-Token does not match the session's."""
    user = await optional_session_user(request)
    if user is None:
        raise not_logged_in()
    check_csrf(request, user)
    return user


async def require_admin(request: Request) -> SessionUser:
    """Like `session_user`, and 403 `admin_required` unless the user is an admin."""
    user = await session_user(request)
    if user.role != "admin":
        raise Forbidden("This needs an administrator.", code="admin_required")
    return user
