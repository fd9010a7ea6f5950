"""The portal's guards, owned by auth_keys, with a core default (`NoGuards`) that answers 401."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from edge.errors import Forbidden, GatewayError
from edge.services.keys import Service


@dataclass(frozen=True, slots=True)
class PortalUser:
    """The logged-in user of a portal request, with the account that pays. `plan_expires_at` is Unix time."""

    user_id: int
    account_id: int
    role: str
    locale: str
    name: str
    email: str
    phone: str
    tier: str
    plan_expires_at: int | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Guards(Protocol):
    async def current_user(self, request: Request) -> PortalUser | None:
        """The logged-in user, or None; no CSRF check (for reads that work logged out too)."""
        ...

    async def require_user(self, request: Request) -> PortalUser:
        """The logged-in user; 401 `not_authenticated` without a live session, 403 `csrf_failed` for a
        state-changing method whose X-CSRF-Token does not match the session's."""
        ...

    async def require_admin(self, request: Request) -> PortalUser:
        """Like `require_user`, and 403 `admin_required` unless the user is an admin."""
        ...


def not_logged_in() -> GatewayError:
    return GatewayError("Log in to continue.", status=401, code="not_authenticated")


def admin_required() -> Forbidden:
    return Forbidden("This needs an administrator.", code="admin_required")


class NoGuards:
    """The core's guards when no plugin provides them: nobody can log in, so every guarded route answers
    401 `not_authenticated`, exactly what it answers a caller without a session when a plugin does."""

    async def current_user(self, request: Request) -> PortalUser | None:
        return None

    async def require_user(self, request: Request) -> PortalUser:
        raise not_logged_in()

    async def require_admin(self, request: Request) -> PortalUser:
        raise not_logged_in()


GUARDS: Service[Guards] = Service("guards", default=NoGuards())
