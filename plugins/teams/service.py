"""The TEAMS service (edge/services/teams.py) as this plugin provides it: joining while registering, and a
user's place in a team for an admin about to ban them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services import TeamJoin, TeamStanding
from plugins.teams import answers
from plugins.teams.invitations import TOKEN, Invitee, claim
from plugins.teams.trail import Actor

if TYPE_CHECKING:
    from plugins.teams import Plugin


class TeamService:
    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    async def join_registering(
        self, conn: AsyncConnection, *, token: str, user_id: int, email: str, phone: str, ip: str | None
    ) -> TeamJoin:
        if not isinstance(token, str) or not TOKEN.fullmatch(token):
            raise answers.invitation_not_found()
        actor = Actor(user_id=user_id, ip=ip, at=self.plugin.now())
        # A user who registers through the link has an account of their own too (every user has one; it is
        # what their own keys would bill), which is never the team's: their keys on the team's are team keys.
        invitee = Invitee(user_id=user_id, account_id=0, email=email, phone=phone)
        joined = await claim(conn, token=token, invitee=invitee, actor=actor, registered=True)
        return TeamJoin(account_id=joined.account_id, role=joined.role, invitation_id=joined.id)

    async def standing(self, user_id: int, *, conn: AsyncConnection | None = None) -> TeamStanding | None:
        if not 0 < user_id < 2**63:
            return None
        if conn is None:
            async with self.plugin.gateway.database.connect() as own:
                return await self.standing(user_id, conn=own)
        found = await self.plugin.members.standing(conn, user_id)
        if found is None:
            return None
        member, others, managers = found
        return TeamStanding(
            account_id=member.account_id, role=member.role, other_members=others, other_managers=managers
        )
