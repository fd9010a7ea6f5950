"""Every team, key and admin route at its permission boundary, on SQLite and MariaDB: each route the app
serves under /api/team, /api/admin and /api/keys has a row in MATRIX (a new route without one fails), and
each row's probes are called as every actor (logged out, a plain user, a banned team admin with the session
they had before the ban, each team role, a removed former member, another team's admin, a site admin) with
the session's CSRF token, plus once without it. Each answer must be exactly the status and error code the
matrix says; a refused call must leave every row of every table as it was; a granted one must show only
the caller's own team and account. MariaDB runs with Redis, SQLite with in-process state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from plugins.auth_keys.tables import api_keys
from tests.support.matrix import (
    ACTORS,
    TEAM_ROLES,
    TableReader,
    World,
    call,
    cast,
    invite,
    matrix_config,
    new_team_keys,
    ok,
    rejoin,
    served_routes,
    snapshot,
)

Want = tuple[int, str | None]
Check = Callable[[Any, World, str, Any], Awaitable[None]]
OUT: dict[str, Want] = {"anonymous": (401, "not_authenticated"), "banned": (401, "not_authenticated")}
FORBIDDEN: Want = (403, "team_forbidden")
NO_MEMBER: Want = (404, "member_not_found")
NO_KEY: Want = (404, "key_not_found")


@dataclass(frozen=True)
class Probe:
    """One call of a route: its path and body (from the world), what each actor must get, what undoes a
    granted call (so the next actor meets the same world), and what a granted answer must show."""

    method: str
    path: Callable[[World], str]
    want: dict[str, Want]
    body: Callable[[World], Any] | None = None
    undo: Callable[[Any, World], Awaitable[None]] | None = None
    check: Check | None = None


def admin_only(granted: Want) -> dict[str, Want]:
    """Logged out and banned: 401; a site admin: `granted`; everyone else, team roles too: 403."""
    return {actor: OUT.get(actor, (403, "admin_required")) for actor in ACTORS} | {"site_admin": granted}


def team(*, other_admin: Want, **roles: Want) -> dict[str, Want]:
    """Logged out and banned: 401; in no team (a plain user, a removed member, a site admin): 403
    `team_required`; each role of ours and the other team's admin as given."""
    no_team: Want = (403, "team_required")
    return {**OUT, "plain": no_team, "nonmember": no_team, "site_admin": no_team, "other_admin": other_admin} | roles


def anyone(default: Want, **each: Want) -> dict[str, Want]:
    """Logged out and banned: 401; every other actor `default` unless named."""
    return {actor: OUT.get(actor, default) for actor in ACTORS} | each


# ---- what a granted answer may show ----------------------------------------------------------------------


async def own_team(served: Any, world: World, actor: str, body: Any) -> None:
    expected = world.other_owner if actor == "other_admin" else world.owner
    assert body["account_id"] == expected.account_id, (actor, body)


async def own_members(served: Any, world: World, actor: str, body: Any) -> None:
    theirs = {world.other_owner.user_id, world.other_admin.user_id}
    assert {m["user_id"] for m in body["data"]} == (theirs if actor == "other_admin" else world.ours), actor


async def key_accounts(served: Any, world: World) -> dict[int, int]:
    async with served.gateway.database.connect() as conn:
        return {int(k): int(a) for k, a in await conn.execute(sa.select(api_keys.c.id, api_keys.c.account_id))}


async def key_on_own_account(served: Any, world: World, actor: str, body: Any) -> None:
    account = (await key_accounts(served, world))[body["key"]["id"]]
    assert account == world.actors[actor].account_id, (actor, body)  # type: ignore[union-attr]


async def exactly_own_account_keys(served: Any, world: World, actor: str, body: Any) -> None:
    """Every key of the caller's own account (each has one by now), and no other: not the team keys the
    caller made on the team's account, unless it is their own account (the owner's)."""
    user = world.actors[actor]
    assert user is not None
    keys = await key_accounts(served, world)
    mine = {key for key, account in keys.items() if account == user.account_id}
    assert mine and {k["id"] for k in body["data"]} == mine, (actor, body)


async def team_key_on_own_team(served: Any, world: World, actor: str, body: Any) -> None:
    async with served.gateway.database.connect() as conn:
        account = await conn.scalar(sa.select(api_keys.c.account_id).where(api_keys.c.id == body["key"]["id"]))
    expected = world.other_owner if actor == "other_admin" else world.owner
    assert account == expected.account_id, (actor, account)


async def own_team_keys(served: Any, world: World, actor: str, body: Any) -> None:
    """Team keys of the caller's own team only; a member's, only the keys they made."""
    expected = world.other_owner if actor == "other_admin" else world.owner
    keys = await key_accounts(served, world)
    assert body["data"] and {keys[k["id"]] for k in body["data"]} == {expected.account_id}, (actor, body)
    if actor == "member":
        assert {k["user_id"] for k in body["data"]} == {world.member.user_id}, body


async def own_team_usage(served: Any, world: World, actor: str, body: Any) -> None:
    await own_team(served, world, actor, body)
    assert body["user_id"] == world.actors[actor].user_id, (actor, body)  # type: ignore[union-attr]


# ---- undoing a granted change -----------------------------------------------------------------------------


async def new_invitation(served: Any, world: World) -> None:
    world.invitation_id = (await invite(served, world.owner, "open@example.com"))["id"]


async def unban_victim(served: Any, world: World) -> None:
    await ok(served, "POST", f"/api/admin/users/{world.victim.user_id}/unban", world.site_admin, {"reason": "undo"})


# ---- the matrix ------------------------------------------------------------------------------------------

INVITE = {"email": "probe@example.com", "role": "member"}
MEMBERS_CHANGE = team(owner=(200, None), admin=(200, None), member=FORBIDDEN, billing=FORBIDDEN, other_admin=NO_MEMBER)
# The owner's own key (on /api/keys) and an id past 64 bits are no team key of anyone's.
OWN_KEY_IS_NO_TEAM_KEY = team(owner=NO_KEY, admin=NO_KEY, member=NO_KEY, billing=FORBIDDEN, other_admin=NO_KEY)
INVITING = team(owner=(201, None), admin=(201, None), member=FORBIDDEN, billing=FORBIDDEN, other_admin=(201, None))


def spare(w: World) -> str:
    return f"/api/team/members/{w.spare.user_id}"


def fixed(path: str) -> Callable[[World], str]:
    return lambda _: path


def admin_get(path: str | Callable[[World], str]) -> tuple[Probe, ...]:
    return (Probe("GET", fixed(path) if isinstance(path, str) else path, admin_only((200, None))),)


MATRIX: dict[tuple[str, str], tuple[Probe, ...]] = {
    # teams
    ("GET", "/api/team"): (
        Probe(
            "GET",
            fixed("/api/team"),
            team(other_admin=(200, None), **dict.fromkeys(TEAM_ROLES, (200, None))),
            check=own_team,
        ),
    ),
    ("GET", "/api/team/members"): (
        Probe(
            "GET",
            fixed("/api/team/members"),
            team(owner=(200, None), admin=(200, None), member=FORBIDDEN, billing=FORBIDDEN, other_admin=(200, None)),
            check=own_members,
        ),
    ),
    ("POST", "/api/team/members"): (Probe("POST", fixed("/api/team/members"), INVITING, body=lambda w: INVITE),),
    ("PATCH", "/api/team/members/{user_id:int}"): (
        Probe("PATCH", spare, MEMBERS_CHANGE, body=lambda w: {"monthly_limit_milli": 5000}),
        Probe(
            "PATCH",
            lambda w: f"/api/team/members/{w.owner.user_id}",
            team(owner=FORBIDDEN, admin=FORBIDDEN, member=FORBIDDEN, billing=FORBIDDEN, other_admin=NO_MEMBER),
            body=lambda w: {"role": "member"},
        ),
        Probe(
            "PATCH",
            lambda w: f"/api/team/members/{w.admin.user_id}",
            team(owner=(200, None), admin=FORBIDDEN, member=FORBIDDEN, billing=FORBIDDEN, other_admin=NO_MEMBER),
            body=lambda w: {"monthly_limit_milli": None},
        ),
    ),
    ("DELETE", "/api/team/members/{user_id:int}"): (Probe("DELETE", spare, MEMBERS_CHANGE, undo=rejoin),),
    ("POST", "/api/team/invitations"): (
        Probe("POST", fixed("/api/team/invitations"), INVITING, body=lambda w: INVITE),
    ),
    ("DELETE", "/api/team/invitations/{invitation_id:int}"): (
        Probe(
            "DELETE",
            lambda w: f"/api/team/invitations/{w.invitation_id}",
            team(
                owner=(200, None),
                admin=(200, None),
                member=FORBIDDEN,
                billing=FORBIDDEN,
                other_admin=(404, "invitation_not_found"),
            ),
            undo=new_invitation,
        ),
    ),
    ("POST", "/api/team/invitations/{token}/accept"): (
        Probe(
            "POST", lambda w: f"/api/team/invitations/{w.accept_token}/accept", anyone((403, "invitation_not_yours"))
        ),
    ),
    ("POST", "/api/team/transfer"): (
        Probe(
            "POST",
            fixed("/api/team/transfer"),
            team(owner=(202, None), admin=FORBIDDEN, member=FORBIDDEN, billing=FORBIDDEN, other_admin=FORBIDDEN),
            body=lambda w: {"user_id": w.spare.user_id},
        ),
        Probe(
            "POST",
            fixed("/api/team/transfer"),
            team(other_admin=(409, "no_ownership_offer"), **dict.fromkeys(TEAM_ROLES, (409, "no_ownership_offer"))),
            body=lambda w: {"accept": True},
        ),
    ),
    ("POST", "/api/team/keys"): (
        Probe(
            "POST",
            fixed("/api/team/keys"),
            team(owner=(201, None), admin=(201, None), member=(201, None), billing=FORBIDDEN, other_admin=(201, None)),
            body=lambda w: {"name": "probe"},
            check=team_key_on_own_team,
        ),
    ),
    ("GET", "/api/team/keys"): (
        Probe(
            "GET",
            fixed("/api/team/keys"),
            team(owner=(200, None), admin=(200, None), member=(200, None), billing=FORBIDDEN, other_admin=(200, None)),
            check=own_team_keys,
        ),
    ),
    ("DELETE", "/api/team/keys/{key_id:int}"): (
        Probe(
            "DELETE",
            lambda w: f"/api/team/keys/{w.member_key_id}",
            team(owner=(200, None), admin=(200, None), member=(200, None), billing=FORBIDDEN, other_admin=NO_KEY),
            undo=new_team_keys,
        ),
        Probe(
            "DELETE",
            lambda w: f"/api/team/keys/{w.admin_key_id}",
            team(owner=(200, None), admin=(200, None), member=NO_KEY, billing=FORBIDDEN, other_admin=NO_KEY),
            undo=new_team_keys,
        ),
        Probe("DELETE", lambda w: f"/api/team/keys/{w.owner_key_id}", OWN_KEY_IS_NO_TEAM_KEY),
        Probe("DELETE", fixed(f"/api/team/keys/{2**64}"), OWN_KEY_IS_NO_TEAM_KEY),
    ),
    ("PATCH", "/api/team/keys/{key_id:int}"): (
        Probe(
            "PATCH",
            lambda w: f"/api/team/keys/{w.member_key_id}",
            team(owner=(200, None), admin=(200, None), member=FORBIDDEN, billing=FORBIDDEN, other_admin=NO_KEY),
            body=lambda w: {"limit_milli": 5000, "limit_period": "day"},
        ),
        Probe(
            "PATCH",
            lambda w: f"/api/team/keys/{w.owner_key_id}",
            team(owner=NO_KEY, admin=NO_KEY, member=FORBIDDEN, billing=FORBIDDEN, other_admin=NO_KEY),
            body=lambda w: {"limit_milli": 5000},
        ),
    ),
    ("GET", "/api/team/usage"): (
        Probe(
            "GET",
            fixed("/api/team/usage"),
            team(owner=(200, None), admin=FORBIDDEN, member=FORBIDDEN, billing=(200, None), other_admin=FORBIDDEN),
            check=own_team,
        ),
    ),
    ("GET", "/api/team/usage/mine"): (
        Probe(
            "GET",
            fixed("/api/team/usage/mine"),
            team(other_admin=(200, None), **dict.fromkeys(TEAM_ROLES, (200, None))),
            check=own_team_usage,
        ),
    ),
    # keys: each user's own account's keys; the owner's key is the owner's alone
    ("POST", "/api/keys"): (
        Probe(
            "POST",
            fixed("/api/keys"),
            anyone((201, None)),
            body=lambda w: {"name": "probe", "scopes": ["read"]},
            check=key_on_own_account,
        ),
    ),
    ("GET", "/api/keys"): (Probe("GET", fixed("/api/keys"), anyone((200, None)), check=exactly_own_account_keys),),
    ("PATCH", "/api/keys/{key_id:int}"): (
        Probe(
            "PATCH",
            lambda w: f"/api/keys/{w.owner_key_id}",
            anyone(NO_KEY, owner=(200, None)),
            body=lambda w: {"limit_milli": 1000, "limit_period": "day"},
        ),
    ),
    ("DELETE", "/api/keys/{key_id:int}"): (
        Probe("DELETE", lambda w: f"/api/keys/{w.owner_key_id}", anyone(NO_KEY, owner=(200, None))),
    ),
    # admin (admin, billing, credits, tiers, failover, notify)
    ("GET", "/api/admin/overview"): admin_get("/api/admin/overview"),
    ("GET", "/api/admin/audit"): admin_get("/api/admin/audit"),
    ("GET", "/api/admin/users"): admin_get("/api/admin/users"),
    ("GET", "/api/admin/users.csv"): admin_get("/api/admin/users.csv"),
    ("GET", "/api/admin/usage.csv"): admin_get("/api/admin/usage.csv"),
    ("GET", "/api/admin/users/{user_id}"): admin_get(lambda w: f"/api/admin/users/{w.victim.user_id}"),
    ("POST", "/api/admin/users/{user_id}/ban"): (
        Probe(
            "POST",
            lambda w: f"/api/admin/users/{w.victim.user_id}/ban",
            admin_only((200, None)),
            body=lambda w: {"reason": "probe"},
            undo=unban_victim,
        ),
    ),
    ("POST", "/api/admin/users/{user_id}/unban"): (
        Probe(
            "POST",
            lambda w: f"/api/admin/users/{w.victim.user_id}/unban",
            admin_only((200, None)),
            body=lambda w: {"reason": "probe"},
        ),
    ),
    ("GET", "/api/admin/orders"): admin_get("/api/admin/orders"),
    ("POST", "/api/admin/orders"): (
        Probe(
            "POST",
            fixed("/api/admin/orders"),
            admin_only((201, None)),
            body=lambda w: {"account_id": w.victim.account_id, "product": "pack-5000", "reason": "probe"},
        ),
    ),
    ("GET", "/api/admin/orders/{reference}"): admin_get(lambda w: f"/api/admin/orders/{w.order}"),
    ("POST", "/api/admin/orders/{reference}/refund"): (
        Probe(
            "POST",
            lambda w: f"/api/admin/orders/{w.order}/refund",
            admin_only((409, "order_not_refundable")),
            body=lambda w: {"amount_fils": 1, "reason": "probe"},
        ),
    ),
    ("POST", "/api/admin/orders/{reference}/mark-paid"): (
        Probe(
            "POST",
            lambda w: f"/api/admin/orders/{w.order}/mark-paid",
            admin_only((200, None)),
            body=lambda w: {"reference": "TRX-1", "reason": "probe"},
        ),
    ),
    ("GET", "/api/admin/revenue"): admin_get("/api/admin/revenue?from=2026-01-01&to=2026-01-31"),
    ("PATCH", "/api/admin/accounts/{account_id:int}"): (
        Probe(
            "PATCH",
            lambda w: f"/api/admin/accounts/{w.victim.account_id}",
            admin_only((200, None)),
            body=lambda w: {"tier": "basic"},
        ),
    ),
    ("POST", "/api/admin/accounts/{account_id:int}/credits"): (
        Probe(
            "POST",
            lambda w: f"/api/admin/accounts/{w.victim.account_id}/credits",
            admin_only((201, None)),
            body=lambda w: {"delta_milli": 1000, "reason": "probe"},
        ),
    ),
    ("GET", "/api/admin/accounts/{account_id:int}/ledger"): admin_get(
        lambda w: f"/api/admin/accounts/{w.victim.account_id}/ledger"
    ),
    ("GET", "/api/admin/cloud-budget"): admin_get("/api/admin/cloud-budget"),
    ("GET", "/api/admin/upstreams"): admin_get("/api/admin/upstreams"),
    ("GET", "/api/admin/outbox"): admin_get("/api/admin/outbox"),
    ("POST", "/api/admin/outbox/{message_id:int}/resend"): (
        Probe("POST", fixed(f"/api/admin/outbox/{2**62}/resend"), admin_only((404, "message_not_found"))),
    ),
}


def code_of(answer: Any) -> str | None:
    return answer["error"]["code"] if isinstance(answer, dict) and "error" in answer else None


async def attempt(served: Any, world: World, probe: Probe, actor: str, *, csrf: bool = True) -> str | None:
    """Call the probe as `actor` (without the session's CSRF token: `csrf=False`, which must be refused);
    what went wrong, or None. A granted answer is checked, then undone."""
    want = probe.want[actor] if csrf else (403, "csrf_failed")
    path = probe.path(world)
    body = probe.body(world) if probe.body is not None else None
    status, answer = await call(served, probe.method, path, world.actors[actor], body, csrf=csrf)
    if (status, code_of(answer)) != want:
        label = f"{probe.method} {path} as {actor}{'' if csrf else ' without CSRF'}"
        return f"{label}: {(status, code_of(answer))}, not {want}: {answer!r:.300}"
    if status < 400:
        if probe.check is not None:
            await probe.check(served, world, actor, answer)
        if probe.undo is not None:
            await probe.undo(served, world)
    return None


def granted_actor(probe: Probe) -> str:
    """The first actor the probe lets through (a plain user when none is): the CSRF check's caller."""
    return next((a for a in ACTORS if probe.want[a][0] < 400 and a != "anonymous"), "plain")


async def run(served: Any, world: World, reader: TableReader, probe: Probe) -> list[str]:
    """Every refused call of the probe (each actor the matrix refuses, and the CSRF check), then every granted
    one; what went wrong. The refused calls together must leave every table's rows as they were."""
    refused = [a for a in ACTORS if probe.want[a][0] >= 400]
    granted = [a for a in ACTORS if a not in refused]
    before = await snapshot(served, reader)
    wrong = [problem for actor in refused if (problem := await attempt(served, world, probe, actor))]
    if probe.method != "GET" and (problem := await attempt(served, world, probe, granted_actor(probe), csrf=False)):
        wrong.append(problem)
    after = await snapshot(served, reader)
    if changed := sorted(t for t in before if before[t] != after[t]):
        wrong.append(f"{probe.method} {probe.path(world)}: refused to {refused}, yet changed {changed}")
    return wrong + [problem for actor in granted if (problem := await attempt(served, world, probe, actor))]


async def test_every_route_answers_each_caller_exactly_as_the_matrix_says(
    db_url: str, ollama: Any, serve: Any, request: pytest.FixtureRequest
) -> None:
    # MariaDB goes with Redis, as in production (sessions, key-cache invalidation, failover's counters).
    redis_url = request.getfixturevalue("redis_url") if db_url.startswith("mysql") else None
    async with serve(matrix_config(ollama, db_url, redis_url)) as served:
        routes = served_routes(served)
        assert sorted(routes - set(MATRIX)) == [], "a served route has no row in MATRIX"
        assert sorted(set(MATRIX) - routes) == [], "a MATRIX row names a route the app does not serve"
        world = await cast(served)
        reader = TableReader(db_url)
        wrong: list[str] = []
        try:
            for (method, _), probes in MATRIX.items():
                for probe in probes:
                    assert set(probe.want) == set(ACTORS) and probe.method == method
                    wrong += await run(served, world, reader, probe)
        finally:
            reader.close()
        assert wrong == [], "\n".join(wrong)
