"""The portal's guards (`edge.services.Guards`), provided to every plugin: who is logged in, and may they.

    user = await gateway.service(GUARDS).require_user(request)   # 401 not logged in; 403 csrf_failed
    admin = await gateway.service(GUARDS).require_admin(request)  # and 403 admin_required unless admin

This plugin's own routes use `SessionGuards` directly, for the session's CSRF token and id.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from edge.errors import Forbidden
from edge.services import admin_required, not_logged_in
from plugins.auth_keys.sessions import COOKIE_NAME, SessionStore, SessionUser

__all__ = ["SAFE_METHODS", "SessionGuards", "SessionUser", "check_csrf"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_csrf(request: Request, user: SessionUser) -> None:
    """A state-changing call made with a session must echo the session's CSRF token."""
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get("x-csrf-token", "")
    if not hmac.compare_digest(sent.encode(), user.csrf_token.encode()):
        raise Forbidden("The X-CSRF-Token header is missing or does not match this session.", code="csrf_failed")


class SessionGuards:
    """Implements `edge.services.Guards` with this plugin's login sessions."""

    def __init__(self, *, sessions: SessionStore) -> None:
        self.sessions = sessions

    async def current_user(self, request: Request) -> SessionUser | None:
        """The logged-in user, or None; no CSRF check. Loaded once per request."""
        if hasattr(request.state, "auth_user"):
            cached: SessionUser | None = request.state.auth_user
            return cached
        user = await self.sessions.load(request.cookies.get(COOKIE_NAME))
        request.state.auth_user = user
        return user

    async def require_user(self, request: Request) -> SessionUser:
        """The logged-in user; 401 `not_authenticated` without a live session, 403 `csrf_failed` for a
        state-changing method whose X-CSRF-Token does not match the session's."""
        user = await self.current_user(request)
        if user is None:
            raise not_logged_in()
        check_csrf(request, user)
        return user

    async def require_admin(self, request: Request) -> SessionUser:
        """Like `require_user`, and 403 `admin_required` unless the user is an admin."""
        user = await self.require_user(request)
        if not user.is_admin:
            raise admin_required()
        return user
