"""Attacks on teams by a member who was removed: a second invitation they never used must not bring them back."""

from __future__ import annotations

from typing import Any

import pytest

from plugins.teams.trail import Actor
from tests.support.portal import register_user
from tests.test_teams import call, chat, config, team


@pytest.mark.parametrize("login", ["email", "phone"])
async def test_a_removed_member_cannot_rejoin_with_a_spare_invitation(
    db_url: str, ollama: Any, serve: Any, login: str
) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        fired = await register_user(served, locale="en")
        tokens = []
        for _ in range(2):  # the first link seemed lost, so the admin sent another
            body = {login: getattr(fired, login), "role": "admin"}
            status, invitation = await call(served, "POST", "/api/team/invitations", t.admin, body)
            assert status == 201, invitation
            tokens.append(invitation["token"])
        status, _ = await call(served, "POST", f"/api/team/invitations/{tokens[0]}/accept", fired)
        assert status == 200
        assert (await call(served, "DELETE", f"/api/team/members/{fired.user_id}", t.owner))[0] == 200
        status, body = await call(served, "POST", f"/api/team/invitations/{tokens[1]}/accept", fired)
        assert (status, body["error"]["code"]) == (404, "invitation_not_found")
        status, body = await call(served, "POST", "/api/team/keys", fired, {"name": "back door"})
        assert (status, body["error"]["code"]) == (403, "team_required")
        # An invitation made after the removal (the team changed its mind) still works.
        body = {login: getattr(fired, login), "role": "member"}
        status, invitation = await call(served, "POST", "/api/team/invitations", t.owner, body)
        assert status == 201
        status, joined = await call(served, "POST", f"/api/team/invitations/{invitation['token']}/accept", fired)
        assert (status, joined["role"]) == (200, "member")
        status, made = await call(served, "POST", "/api/team/keys", fired, {"name": "welcome back"})
        assert status == 201
        assert (await chat(served, made["secret"]))[0] == 200


async def test_an_offer_made_by_an_owner_who_just_handed_over_does_not_stand(
    db_url: str, ollama: Any, serve: Any
) -> None:
    """The race an outgoing owner can run: their offer to an accomplice passes the permission check, then the
    member they sold the team to accepts, then the offer is written. It must not let the accomplice take over."""
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        teams = served.gateway.plugin("teams")
        assert (await call(served, "POST", "/api/team/transfer", t.owner, {"user_id": t.admin.user_id}))[0] == 202
        assert (await call(served, "POST", "/api/team/transfer", t.admin, {"accept": True}))[0] == 200
        # The outgoing owner's offer, checked while they were the owner, reaches the database only now.
        actor = Actor(user_id=t.owner.user_id, ip=None, at=teams.now())
        await teams.members.offer(account_id=t.owner.account_id, user_id=t.member.user_id, actor=actor)
        status, body = await call(served, "POST", "/api/team/transfer", t.member, {"accept": True})
        assert (status, body["error"]["code"]) == (409, "no_ownership_offer")
        status, me = await call(served, "GET", "/api/team", t.admin)
        assert me["role"] == "owner"


async def test_a_role_change_checked_before_the_target_became_owner_does_not_demote_the_owner(
    db_url: str, ollama: Any, serve: Any
) -> None:
    """An admin's PATCH of a member passes the check (the target is a member), the member then accepts the
    ownership, then the PATCH is written: it must not make the new owner a plain member (a team with no owner)."""
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        teams = served.gateway.plugin("teams")
        assert (await call(served, "POST", "/api/team/transfer", t.owner, {"user_id": t.member.user_id}))[0] == 202
        assert (await call(served, "POST", "/api/team/transfer", t.member, {"accept": True}))[0] == 200
        actor = Actor(user_id=t.admin.user_id, ip=None, at=teams.now())
        values = {"role": "member", "monthly_limit_milli": 1}
        await teams.members.update(account_id=t.owner.account_id, user_id=t.member.user_id, values=values, actor=actor)
        status, me = await call(served, "GET", "/api/team", t.member)
        assert (status, me["role"], me["monthly_limit_milli"]) == (200, "owner", None)


async def test_a_removed_admins_open_invitations_die_with_their_membership(
    db_url: str, ollama: Any, serve: Any
) -> None:
    """An admin about to be removed invites their own second account as an admin; after the removal, that
    invitation must not bring them back."""
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        alt = await register_user(served, locale="en")
        status, invitation = await call(
            served, "POST", "/api/team/invitations", t.admin, {"email": alt.email, "role": "admin"}
        )
        assert status == 201
        status, owners = await call(
            served, "POST", "/api/team/invitations", t.owner, {"phone": alt.phone, "role": "member"}
        )
        assert status == 201
        assert (await call(served, "DELETE", f"/api/team/members/{t.admin.user_id}", t.owner))[0] == 200
        status, body = await call(served, "POST", f"/api/team/invitations/{invitation['token']}/accept", alt)
        assert (status, body["error"]["code"]) == (404, "invitation_not_found")
        # The owner's own invitation to the same person is not the removed admin's: it stands.
        status, joined = await call(served, "POST", f"/api/team/invitations/{owners['token']}/accept", alt)
        assert (status, joined["role"]) == (200, "member")


async def test_a_demoted_admins_open_invitations_die_with_their_role(db_url: str, ollama: Any, serve: Any) -> None:
    async with serve(config(ollama, db_url)) as served:
        t = await team(served)
        alt = await register_user(served, locale="en")
        body = {"email": alt.email, "role": "admin"}
        status, invitation = await call(served, "POST", "/api/team/invitations", t.admin, body)
        assert status == 201
        path = f"/api/team/members/{t.admin.user_id}"
        assert (await call(served, "PATCH", path, t.owner, {"role": "member"}))[0] == 200
        status, body = await call(served, "POST", f"/api/team/invitations/{invitation['token']}/accept", alt)
        assert (status, body["error"]["code"]) == (404, "invitation_not_found")
