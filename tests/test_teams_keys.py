"""Team keys and team usage at their permission boundary, on SQLite and MariaDB: owners and admins list,
revoke and limit every team key of their team (never another team's, never the account's own user's keys);
a member lists and revokes only their own; billing sees usage, never keys; a revocation stops the key on a
second worker at once; each change leaves one audit row."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from tests.support.billing_admin import audit_rows
from tests.support.credits import table_rows, until_settled
from tests.support.portal import LoggedIn, register_user
from tests.support.teams import teams_config
from tests.test_teams import Team, call, chat, config, team

SECRET_WORDS = ("secret", "secret_hash", "rsk_")


async def team_key(served: Any, user: LoggedIn, name: str = "team key") -> dict[str, Any]:
    status, made = await call(served, "POST", "/api/team/keys", user, {"name": name})
    assert status == 201, made
    return made


async def own_key(served: Any, user: LoggedIn) -> dict[str, Any]:
    """A key on the user's own account (`POST /api/keys`): its JSON and secret."""
    status, made = await call(served, "POST", "/api/keys", user, {"name": "own", "scopes": ["read", "write"]})
    assert status == 201, made
    return made


def error(answer: tuple[int, dict[str, Any]]) -> tuple[int, str | None]:
    status, body = answer
    return status, body.get("error", {}).get("code")


async def listed(served: Any, user: LoggedIn, query: str = "") -> set[int]:
    status, body = await call(served, "GET", f"/api/team/keys{query}", user)
    assert status == 200, body
    return {k["id"] for k in body["data"]}


async def test_owners_and_admins_list_every_team_key_a_member_only_their_own(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        other = await team(served)
        owners_own = (await own_key(served, t.owner))["key"]["id"]  # the account's own key: not a team key
        owners_team = (await team_key(served, t.owner))["key"]["id"]  # the owner's: also the account's own
        by_admin = (await team_key(served, t.admin, "admin's"))["key"]["id"]
        by_member = [(await team_key(served, t.member, f"m{i}"))["key"]["id"] for i in range(3)]
        members_own = (await own_key(served, t.member))["key"]["id"]  # on the member's own account
        theirs = (await team_key(served, other.member))["key"]["id"]
        every = {by_admin, *by_member}
        for manager in (t.owner, t.admin):
            assert await listed(served, manager) == every
        assert await listed(served, t.member) == set(by_member)
        assert not {owners_own, owners_team, members_own, theirs} & (await listed(served, t.owner))
        assert await listed(served, other.admin) == {theirs}
        status, body = await call(served, "GET", "/api/team/keys", t.admin)
        shown = {k["id"]: k for k in body["data"]}[by_admin]
        assert shown["user"] == {"user_id": t.admin.user_id, "name": "Test User", "email": t.admin.email}
        assert shown["name"] == "admin's" and shown["prefix"].startswith("rsk_") and len(shown["prefix"]) == 12
        assert shown["created_at"].endswith("Z") and shown["revoked_at"] is None and shown["spend"] is None
        text = str(body)
        assert "secret" not in text and text.count("rsk_") == len(every)  # prefixes only
        # Billing sees no keys; someone in no team, none; nobody logged out.
        assert error(await call(served, "GET", "/api/team/keys", t.billing)) == (403, "team_forbidden")
        outsider = await register_user(served)
        assert error(await call(served, "GET", "/api/team/keys", outsider)) == (403, "team_required")
        async with served.request("GET", "/api/team/keys") as r:
            assert r.status == 401
        # Pages, newest first.
        status, first = await call(served, "GET", "/api/team/keys?limit=2", t.owner)
        assert [k["id"] for k in first["data"]] == sorted(every, reverse=True)[:2]
        status, rest = await call(served, "GET", f"/api/team/keys?limit=2&cursor={first['next_cursor']}", t.owner)
        assert status == 200, rest
        assert [k["id"] for k in rest["data"]] == sorted(every, reverse=True)[2:]
        assert rest["next_cursor"] is None
        for query in ("?limit=0", "?limit=201", "?limit=x", "?cursor=abc", f"?cursor={2**64}"):
            assert error(await call(served, "GET", f"/api/team/keys{query}", t.owner))[0] == 422, query


async def test_revoking_a_team_key_stops_it_and_reaches_no_other_key(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        other = await team(served)
        owners_own = await own_key(served, t.owner)
        admins = await team_key(served, t.admin)
        members = [await team_key(served, t.member, f"m{i}") for i in range(2)]
        theirs = await team_key(served, other.member)
        await register_user(served)  # ids past ours exist too

        async def revoke(user: LoggedIn, key_id: int) -> tuple[int, str | None]:
            return error(await call(served, "DELETE", f"/api/team/keys/{key_id}", user))

        # A member revokes their own key, never a teammate's; billing none.
        assert await revoke(t.member, members[0]["key"]["id"]) == (200, None)
        assert (await chat(served, members[0]["secret"]))[0] == 401
        assert await revoke(t.member, admins["key"]["id"]) == (404, "key_not_found")
        assert await revoke(t.billing, members[1]["key"]["id"]) == (403, "team_forbidden")
        # Nobody reaches the owner's own key, another team's key, or an id no key can have.
        for user in (t.owner, t.admin, t.member, other.admin):
            assert await revoke(user, owners_own["key"]["id"]) == (404, "key_not_found")
        for user in (t.owner, t.admin):
            assert await revoke(user, theirs["key"]["id"]) == (404, "key_not_found")
        assert await revoke(other.admin, members[1]["key"]["id"]) == (404, "key_not_found")
        for key_id in (0, 2**63 - 1, 2**63, 2**64 + members[1]["key"]["id"]):
            assert await revoke(t.owner, key_id) == (404, "key_not_found"), key_id
        for secret in (owners_own["secret"], admins["secret"], members[1]["secret"], theirs["secret"]):
            status, body, _ = await chat(served, secret)
            assert status == 200, body
        # The admin revokes a member's key; a repeat is the same answer and no second audit row.
        status, body = await call(served, "DELETE", f"/api/team/keys/{members[1]['key']['id']}", t.admin)
        assert status == 200 and body["key"]["revoked_at"] is not None
        again = await call(served, "DELETE", f"/api/team/keys/{members[1]['key']['id']}", t.admin)
        assert again[0] == 200 and again[1]["key"]["revoked_at"] == body["key"]["revoked_at"]
        assert (await chat(served, members[1]["secret"]))[0] == 401
        rows = [r for r in await audit_rows(served) if r["action"] == "teams.key_revoked"]
        assert [(r["target"], r["actor_user_id"], r["details"]) for r in rows] == [
            (
                f"key:{members[0]['key']['id']}",
                t.member.user_id,
                {"account_id": t.owner.account_id, "user_id": t.member.user_id},
            ),
            (
                f"key:{members[1]['key']['id']}",
                t.admin.user_id,
                {"account_id": t.owner.account_id, "user_id": t.member.user_id},
            ),
        ]
        # A removed member is in no team: their keys list and revoke nothing any more.
        await call(served, "DELETE", f"/api/team/members/{t.member.user_id}", t.owner)
        assert error(await call(served, "GET", "/api/team/keys", t.member)) == (403, "team_required")
        assert await revoke(t.member, admins["key"]["id"]) == (403, "team_required")
        # Their keys stay listed for the team, revoked, with who made them.
        status, body = await call(served, "GET", "/api/team/keys", t.owner)
        gone = [k for k in body["data"] if k["user_id"] == t.member.user_id]
        assert len(gone) == 2 and all(k["revoked_at"] and k["user"]["email"] == t.member.email for k in gone)


async def test_managers_set_a_team_keys_limit_a_member_cannot_lift_it(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        other = await team(served)
        made = await team_key(served, t.member)
        key_id = made["key"]["id"]
        path = f"/api/team/keys/{key_id}"
        status, body = await call(served, "PATCH", path, t.admin, {"limit_milli": 10**6, "limit_period": "day"})
        assert status == 200, body
        assert (body["key"]["limit_milli"], body["key"]["limit_period"]) == (10**6, "day")
        status, body, _ = await chat(served, made["secret"])
        assert status == 200, body
        await until_settled(served.gateway)
        status, body = await call(served, "GET", "/api/team/keys", t.owner)
        spend = body["data"][0]["spend"]
        spent = sum(r["cost_milli"] for r in await table_rows(served.gateway, "usage", key_id=key_id))
        assert spend["spent_milli"] == spent > 0 and spend["remaining_milli"] == 10**6 - spent
        assert spend["resets_at"].endswith("Z") and spend["held_milli"] == 0
        # A member lifts nothing, not even on their own key; another team finds no such key.
        assert error(await call(served, "PATCH", path, t.member, {"limit_milli": None})) == (403, "team_forbidden")
        assert error(await call(served, "PATCH", path, t.billing, {"limit_milli": None})) == (403, "team_forbidden")
        assert error(await call(served, "PATCH", path, other.admin, {"limit_milli": None})) == (404, "key_not_found")
        owners_own = (await own_key(served, t.owner))["key"]["id"]
        assert error(await call(served, "PATCH", f"/api/team/keys/{owners_own}", t.owner, {"limit_milli": 1})) == (
            404,
            "key_not_found",
        )
        for bad, code in (
            ({"limit_milli": -1}, "limit_milli_out_of_range"),
            ({"limit_milli": 10**16}, "limit_milli_out_of_range"),
            ({"limit_milli": True}, "limit_milli_invalid"),
            ({"limit_period": "week"}, "limit_period_invalid"),
            ({"name": "x"}, "field_unknown"),
        ):
            assert error(await call(served, "PATCH", path, t.owner, bad)) == (422, code), bad
        # The limit applies to the key's next request: one milli-credit refuses it.
        status, body = await call(served, "PATCH", path, t.owner, {"limit_milli": 1})
        assert (status, body["key"]["limit_period"]) == (200, "day")
        status, body, headers = await chat(served, made["secret"])
        assert (status, body["error"]["code"]) == (402, "key_limit_reached")
        assert headers["x-should-retry"] == "false"
        rows = [r for r in await audit_rows(served) if r["action"] == "teams.key_limit_changed"]
        assert [(r["actor_user_id"], r["details"]["before"], r["details"]["after"]) for r in rows] == [
            (
                t.admin.user_id,
                {"limit_milli": None, "limit_period": None},
                {"limit_milli": 10**6, "limit_period": "day"},
            ),
            (t.owner.user_id, {"limit_milli": 10**6, "limit_period": "day"}, {"limit_milli": 1, "limit_period": "day"}),
        ]


async def test_revoking_a_team_key_stops_it_on_every_worker_at_once(
    db_url: str, ollama: Any, redis_url: str, serve: Any
) -> None:
    cfg = config(ollama, db_url)
    cfg["redis_url"] = redis_url
    cfg["plugins"][1]["settings"]["key_cache_seconds"] = 3600  # only the invalidation can make it forget
    async with serve(cfg) as first, serve(cfg) as second:
        t = await team(first)
        made = await team_key(first, t.member, "both workers")
        status, body, _ = await chat(second, made["secret"])
        assert status == 200, body  # the second worker now holds the key's principal in its cache
        status, _ = await call(first, "DELETE", f"/api/team/keys/{made['key']['id']}", t.admin)
        assert status == 200
        deadline = asyncio.get_running_loop().time() + 1.0
        while (status := (await chat(second, made["secret"]))[0]) != 401:
            assert asyncio.get_running_loop().time() < deadline, "the second worker still knows the key"
            await asyncio.sleep(0.02)


async def spend_some(served: Any, t: Team) -> dict[str, int]:
    """One request on the team's account by the admin's and the member's team keys, one on the member's own
    account: the key ids by whose they are."""
    keys = {
        "admin": await team_key(served, t.admin),
        "member": await team_key(served, t.member),
        "own": await own_key(served, t.member),
    }
    await served.gateway.plugin("credits").grant(
        account_id=t.member.account_id, amount_milli=10**9, kind="grant", reference=f"own-{t.member.account_id}"
    )
    for made in keys.values():
        status, body, _ = await chat(served, made["secret"])
        assert status == 200, body
    await until_settled(served.gateway)
    return {name: made["key"]["id"] for name, made in keys.items()}


async def test_billing_and_the_owner_see_the_teams_usage_each_member_their_own(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        other = await team(served)
        keys = await spend_some(served, t)
        await spend_some(served, other)
        for user in (t.owner, t.billing):
            status, body = await call(served, "GET", "/api/team/usage", user)
            assert status == 200, body
            assert {(r["user_id"], r["key_id"]) for r in body["data"]} == {
                (t.admin.user_id, keys["admin"]),
                (t.member.user_id, keys["member"]),
            }
            assert all(r["cost_milli"] > 0 and r["created_at"].endswith("Z") for r in body["data"])
            assert "account_id" not in body["data"][0] and body["account_id"] == t.owner.account_id
        for user in (t.admin, t.member):
            assert error(await call(served, "GET", "/api/team/usage", user)) == (403, "team_forbidden")
        for user, key in ((t.member, keys["member"]), (t.admin, keys["admin"])):
            status, body = await call(served, "GET", "/api/team/usage/mine", user)
            assert status == 200, body
            assert [(r["user_id"], r["key_id"]) for r in body["data"]] == [(user.user_id, key)]
            assert body["account_id"] == t.owner.account_id
        for user in (t.owner, t.billing):
            status, body = await call(served, "GET", "/api/team/usage/mine", user)
            assert (status, body["data"]) == (200, [])
        status, first = await call(served, "GET", "/api/team/usage?limit=1", t.billing)
        status, rest = await call(served, "GET", f"/api/team/usage?limit=1&cursor={first['next_cursor']}", t.billing)
        assert first["data"][0]["id"] > rest["data"][0]["id"] and rest["next_cursor"] is None
        outsider = await register_user(served)
        for path in ("/api/team/usage", "/api/team/usage/mine"):
            assert error(await call(served, "GET", path, outsider)) == (403, "team_required")


async def test_concurrent_changes_of_one_key_take_turns(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        made = await team_key(served, t.member)
        path = f"/api/team/keys/{made['key']['id']}"
        limits = [1000 * (i + 1) for i in range(8)]
        answers = await asyncio.gather(
            *(call(served, "PATCH", path, (t.owner, t.admin)[i % 2], {"limit_milli": n}) for i, n in enumerate(limits))
        )
        assert [status for status, _ in answers] == [200] * len(limits)
        rows = [r["details"] for r in await audit_rows(served) if r["action"] == "teams.key_limit_changed"]
        # Each change read what the one before it left: the audit rows chain, from no limit to the last.
        assert len(rows) == len(limits) and rows[0]["before"]["limit_milli"] is None
        assert all(a["after"] == b["before"] for a, b in itertools.pairwise(rows))
        assert sorted(r["after"]["limit_milli"] for r in rows) == limits
        answers = await asyncio.gather(
            *(call(served, "DELETE", path, (t.owner, t.admin, t.member)[i % 3]) for i in range(9))
        )
        assert [status for status, _ in answers] == [200] * 9
        assert len({body["key"]["revoked_at"] for _, body in answers}) == 1
        assert len([r for r in await audit_rows(served) if r["action"] == "teams.key_revoked"]) == 1
        assert (await chat(served, made["secret"]))[0] == 401


async def test_an_admin_never_acts_on_the_owners_keys_nor_lifts_their_own_limit(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        members = await team_key(served, t.member)
        admins = await team_key(served, t.admin)
        # The member becomes the owner: their keys are the owner's team keys now.
        assert (await call(served, "POST", "/api/team/transfer", t.owner, {"user_id": t.member.user_id}))[0] == 202
        assert (await call(served, "POST", "/api/team/transfer", t.member, {"accept": True}))[0] == 200
        owners = f"/api/team/keys/{members['key']['id']}"
        assert await listed(served, t.admin) == {members["key"]["id"], admins["key"]["id"]}
        assert error(await call(served, "DELETE", owners, t.admin)) == (403, "team_forbidden")
        assert error(await call(served, "PATCH", owners, t.admin, {"limit_milli": 1})) == (403, "team_forbidden")
        status, body, _ = await chat(served, members["secret"])
        assert status == 200, body
        # An admin limits no key of their own; the owner limits theirs and the admin's.
        path = f"/api/team/keys/{admins['key']['id']}"
        assert error(await call(served, "PATCH", path, t.admin, {"limit_milli": 5})) == (403, "team_forbidden")
        assert (await call(served, "PATCH", path, t.member, {"limit_milli": 5}))[0] == 200
        assert error(await call(served, "PATCH", path, t.admin, {"limit_milli": None})) == (403, "team_forbidden")
        assert (await call(served, "PATCH", owners, t.member, {"limit_milli": 10**6}))[0] == 200
        assert (await call(served, "DELETE", owners, t.member))[0] == 200
        assert (await chat(served, members["secret"]))[0] == 401
        status, body = await call(served, "GET", "/api/team/keys", t.owner)  # the former owner, now an admin
        assert {k["id"]: k["limit_milli"] for k in body["data"]} == {
            members["key"]["id"]: 10**6,
            admins["key"]["id"]: 5,
        }
        changes = [r["actor_user_id"] for r in await audit_rows(served) if r["action"].startswith("teams.key_")]
        assert changes == [t.member.user_id] * 3  # the refused attempts wrote nothing


async def test_a_limit_set_after_spending_shows_the_periods_spend_so_far(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        keys = [await team_key(served, user) for user in (t.member, t.member, t.admin)]
        for made in keys[:2]:
            status, body, _ = await chat(served, made["secret"])
            assert status == 200, body
        await until_settled(served.gateway)
        cost = {
            m["key"]["id"]: sum(
                r["cost_milli"] for r in await table_rows(served.gateway, "usage", key_id=m["key"]["id"])
            )
            for m in keys
        }
        for made, period in zip(keys, ("month", "total", "day"), strict=True):
            body = {"limit_milli": 10**6, "limit_period": period}
            assert (await call(served, "PATCH", f"/api/team/keys/{made['key']['id']}", t.owner, body))[0] == 200
        status, listed_keys = await call(served, "GET", "/api/team/keys", t.owner)
        # No limited request has run yet: the spend comes from the usage rows, each key's own.
        spent = {k["id"]: k["spend"]["spent_milli"] for k in listed_keys["data"]}
        assert spent == cost and cost[keys[0]["key"]["id"]] > 0 and cost[keys[2]["key"]["id"]] == 0
        assert {k["id"]: k["spend"]["period_start"] is None for k in listed_keys["data"]} == {
            keys[0]["key"]["id"]: False,
            keys[1]["key"]["id"]: True,
            keys[2]["key"]["id"]: False,
        }
        status, body, _ = await chat(served, keys[0]["secret"])  # now its counter row exists
        assert status == 200, body
        await until_settled(served.gateway)
        status, listed_keys = await call(served, "GET", "/api/team/keys", t.owner)
        now = sum(r["cost_milli"] for r in await table_rows(served.gateway, "usage", key_id=keys[0]["key"]["id"]))
        assert (
            {k["id"]: k["spend"]["spent_milli"] for k in listed_keys["data"]}[keys[0]["key"]["id"]]
            == now
            > cost[keys[0]["key"]["id"]]
        )


async def test_a_banned_admins_session_manages_no_key_and_their_keys_stay_listed(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(teams_config(ollama, db_url, admin=True)) as served:
        site_admin = await register_user(served, admin=True)
        t = await team(served)
        admins = await team_key(served, t.admin)
        members = await team_key(served, t.member)
        status, body = await call(
            served, "POST", f"/api/admin/users/{t.admin.user_id}/ban", site_admin, {"reason": "x"}
        )
        assert status == 200, body
        # The session they had is gone: nothing of the team's keys, not even a revoke.
        for method, path in (("GET", "/api/team/keys"), ("DELETE", f"/api/team/keys/{members['key']['id']}")):
            assert error(await call(served, method, path, t.admin)) == (401, "not_authenticated"), path
        assert (await chat(served, members["secret"]))[0] == 200
        # Their key stops (the ban), and stays in the team's list for the owner, who may revoke it for good.
        assert (await chat(served, admins["secret"]))[0] == 401
        assert await listed(served, t.owner) == {admins["key"]["id"], members["key"]["id"]}
        assert (await call(served, "DELETE", f"/api/team/keys/{admins['key']['id']}", t.owner))[0] == 200
