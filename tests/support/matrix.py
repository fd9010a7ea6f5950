"""Support for the permission matrix (tests/test_permission_matrix.py): one gateway with every plugin that
serves a portal route, the routes it really serves, the cast of callers, a call as one of them, and a
snapshot of every table to prove a refused call changed nothing.

    routes = served_routes(served)            # {("PATCH", "/api/team/members/{user_id:int}"), ...}
    world = await cast(served)                # every actor, logged in once
    answer = await as_actor(served, world, "member", "GET", "/api/team/members")
    before = await snapshot(served)           # every row of every table (volatile columns left out)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from tests.support.admin import admin_config
from tests.support.portal import LoggedIn, register_user
from tests.test_teams import join

# Who calls. `banned` was a team admin of ours, logged in before an admin banned them; `nonmember` was a
# member of ours, logged in before the owner removed them; `other_admin` is the admin of another team.
ACTORS = (
    "anonymous",
    "plain",
    "banned",
    "owner",
    "admin",
    "member",
    "billing",
    "nonmember",
    "other_admin",
    "site_admin",
)
TEAM_ROLES = ("owner", "admin", "member", "billing")
# The portal routes the matrix must cover: a served route under one of these needs a row.
COVERED = ("/api/team", "/api/admin/", "/api/keys")
NEVER = 10.0**9  # seconds: a job's period that is not due while the test runs
# Columns a read may change: a session's last use.
VOLATILE = {"sessions": {"last_seen_at"}}


def matrix_config(ollama: Any, db_url: str, redis_url: str | None = None) -> dict[str, Any]:
    """auth_keys, tiers, credits, billing (no provider), admin, teams, failover and notify: every plugin that
    serves an admin, team or key route."""
    config = admin_config(ollama, db_url, None, redis_url=redis_url)
    config["plugins"] += [{"name": "teams"}, {"name": "failover"}, {"name": "notify"}]
    # No periodic job may change a row between two snapshots: none is due while the test runs.
    never = {
        "credits": {"sweep_interval_seconds": NEVER},
        "billing": {"check_every_seconds": NEVER, "renewals_every_seconds": NEVER},
        "notify": {"send_every_seconds": NEVER},
    }
    for entry in config["plugins"]:
        entry["settings"] = {**entry.get("settings", {}), **never.get(entry["name"], {})}
    return config


def covered(path: str) -> bool:
    return path == "/api/team" or path.startswith(COVERED)


def served_routes(served: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route the running app serves that the matrix must cover, read from
    the Starlette app under the gateway's middleware (HEAD, which Starlette adds to each GET, left out)."""
    app = served.app.web
    while not hasattr(app, "routes"):
        app = app.app
    found = set()
    for route in app.routes:
        path = getattr(route, "path", "")
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD" and covered(path):
                found.add((method, path))
    return found


@dataclass
class World:
    """Every actor (None for `anonymous`) and the things the probes name: our team's `spare` member (the
    target of changes), a `victim` user (of bans, plans, credits), the `invitee` of an invitation nobody
    else may accept, the owner's key, our member's and admin's team keys, our open invitation and a manual
    order."""

    actors: dict[str, LoggedIn | None]
    spare: LoggedIn
    victim: LoggedIn
    invitee: LoggedIn
    other_owner: LoggedIn
    owner_key_id: int
    member_key_id: int = 0
    admin_key_id: int = 0
    invitation_id: int = 0
    accept_token: str = ""
    order: str = ""
    ours: set[int] = field(default_factory=set)

    def __getattr__(self, name: str) -> Any:
        actors = self.__dict__.get("actors", {})
        if name in actors:
            return actors[name]
        raise AttributeError(name)


async def call(
    served: Any, method: str, path: str, user: LoggedIn | None, body: Any = None, *, csrf: bool = True
) -> tuple[int, Any]:
    """(status, JSON body, or the text of a CSV) of a portal call as `user` (None: logged out); `csrf=False`
    sends the session without its CSRF token."""
    headers = {} if user is None else dict(user.headers)
    if not csrf:
        headers.pop("X-CSRF-Token", None)
    async with served.request(method, path, json=body, headers=headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def ok(served: Any, method: str, path: str, user: LoggedIn, body: Any = None) -> Any:
    status, answer = await call(served, method, path, user, body)
    assert 200 <= status < 300, (method, path, answer)
    return answer


async def invite(served: Any, by: LoggedIn, email: str, role: str = "member") -> dict[str, Any]:
    answer: dict[str, Any] = await ok(served, "POST", "/api/team/invitations", by, {"email": email, "role": role})
    return answer


async def rejoin(served: Any, world: World) -> None:
    """Bring `spare` back into our team as a member (after a probe removed them)."""
    await join(served, world.owner, world.spare, "member")


async def new_team_keys(served: Any, world: World) -> None:
    """A live team key of our `member` and of our `admin` (after a probe revoked one)."""
    for name in ("member", "admin"):
        made = await ok(served, "POST", "/api/team/keys", world.actors[name], {"name": f"{name}'s team key"})
        setattr(world, f"{name}_key_id", int(made["key"]["id"]))


async def cast(served: Any) -> World:
    """Register and place every actor; ban `banned` and remove `nonmember` after they logged in."""
    site_admin = await register_user(served, admin=True, locale="en")
    owner = await register_user(served, tier="enterprise", locale="en")
    other_owner = await register_user(served, tier="enterprise", locale="en")
    names = ("plain", "banned", "admin", "member", "billing", "nonmember", "other_admin", "spare", "victim")
    users = {name: await register_user(served, locale="en") for name in names}
    invitee = await register_user(served, locale="en")
    for name, role in (("admin", "admin"), ("member", "member"), ("billing", "billing"), ("banned", "admin")):
        await join(served, owner, users[name], role)
    await join(served, owner, users["spare"], "member")
    await join(served, owner, users["nonmember"], "member")
    await join(served, other_owner, users["other_admin"], "admin")
    await ok(served, "DELETE", f"/api/team/members/{users['nonmember'].user_id}", owner)
    await ok(served, "POST", f"/api/admin/users/{users['banned'].user_id}/ban", site_admin, {"reason": "matrix"})
    key = await ok(served, "POST", "/api/keys", owner, {"name": "owner's", "scopes": ["read"]})
    actors: dict[str, LoggedIn | None] = {
        "anonymous": None,
        "site_admin": site_admin,
        "owner": owner,
        **{name: users[name] for name in ACTORS if name in users},
    }
    world = World(
        actors=actors,
        spare=users["spare"],
        victim=users["victim"],
        invitee=invitee,
        other_owner=other_owner,
        owner_key_id=int(key["key"]["id"]),
    )
    await new_team_keys(served, world)
    world.ours = {owner.user_id} | {users[n].user_id for n in ("admin", "member", "billing", "banned", "spare")}
    world.invitation_id = (await invite(served, owner, "open@example.com"))["id"]
    world.accept_token = (await invite(served, owner, invitee.email))["token"]
    body = {"account_id": world.victim.account_id, "product": "pack-5000", "reason": "matrix"}
    world.order = (await ok(served, "POST", "/api/admin/orders", site_admin, body))["order"]["id"]
    return world


Snapshot = dict[str, list[tuple[str, ...]]]


class TableReader:
    """Reads every row of every table (but `VOLATILE` columns) through the database's synchronous driver on
    one connection: a snapshot costs milliseconds, not a thread hop per query. Each read ends its
    transaction, so MariaDB's repeatable read never shows an old snapshot."""

    def __init__(self, db_url: str) -> None:
        self.engine = sa.create_engine(db_url.replace("+aiosqlite", "").replace("+aiomysql", "+pymysql"))
        self.conn = self.engine.connect()
        names = sa.inspect(self.conn).get_table_names()
        self.tables = sorted(name for name in names if name != "alembic_version")
        self.conn.rollback()

    def read(self) -> Snapshot:
        rows = {}
        for name in self.tables:
            result = self.conn.execute(sa.text(f"SELECT * FROM {name}"))
            keep = [i for i, column in enumerate(result.keys()) if column not in VOLATILE.get(name, ())]
            rows[name] = sorted((tuple(str(row[i]) for i in keep) for row in result), key=repr)
        self.conn.rollback()
        return rows

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


async def snapshot(served: Any, reader: TableReader) -> Snapshot:
    """Every table's rows once the gateway's background work (event delivery) is done."""
    await served.gateway.drain()
    return reader.read()
