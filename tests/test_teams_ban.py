"""Banning a team's owner (or a member) says what happens to the team, and it happens: the banned user's
own keys stop; the other members' keys keep working and keep billing the team's account; the team's admins
keep managing it; the answer and the ban's audit row name the team. SQLite and MariaDB."""

from __future__ import annotations

from typing import Any

from edge.services import CREDITS
from tests.support.admin import chat
from tests.support.billing_admin import audit_rows
from tests.support.credits import until_settled
from tests.support.portal import LoggedIn, create_key, login, register_user, set_tier
from tests.support.teams import FUNDS, call, code, invite, teams_config


async def _join(served: Any, owner: LoggedIn, user: LoggedIn, role: str) -> str:
    """`user` joins `owner`'s team in `role`; the secret of a team key they make."""
    joining = await invite(served, owner, role=role, email=user.email)
    assert (await call(served, "POST", f"/api/team/invitations/{joining['token']}/accept", user))[0] == 200
    status, key = await call(served, "POST", "/api/team/keys", user, {"name": f"{role} key"})
    assert status == 201, key
    return str(key["secret"])


async def test_banning_a_team_owner_says_what_happens_to_the_team_and_it_does(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(teams_config(ollama, db_url, admin=True)) as served:
        admin = await register_user(served, admin=True)
        owner = await register_user(served, tier="enterprise")
        await served.gateway.service(CREDITS).grant(
            account_id=owner.account_id, amount_milli=FUNDS, kind="grant", idempotency_key="seed-ban"
        )
        helper, member = await register_user(served), await register_user(served)
        owners_key = await create_key(served, owner)
        helpers_key = await _join(served, owner, helper, "admin")
        members_key = await _join(served, owner, member, "member")
        assert [await chat(served, k) for k in (owners_key, helpers_key, members_key)] == [200, 200, 200]
        await until_settled(served.gateway, owner.account_id)
        # The admin's page of each user names their team and role; a user in no team has none.
        for user, role, others in ((owner, "owner", 2), (member, "member", 2)):
            status, page = await call(served, "GET", f"/api/admin/users/{user.user_id}", admin)
            assert status == 200 and page["team"] == {
                "account_id": owner.account_id,
                "role": role,
                "other_members": others,
                "other_managers": 1 if role == "owner" else 2,
            }, page
        assert (await call(served, "GET", f"/api/admin/users/{admin.user_id}", admin))[1]["team"] is None

        status, body = await call(served, "POST", f"/api/admin/users/{owner.user_id}/ban", admin, {"reason": "fraud"})
        assert status == 200 and body["user"]["banned"] is True, body
        team = body["team"]
        effect = team.pop("effect")
        assert team == {
            "account_id": owner.account_id,
            "role": "owner",
            "other_members": 2,
            "other_managers": 1,
            "members_keys": "keep_working",
        }
        assert "keep their keys" in effect and "below Enterprise" in effect
        # What the answer said: the owner's keys stop, the members' keep working on the team's account ...
        assert await chat(served, owners_key) == 401
        assert await chat(served, members_key) == 200 and await chat(served, helpers_key) == 200
        assert code((await login(served, login=owner.email, password=owner.password))[:2]) == (403, "account_banned")
        # ... the team's admin still manages it, and nobody can take the ownership while the owner is banned.
        status, members = await call(served, "GET", "/api/team/members", helper)
        assert status == 200 and len(members["data"]) == 3
        assert code(await call(served, "POST", "/api/team/transfer", helper, {"accept": True})) == (
            409,
            "no_ownership_offer",
        )
        row = [r for r in await audit_rows(served) if r["action"] == "admin.ban_user"][-1]
        assert row["details"]["team"] == {"account_id": owner.account_id, "role": "owner", "other_members": 2}
        # The lever the answer names: below Enterprise the members' keys pause too.
        await set_tier(served, account_id=owner.account_id, tier="pro")
        assert await chat(served, members_key) == 403
        await set_tier(served, account_id=owner.account_id, tier="enterprise")
        assert await chat(served, members_key) == 200
        # Lifting the ban restores the owner's keys; the unban answer has no team part.
        status, body = await call(served, "POST", f"/api/admin/users/{owner.user_id}/unban", admin, {"reason": "ok"})
        assert status == 200 and "team" not in body
        assert await chat(served, owners_key) == 200


async def test_banning_a_member_stops_only_their_keys_and_a_user_in_no_team_has_no_team_part(
    db_url: str, ollama: Any, serve: Any
) -> None:
    async with serve(teams_config(ollama, db_url, admin=True)) as served:
        admin = await register_user(served, admin=True)
        owner = await register_user(served, tier="enterprise")
        await served.gateway.service(CREDITS).grant(
            account_id=owner.account_id, amount_milli=FUNDS, kind="grant", idempotency_key="seed-ban-member"
        )
        member, other, loner = (await register_user(served), await register_user(served), await register_user(served))
        members_key = await _join(served, owner, member, "member")
        others_key = await _join(served, owner, other, "admin")
        owners_key = await create_key(served, owner)

        status, body = await call(served, "POST", f"/api/admin/users/{member.user_id}/ban", admin, {"reason": "x"})
        assert status == 200
        team = body["team"]
        assert (team["account_id"], team["role"], team["other_members"], team["other_managers"]) == (
            owner.account_id,
            "member",
            2,
            2,
        )
        assert "member's keys" in team["effect"]
        assert await chat(served, members_key) == 401
        assert await chat(served, others_key) == 200 and await chat(served, owners_key) == 200

        status, body = await call(served, "POST", f"/api/admin/users/{loner.user_id}/ban", admin, {"reason": "x"})
        assert status == 200 and body["team"] is None
        row = [r for r in await audit_rows(served) if r["action"] == "admin.ban_user"][-1]
        assert "team" not in row["details"]
