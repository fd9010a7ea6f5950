"""Enterprise teams: every team endpoint at its permission boundary (each role, a user in no team, another
team's admin), invitations (expiry, revocation, replay, someone else's), removal revoking keys at once, team
keys billing the team and paused below Enterprise, and the member's monthly limit (402). SQLite and MariaDB."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugins.teams.policy import ACTIONS, permits
from tests.support.bodies import chat_body
from tests.support.clock import ManualClock
from tests.support.credits import credits_config, table_rows, until_settled
from tests.support.portal import LoggedIn, auth_plugin_entry, bearer, create_key, register_user, set_tier

BODY = chat_body(max_tokens=10)
HOLD = len(BODY) + 10
FUNDS = 10**9


def config(ollama: Any, db_url: str, **teams: Any) -> dict[str, Any]:
    plugins = [auth_plugin_entry(), {"name": "teams", "settings": teams}]
    return credits_config(ollama_url=ollama.url, database_url=db_url, extra_plugins=plugins, lease_requests=0)


async def call(served: Any, method: str, path: str, user: LoggedIn, body: Any = None) -> tuple[int, dict[str, Any]]:
    async with served.request(method, path, json=body, headers=user.headers) as r:
        return r.status, await r.json()


async def chat(served: Any, secret: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"content-type": "application/json", **bearer(secret)}
    async with served.request("POST", "/v1/chat/completions", data=BODY, headers=headers) as r:
        return r.status, await r.json(), dict(r.headers)


async def join(served: Any, owner: LoggedIn, user: LoggedIn, role: str) -> None:
    status, invitation = await call(served, "POST", "/api/team/invitations", owner, {"email": user.email, "role": role})
    assert status == 201, invitation
    status, joined = await call(served, "POST", f"/api/team/invitations/{invitation['token']}/accept", user)
    assert (status, joined["role"]) == (200, role), joined


@dataclass
class Team:
    owner: LoggedIn
    admin: LoggedIn
    member: LoggedIn
    billing: LoggedIn


async def team(served: Any) -> Team:
    """An Enterprise account with credits, and one user in each other role (each with their own account)."""
    owner = await register_user(served, tier="enterprise", locale="en")
    await served.gateway.plugin("credits").grant(
        account_id=owner.account_id, amount_milli=FUNDS, kind="grant", reference=f"seed-{owner.account_id}"
    )
    others = [await register_user(served, locale="en") for _ in range(3)]
    for user, role in zip(others, ("admin", "member", "billing"), strict=True):
        await join(served, owner, user, role)
    return Team(owner, *others)


def test_the_policy_is_the_readme_table() -> None:
    readme = (Path(__file__).parent.parent / "plugins/teams/README.md").read_text()
    table = readme.split("| action |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert [line.split("`")[1] for line in table] == list(ACTIONS)  # every action, and no row the code lacks
    for action in ACTIONS:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{action}`"))
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        for role, cell in zip(("owner", "admin", "member", "billing"), cells, strict=True):
            assert permits(role=role, action=action) == (cell != ""), (action, role)
    assert not permits(role="admin", action="members.update", target_role="owner")
    assert not permits(role="admin", action="members.update", target_role="member", grant="owner")
    assert not permits(role="owner", action="no.such.action")


async def test_each_role_reads_and_changes_members_only_as_the_policy_says(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        outsider = await register_user(served)  # a plain Basic user in no team
        status, listed = await call(served, "GET", "/api/team/members", t.owner)
        assert status == 200
        roles = {m["user_id"]: m["role"] for m in listed["data"]}
        assert roles == {
            t.owner.user_id: "owner",
            t.admin.user_id: "admin",
            t.member.user_id: "member",
            t.billing.user_id: "billing",
        }
        assert (await call(served, "GET", "/api/team/members", t.admin))[0] == 200
        for user in (t.member, t.billing):
            status, body = await call(served, "GET", "/api/team/members", user)
            assert (status, body["error"]["code"]) == (403, "team_forbidden")
            status, body = await call(served, "PATCH", f"/api/team/members/{t.member.user_id}", user, {"role": "admin"})
            assert (status, body["error"]["code"]) == (403, "team_forbidden")
            status, body = await call(served, "DELETE", f"/api/team/members/{t.billing.user_id}", user)
            assert (status, body["error"]["code"]) == (403, "team_forbidden")
            status, body = await call(
                served, "POST", "/api/team/invitations", user, {"email": "x@y.com", "role": "member"}
            )
            assert (status, body["error"]["code"]) == (403, "team_forbidden")
        for method, path, body in (
            ("GET", "/api/team/members", None),
            ("PATCH", f"/api/team/members/{t.member.user_id}", {"role": "admin"}),
            ("DELETE", f"/api/team/members/{t.member.user_id}", None),
            ("POST", "/api/team/invitations", {"email": "x@y.com", "role": "member"}),
            ("POST", "/api/team/transfer", {"user_id": t.member.user_id}),
        ):
            status, answer = await call(served, method, path, outsider, body)
            assert (status, answer["error"]["code"]) == (403, "team_required"), path
        async with served.request("GET", "/api/team/members") as r:
            assert r.status == 401
        # The admin manages roles below the owner, never the owner, and never grants the ownership.
        status, body = await call(
            served, "PATCH", f"/api/team/members/{t.member.user_id}", t.admin, {"role": "billing"}
        )
        assert (status, body["role"]) == (200, "billing")
        status, body = await call(served, "PATCH", f"/api/team/members/{t.owner.user_id}", t.admin, {"role": "member"})
        assert (status, body["error"]["code"]) == (403, "team_forbidden")
        status, body = await call(served, "PATCH", f"/api/team/members/{t.member.user_id}", t.admin, {"role": "owner"})
        assert (status, body["error"]["code"]) == (422, "role_invalid")
        status, body = await call(served, "DELETE", f"/api/team/members/{t.owner.user_id}", t.admin)
        assert (status, body["error"]["code"]) == (403, "team_forbidden")
        status, body = await call(served, "POST", "/api/team/transfer", t.admin, {"user_id": t.member.user_id})
        assert (status, body["error"]["code"]) == (403, "team_forbidden")
        # Hostile values: a huge id, a negative limit, an unknown field.
        status, body = await call(served, "PATCH", f"/api/team/members/{2**70}", t.owner, {"role": "member"})
        assert (status, body["error"]["code"]) == (404, "member_not_found")
        status, body = await call(
            served, "PATCH", f"/api/team/members/{t.member.user_id}", t.owner, {"monthly_limit_milli": -1}
        )
        assert (status, body["error"]["code"]) == (422, "monthly_limit_milli_out_of_range")
        status, body = await call(served, "PATCH", f"/api/team/members/{t.member.user_id}", t.owner, {"tier": "x"})
        assert (status, body["error"]["code"]) == (422, "field_unknown")


async def test_another_teams_admin_finds_nobody_of_ours(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        ours = await team(served)
        theirs = await team(served)
        status, listed = await call(served, "GET", "/api/team/members", theirs.admin)
        assert status == 200
        assert ours.member.user_id not in {m["user_id"] for m in listed["data"]}
        for method, path, body in (
            ("PATCH", f"/api/team/members/{ours.member.user_id}", {"role": "admin"}),
            ("DELETE", f"/api/team/members/{ours.member.user_id}", None),
        ):
            status, answer = await call(served, method, path, theirs.admin, body)
            assert (status, answer["error"]["code"]) == (404, "member_not_found")
        status, answer = await call(
            served, "POST", "/api/team/transfer", theirs.owner, {"user_id": ours.member.user_id}
        )
        assert (status, answer["error"]["code"]) == (404, "member_not_found")
        status, listed = await call(served, "GET", "/api/team/members", ours.owner)
        assert {m["user_id"]: m["role"] for m in listed["data"]}[ours.member.user_id] == "member"


async def test_invitations_expire_are_revoked_and_are_used_once_by_their_own_user(
    db_url: str, ollama: Any, serve: Any
) -> None:
    clock = ManualClock()
    async with serve(config(ollama, db_url, invitation_seconds=3600), clock=clock) as served:
        owner = await register_user(served, tier="enterprise")
        invited, stranger = await register_user(served), await register_user(served)

        async def invite(**to: str) -> dict[str, Any]:
            status, body = await call(served, "POST", "/api/team/invitations", owner, {**to, "role": "member"})
            assert status == 201, body
            return body

        async def accept(token: str, user: LoggedIn) -> tuple[int, str | None]:
            status, body = await call(served, "POST", f"/api/team/invitations/{token}/accept", user)
            return status, body.get("error", {}).get("code")

        expiring = await invite(email=invited.email)
        clock.advance(3601)
        assert await accept(expiring["token"], invited) == (410, "invitation_expired")
        revoked = await invite(email=invited.email)
        status, _ = await call(served, "DELETE", f"/api/team/invitations/{revoked['id']}", owner)
        assert status == 200
        assert await accept(revoked["token"], invited) == (404, "invitation_not_found")
        assert await accept("rti_" + "A" * 43, invited) == (404, "invitation_not_found")
        assert await accept("not-a-token", invited) == (404, "invitation_not_found")
        by_phone = await invite(phone=invited.phone)
        assert await accept(by_phone["token"], stranger) == (403, "invitation_not_yours")
        assert await accept(by_phone["token"], invited) == (200, None)
        assert await accept(by_phone["token"], invited) == (404, "invitation_not_found")  # a replay
        again = await invite(email=invited.email)
        assert await accept(again["token"], invited) == (409, "already_in_team")
        status, body = await call(served, "POST", "/api/team/invitations", owner, {"role": "member"})
        assert (status, body["error"]["code"]) == (422, "email_or_phone")
        # Below Enterprise nobody new is invited.
        await set_tier(served, account_id=owner.account_id, tier="pro")
        status, body = await call(
            served, "POST", "/api/team/invitations", owner, {"email": "n@e.com", "role": "member"}
        )
        assert (status, body["error"]["code"]) == (403, "team_requires_enterprise")


async def test_a_members_key_bills_the_team_and_removal_revokes_it_at_once(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        status, made = await call(served, "POST", "/api/team/keys", t.member, {"name": "team work"})
        assert status == 201, made
        status, refused = await call(served, "POST", "/api/team/keys", t.billing, {"name": "nope"})
        assert (status, refused["error"]["code"]) == (403, "team_forbidden")
        secret = made["secret"]
        status, body, _ = await chat(served, secret)
        assert status == 200, body
        await until_settled(served.gateway)
        rows = await table_rows(served.gateway, "usage", key_id=made["key"]["id"])
        assert [(r["account_id"], r["user_id"]) for r in rows] == [(t.owner.account_id, t.member.user_id)]
        assert rows[0]["cost_milli"] > 0
        assert not await table_rows(served.gateway, "usage", account_id=t.member.account_id)
        status, removed = await call(served, "DELETE", f"/api/team/members/{t.member.user_id}", t.admin)
        assert (status, removed["keys_revoked"]) == (200, [made["key"]["id"]])
        status, body, _ = await chat(served, secret)
        assert status == 401, body
        status, body = await call(served, "GET", "/api/team/members", t.owner)
        assert t.member.user_id not in {m["user_id"] for m in body["data"]}


async def test_team_keys_answer_403_below_enterprise_and_work_again_after(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        status, made = await call(served, "POST", "/api/team/keys", t.admin, {"name": "ops"})
        assert status == 201
        own = await create_key(served, t.owner)
        await set_tier(served, account_id=t.owner.account_id, tier="pro")
        status, body, _ = await chat(served, made["secret"])
        assert (status, body["error"]["code"]) == (403, "team_requires_enterprise")
        status, body, _ = await chat(served, own)
        assert status == 200, body  # the account's own user is not a team member's key
        status, listed = await call(served, "GET", "/api/team/members", t.owner)
        assert len(listed["data"]) == 4  # members are kept
        await set_tier(served, account_id=t.owner.account_id, tier="enterprise")
        status, body, _ = await chat(served, made["secret"])
        assert status == 200, body


async def test_a_members_monthly_limit_refuses_with_402(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        status, made = await call(served, "POST", "/api/team/keys", t.member, {"name": "capped"})
        assert status == 201
        limit = HOLD * 2
        path = f"/api/team/members/{t.member.user_id}"
        status, body = await call(served, "PATCH", path, t.admin, {"monthly_limit_milli": limit})
        assert (status, body["monthly_limit_milli"]) == (200, limit)
        served_count = 0
        for _ in range(20):
            status, body, headers = await chat(served, made["secret"])
            if status != 200:
                break
            served_count += 1
            await until_settled(served.gateway)
        assert status == 402, body
        assert body["error"]["code"] == "member_limit_reached"
        assert body["error"]["limit"] == limit and body["error"]["period"] == "month"
        assert body["error"]["resets_at"].endswith("Z")
        assert headers["x-should-retry"] == "false"
        assert served_count >= 1
        spent = sum(r["cost_milli"] for r in await table_rows(served.gateway, "usage", user_id=t.member.user_id))
        assert spent <= limit
        # Lifting the limit applies to the next request.
        status, body = await call(served, "PATCH", path, t.owner, {"monthly_limit_milli": None})
        assert status == 200
        status, body, _ = await chat(served, made["secret"])
        assert status == 200, body


async def test_the_ownership_moves_only_when_the_offered_member_accepts(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        status, body = await call(served, "POST", "/api/team/transfer", t.member, {"accept": True})
        assert (status, body["error"]["code"]) == (409, "no_ownership_offer")
        status, body = await call(served, "POST", "/api/team/transfer", t.owner, {"user_id": t.member.user_id})
        assert status == 202
        status, listed = await call(served, "GET", "/api/team/members", t.owner)
        assert {m["user_id"]: m["role"] for m in listed["data"]}[t.owner.user_id] == "owner"
        status, body = await call(served, "POST", "/api/team/transfer", t.member, {"accept": True})
        assert status == 200, body
        status, listed = await call(served, "GET", "/api/team/members", t.member)
        roles = {m["user_id"]: m["role"] for m in listed["data"]}
        assert (roles[t.member.user_id], roles[t.owner.user_id]) == ("owner", "admin")
        status, body = await call(served, "POST", "/api/team/transfer", t.member, {"accept": True})
        assert (status, body["error"]["code"]) == (409, "no_ownership_offer")  # an offer is taken once


async def test_removal_stops_the_members_keys_on_every_worker_at_once(
    db_url: str, ollama: Any, redis_url: str, serve: Any
) -> None:
    cfg = config(ollama, db_url)
    cfg["redis_url"] = redis_url
    cfg["plugins"][1]["settings"]["key_cache_seconds"] = 3600  # only the invalidation can make it forget
    async with serve(cfg) as first, serve(cfg) as second:
        t = await team(first)
        status, made = await call(first, "POST", "/api/team/keys", t.member, {"name": "both workers"})
        assert status == 201
        status, body, _ = await chat(second, made["secret"])
        assert status == 200, body  # the second worker now holds the key's principal in its cache
        status, _ = await call(first, "DELETE", f"/api/team/members/{t.member.user_id}", t.owner)
        assert status == 200
        # At once: the member's row is gone, so even a still-cached key is refused before any spend.
        status, body, _ = await chat(second, made["secret"])
        assert status in (401, 403), body
        if status == 403:
            assert body["error"]["code"] == "team_member_removed"
        await until_settled(first.gateway)
        spent_after = await table_rows(first.gateway, "usage", key_id=made["key"]["id"])
        assert len(spent_after) == 1
        deadline = asyncio.get_running_loop().time() + 1.0
        while (status := (await chat(second, made["secret"]))[0]) != 401:
            assert asyncio.get_running_loop().time() < deadline, "the second worker still knows the key"
            await asyncio.sleep(0.02)


async def test_concurrent_requests_never_spend_past_a_members_limit(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        status, made = await call(served, "POST", "/api/team/keys", t.member, {"name": "burst"})
        assert status == 201
        limit = HOLD * 3
        status, _ = await call(
            served, "PATCH", f"/api/team/members/{t.member.user_id}", t.owner, {"monthly_limit_milli": limit}
        )
        assert status == 200
        answers = await asyncio.gather(*(chat(served, made["secret"]) for _ in range(30)))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) == {200, 402}, statuses
        assert {body["error"]["code"] for status, body, _ in answers if status == 402} == {"member_limit_reached"}
        await until_settled(served.gateway)
        spent = sum(r["cost_milli"] for r in await table_rows(served.gateway, "usage", user_id=t.member.user_id))
        assert 0 < spent <= limit  # requests settled meanwhile cost less than their holds, so more than 3 ran
