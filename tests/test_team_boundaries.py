"""Team boundaries the permission matrix cannot see from one call: a team key follows its member's role (a
member moved to `billing`, which may hold no keys, stops spending the team's credits at once and starts
again when moved back), and nobody lifts the monthly limit the owner set on them. SQLite and MariaDB."""

from __future__ import annotations

from typing import Any

from tests.test_teams import call, chat, config, team


async def test_a_team_key_stops_while_its_member_is_in_the_billing_role(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        status, made = await call(served, "POST", "/api/team/keys", t.member, {"name": "work"})
        assert status == 201, made
        assert (await chat(served, made["secret"]))[0] == 200
        path = f"/api/team/members/{t.member.user_id}"
        status, _ = await call(served, "PATCH", path, t.admin, {"role": "billing"})
        assert status == 200
        status, body, _ = await chat(served, made["secret"])
        assert (status, body["error"]["code"]) == (403, "team_forbidden"), body
        status, refused = await call(served, "POST", "/api/team/keys", t.member, {"name": "another"})
        assert (status, refused["error"]["code"]) == (403, "team_forbidden")
        status, _ = await call(served, "PATCH", path, t.admin, {"role": "member"})
        assert status == 200
        status, body, _ = await chat(served, made["secret"])
        assert status == 200, body


async def test_an_admin_cannot_lift_the_limit_the_owner_set_on_them(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        mine = f"/api/team/members/{t.admin.user_id}"
        status, body = await call(served, "PATCH", mine, t.owner, {"monthly_limit_milli": 1000})
        assert (status, body["monthly_limit_milli"]) == (200, 1000)
        for change in ({"monthly_limit_milli": None}, {"monthly_limit_milli": 10**12}, {"monthly_limit_milli": 0}):
            status, body = await call(served, "PATCH", mine, t.admin, change)
            assert (status, body["error"]["code"]) == (403, "team_forbidden"), change
        status, listed = await call(served, "GET", "/api/team/members", t.owner)
        assert {m["user_id"]: m["monthly_limit_milli"] for m in listed["data"]}[t.admin.user_id] == 1000
        # The admin still sets the limits of the others, and may step down from admin themselves.
        status, body = await call(
            served, "PATCH", f"/api/team/members/{t.member.user_id}", t.admin, {"monthly_limit_milli": 7}
        )
        assert (status, body["monthly_limit_milli"]) == (200, 7)
        status, body = await call(served, "PATCH", mine, t.admin, {"role": "member"})
        assert (status, body["role"], body["monthly_limit_milli"]) == (200, "member", 1000)
