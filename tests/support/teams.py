"""Shared by the teams tests in files of their own: a gateway with credits, auth_keys, teams (and admin
when asked), team calls as a logged-in user, registering through an invitation's link, audit rows."""

from __future__ import annotations

from typing import Any

from tests.support.billing_admin import audit_rows
from tests.support.credits import credits_config
from tests.support.portal import PASSWORD, LoggedIn, auth_plugin_entry, session_from, unique_email, unique_phone

FUNDS = 10**9


def teams_config(ollama: Any, db_url: str, *, admin: bool = False, **teams: Any) -> dict[str, Any]:
    plugins = [auth_plugin_entry(), {"name": "teams", "settings": teams}]
    if admin:
        plugins.append({"name": "admin", "settings": {}})
    return credits_config(ollama_url=ollama.url, database_url=db_url, extra_plugins=plugins, lease_requests=0)


async def call(served: Any, method: str, path: str, user: LoggedIn, body: Any = None) -> tuple[int, dict[str, Any]]:
    async with served.request(method, path, json=body, headers=user.headers) as r:
        return r.status, await r.json()


def code(answer: tuple[int, dict[str, Any]]) -> tuple[int, str | None]:
    """(status, error code or None) of an answer."""
    status, body = answer
    error = body.get("error")
    return status, error.get("code") if isinstance(error, dict) else None


async def invite(served: Any, inviter: LoggedIn, role: str = "member", **to: str) -> dict[str, Any]:
    status, body = await call(served, "POST", "/api/team/invitations", inviter, {**to, "role": role})
    assert status == 201, body
    return body


async def register(
    served: Any, *, invitation: Any = None, email: str | None = None, phone: str | None = None
) -> tuple[int, dict[str, Any], LoggedIn | None]:
    """POST /api/auth/register (with `invitation` when given): status, body, and the user when it worked."""
    body: dict[str, Any] = {
        "name": "Invited Person",
        "email": email or unique_email(),
        "phone": phone or unique_phone(),
        "password": PASSWORD,
        "locale": "en",
    }
    if invitation is not None:
        body["invitation"] = invitation
    async with served.request("POST", "/api/auth/register", json=body) as resp:
        data = await resp.json()
        if resp.status != 201:
            return resp.status, data, None
        session = session_from(resp)
    user = data["user"]
    logged = LoggedIn(
        user_id=user["id"],
        account_id=user["account_id"],
        email=user["email"],
        phone=user["phone"],
        password=PASSWORD,
        csrf_token=data["csrf_token"],
        session=session,
        user=user,
    )
    return 201, data, logged


async def team_audit(served: Any) -> list[dict[str, Any]]:
    """The audit rows of team actions, oldest first."""
    return [row for row in await audit_rows(served) if row["action"].startswith("teams.")]


async def join(served: Any, owner: LoggedIn, user: LoggedIn, role: str = "member") -> None:
    """`user` accepts an invitation from `owner` (an owner or admin) into their team in `role`."""
    invitation = await invite(served, owner, role=role, email=user.email)
    status, joined = await call(served, "POST", f"/api/team/invitations/{invitation['token']}/accept", user)
    assert (status, joined["role"]) == (200, role), joined
