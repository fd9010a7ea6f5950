"""Team memberships in the database: read and changed here only, always within one account's team.

Every query that names a member also names the team (`account_id`), so a member id from another team finds
nothing: the routes answer 404 for it exactly as for an id nobody has.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.db import Database
from edge.services import UserProfile
from plugins.teams.invitations import InvitationStore
from plugins.teams.policy import permits
from plugins.teams.tables import team_members
from plugins.teams.trail import Actor, note


class Revoke(Protocol):
    def __call__(
        self, *, account_id: int, user_id: int, conn: AsyncConnection | None = None
    ) -> Awaitable[list[int]]: ...


_COLUMNS = (
    team_members.c.account_id,
    team_members.c.user_id,
    team_members.c.role,
    team_members.c.home,
    team_members.c.monthly_limit_milli,
    team_members.c.offered_owner,
    team_members.c.joined_at,
)


@dataclass(frozen=True, slots=True)
class Membership:
    account_id: int
    user_id: int
    role: str
    home: bool
    monthly_limit_milli: int | None
    offered_owner: bool
    joined_at: datetime


def _membership(row: Any) -> Membership:
    limit = row.monthly_limit_milli
    return Membership(
        account_id=int(row.account_id),
        user_id=int(row.user_id),
        role=row.role,
        home=bool(row.home),
        monthly_limit_milli=None if limit is None else int(limit),
        offered_owner=bool(row.offered_owner),
        joined_at=row.joined_at,
    )


def _mine(account_id: int, user_id: int) -> sa.ColumnElement[bool]:
    return sa.and_(team_members.c.account_id == account_id, team_members.c.user_id == user_id)


class MemberStore:
    def __init__(self, *, database: Database) -> None:
        self.db = database

    async def of_user(self, user_id: int) -> Membership | None:
        """The user's one membership, or None."""
        async with self.db.connect() as conn:
            row = (await conn.execute(sa.select(*_COLUMNS).where(team_members.c.user_id == user_id))).first()
        return None if row is None else _membership(row)

    async def get(self, *, account_id: int, user_id: int, conn: AsyncConnection | None = None) -> Membership | None:
        """The member of the team (in `conn`'s transaction when given), or None."""
        if conn is None:
            async with self.db.connect() as own:
                return await self.get(account_id=account_id, user_id=user_id, conn=own)
        row = (await conn.execute(sa.select(*_COLUMNS).where(_mine(account_id, user_id)))).first()
        return None if row is None else _membership(row)

    async def found_team(self, *, account_id: int, actor: Actor) -> Membership | None:
        """Make the account's own user (the actor) the owner of its team (the first time they use it); the
        user's membership as it then is (None only if they joined another team meanwhile)."""
        user_id = actor.user_id
        try:
            async with self.db.begin() as conn:
                await conn.execute(
                    team_members.insert().values(
                        account_id=account_id, user_id=user_id, role="owner", home=True, joined_at=actor.at
                    )
                )
                await note(conn, actor, "team_founded", target=f"user:{user_id}", account_id=account_id, role="owner")
        except IntegrityError:
            pass  # a concurrent first call founded it, or the user is in another team
        return await self.of_user(user_id)

    async def listing(self, *, account_id: int) -> list[Membership]:
        query = (
            sa.select(*_COLUMNS)
            .where(team_members.c.account_id == account_id)
            .order_by(team_members.c.joined_at, team_members.c.user_id)
        )
        async with self.db.connect() as conn:
            return [_membership(row) for row in await conn.execute(query)]

    async def update(self, *, account_id: int, user_id: int, values: dict[str, Any], actor: Actor) -> Membership | None:
        """Change the member's `role` and/or `monthly_limit_milli`; each value that changes is audited. None
        when the team has no such member, or it is the owner now (checked on the locked row: a change checked
        before the member accepted the ownership must not demote the new owner)."""
        async with self.db.begin() as conn:
            before = await _locked(conn, account_id, user_id)
            if before is None or before.role == "owner":
                return None
            changed = {k: v for k, v in values.items() if getattr(before, k) != v}
            if changed:
                await conn.execute(team_members.update().where(_mine(account_id, user_id)).values(**changed))
            spare: dict[str, int] = {}
            if "role" in changed and not permits(role=changed["role"], action="members.invite"):
                # A role that may not invite keeps none of the invitations it sent (say, to a second account).
                spare["invitations_revoked"] = await InvitationStore.revoke_of_member(
                    conn, account_id=account_id, user_id=user_id, email=None, phone=None, at=actor.at
                )
            for field, action in (("role", "role_changed"), ("monthly_limit_milli", "limit_changed")):
                if field in changed:
                    after = changed[field]
                    old = getattr(before, field)
                    details = spare if field == "role" else {}
                    await note(
                        conn,
                        actor,
                        action,
                        target=f"user:{user_id}",
                        account_id=account_id,
                        before=old,
                        after=after,
                        **details,
                    )
            row = (await conn.execute(sa.select(*_COLUMNS).where(_mine(account_id, user_id)))).first()
        return None if row is None else _membership(row)

    async def remove(
        self, *, account_id: int, user_id: int, actor: Actor, revoke: Revoke, person: UserProfile | None
    ) -> list[int] | None:
        """Remove the member and, in the same transaction, revoke their keys on the team's account
        (`revoke`: the ACCOUNTS service's, given the transaction) and the team's open invitations to their
        email or phone (`person`) or sent by them; the revoked keys' ids, or None when the team has no such
        member (or it is the owner)."""
        async with self.db.begin() as conn:
            before = await _locked(conn, account_id, user_id)
            if before is None or before.role == "owner":
                return None
            gone = await conn.execute(
                team_members.delete().where(_mine(account_id, user_id), team_members.c.role != "owner")
            )
            if gone.rowcount != 1:
                return None
            revoked = await revoke(account_id=account_id, user_id=user_id, conn=conn)
            spare = await InvitationStore.revoke_of_member(
                conn,
                account_id=account_id,
                user_id=user_id,
                email=person.email if person else None,
                phone=person.phone if person else None,
                at=actor.at,
            )
            await note(
                conn,
                actor,
                "member_removed",
                target=f"user:{user_id}",
                account_id=account_id,
                role=before.role,
                keys_revoked=revoked,
                invitations_revoked=spare,
            )
        return revoked

    async def offer(self, *, account_id: int, user_id: int, actor: Actor) -> bool:
        """Offer the ownership to one member (an earlier offer to another is withdrawn); False when the actor
        is no longer the owner: checked on their locked row in the transaction that writes the offer, so an
        offer checked just before the ownership moved cannot stand (take_ownership locks that row first)."""
        async with self.db.begin() as conn:
            if not await _lock_owner(conn, account_id, user_id=actor.user_id):
                return False
            await conn.execute(
                team_members.update().where(team_members.c.account_id == account_id).values(offered_owner=False)
            )
            await conn.execute(team_members.update().where(_mine(account_id, user_id)).values(offered_owner=True))
            await note(conn, actor, "ownership_offered", target=f"user:{user_id}", account_id=account_id)
        return True

    async def take_ownership(self, *, account_id: int, actor: Actor) -> bool:
        """The offered member (the actor) becomes the owner and the owner an admin, in one transaction;
        False when no offer to this member stands (withdrawn, or already taken)."""
        user_id = actor.user_id
        async with self.db.begin() as conn:
            await _lock_owner(conn, account_id)  # first, as `offer` does: the two never wait on each other in a circle
            taken = await conn.execute(
                team_members.update()
                .where(_mine(account_id, user_id), team_members.c.offered_owner.is_(True))
                .values(role="owner", offered_owner=False, monthly_limit_milli=None)
            )
            if taken.rowcount != 1:
                return False
            others = sa.and_(
                team_members.c.account_id == account_id,
                team_members.c.role == "owner",
                team_members.c.user_id != user_id,
            )
            previous = await conn.scalar(sa.select(team_members.c.user_id).where(others))
            await conn.execute(team_members.update().where(others).values(role="admin"))
            await note(
                conn,
                actor,
                "ownership_accepted",
                target=f"user:{user_id}",
                account_id=account_id,
                previous_owner=None if previous is None else int(previous),
            )
        return True

    async def standing(self, conn: AsyncConnection, user_id: int) -> tuple[Membership, int, int] | None:
        """The user's membership, how many others are in the team, and how many of those are its owner or
        admins; None in no team."""
        row = (await conn.execute(sa.select(*_COLUMNS).where(team_members.c.user_id == user_id))).first()
        if row is None:
            return None
        member = _membership(row)
        c = team_members.c
        others = sa.and_(c.account_id == member.account_id, c.user_id != user_id)
        counted = (
            await conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.coalesce(sa.func.sum(sa.case((c.role.in_(("owner", "admin")), 1), else_=0)), 0),
                ).where(others)
            )
        ).one()
        return member, int(counted[0]), int(counted[1])


async def _lock_owner(conn: AsyncConnection, account_id: int, *, user_id: int | None = None) -> bool:
    """Lock the team's owner row (a write, so SQLite's write lock too); whether it is `user_id`'s (any
    owner's when None). The owner never has an offer, so the write changes nothing."""
    c = team_members.c
    where = [c.account_id == account_id, c.role == "owner"] + ([c.user_id == user_id] if user_id is not None else [])
    locked = await conn.execute(team_members.update().where(*where).values(offered_owner=False))
    return bool(locked.rowcount == 1)


async def _locked(conn: AsyncConnection, account_id: int, user_id: int) -> Membership | None:
    """The member's row, locked until the transaction ends (MariaDB; SQLite has one writer anyway)."""
    row = (await conn.execute(sa.select(*_COLUMNS).where(_mine(account_id, user_id)).with_for_update())).first()
    return None if row is None else _membership(row)


def member_json(member: Membership, person: UserProfile | None) -> dict[str, Any]:
    """A member as the team's list shows it: the role and limit, and the user's name and logins."""
    return {
        "user_id": member.user_id,
        "role": member.role,
        "name": person.name if person else None,
        "email": person.email if person else None,
        "phone": person.phone if person else None,
        "monthly_limit_milli": member.monthly_limit_milli,
        "ownership_offered": member.offered_owner,
        "joined_at": member.joined_at.isoformat() + "Z",
    }


@dataclass(frozen=True, slots=True)
class TeamMembership:
    """The principal's fact for a team key (edge/context.py): the team (its account) and the member's role."""

    account_id: int
    role: str
