"""The teams service, owned by teams: joining a team while registering, and a user's place in a team.

auth_keys asks it during a registration that carries an invitation token (the portal's link); admin asks it
when banning a user, to say what the ban means for the user's team. Neither knows the teams tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from edge.services.keys import Service


@dataclass(frozen=True, slots=True)
class TeamJoin:
    """The team a new user joined while registering: its account and the role the invitation gave."""

    account_id: int
    role: str
    invitation_id: int


@dataclass(frozen=True, slots=True)
class TeamStanding:
    """A user's place in a team as an admin sees it before acting on the user: the team (its account), the
    user's role, how many other members it has, and how many of those can still manage it (owner, admins)."""

    account_id: int
    role: str
    other_members: int
    other_managers: int


@dataclass(frozen=True, slots=True)
class TeamKeyView:
    """The principal's fact for a team key (edge/context.py), set by teams from its role policy: what of the
    paying (team's) account the key's holder `user_id` may see. `account_usage`: the whole account's usage
    (else only their own); `balance`: the account's balance. A principal without it sees its account's."""

    user_id: int
    account_usage: bool
    balance: bool


class Teams(Protocol):
    async def join_registering(
        self, conn: AsyncConnection, *, token: str, user_id: int, email: str, phone: str, ip: str | None
    ) -> TeamJoin:
        """Inside the registration's transaction `conn`: use the invitation `token` for the user just
        inserted (`email` and `phone` in their stored normal forms), make them a member with its role and
        audit it. The invitation must be open, unexpired and addressed to that email or phone; otherwise
        this raises the refusal the registrant sees (404 `invitation_not_found`, 410 `invitation_expired`,
        403 `invitation_not_yours`), and the caller lets it roll the whole registration back. Two
        registrations with one token: one joins, the other gets 404 (the token is used)."""
        ...

    async def standing(self, user_id: int, *, conn: AsyncConnection | None = None) -> TeamStanding | None:
        """The user's team and role, or None when they are in no team (any int is safe to ask for)."""
        ...


TEAMS: Service[Teams] = Service("teams")
