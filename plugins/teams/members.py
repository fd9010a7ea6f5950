"""Team memberships in the database: read and changed here only, always within one account's team.

Every query that names a member also names the team (`account_id`), so a member id from another team finds
nothing: the routes answer 404 for it exactly as for an id nobody has.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from edge.db import Database
from plugins.teams.tables import team_members

# auth_keys' users, read for the names and logins a member list shows (the table's names are kept stable).
_users = sa.table("users", sa.column("id"), sa.column("name"), sa.column("email"), sa.column("phone"))
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


def _membership(row: Any) -> Membership:
    limit = row.monthly_limit_milli
    return Membership(
        account_id=int(row.account_id),
        user_id=int(row.user_id),
        role=row.role,
        home=bool(row.home),
        monthly_limit_milli=None if limit is None else int(limit),
        offered_owner=bool(row.offered_owner),
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

    async def get(self, *, account_id: int, user_id: int) -> Membership | None:
        async with self.db.connect() as conn:
            row = (await conn.execute(sa.select(*_COLUMNS).where(_mine(account_id, user_id)))).first()
        return None if row is None else _membership(row)

    async def found_team(self, *, account_id: int, user_id: int, now: datetime) -> Membership | None:
        """Make the account's own user the owner of its team (the first time they use it); the user's
        membership as it then is (None only if they joined another team meanwhile)."""
        try:
            async with self.db.begin() as conn:
                await conn.execute(
                    team_members.insert().values(
                        account_id=account_id, user_id=user_id, role="owner", home=True, joined_at=now
                    )
                )
        except IntegrityError:
            pass  # a concurrent first call founded it, or the user is in another team
        return await self.of_user(user_id)

    async def listing(self, *, account_id: int) -> list[dict[str, Any]]:
        query = (
            sa.select(*_COLUMNS, _users.c.name, _users.c.email, _users.c.phone)
            .select_from(team_members.outerjoin(_users, _users.c.id == team_members.c.user_id))
            .where(team_members.c.account_id == account_id)
            .order_by(team_members.c.joined_at, team_members.c.user_id)
        )
        async with self.db.connect() as conn:
            return [member_json(row) for row in await conn.execute(query)]

    async def update(self, *, account_id: int, user_id: int, values: dict[str, Any]) -> Membership | None:
        async with self.db.begin() as conn:
            if values:
                await conn.execute(team_members.update().where(_mine(account_id, user_id)).values(**values))
            row = (await conn.execute(sa.select(*_COLUMNS).where(_mine(account_id, user_id)))).first()
        return None if row is None else _membership(row)

    async def remove(self, *, account_id: int, user_id: int) -> bool:
        async with self.db.begin() as conn:
            gone = await conn.execute(
                team_members.delete().where(_mine(account_id, user_id), team_members.c.role != "owner")
            )
        return gone.rowcount == 1

    async def offer(self, *, account_id: int, user_id: int) -> None:
        """Offer the ownership to one member (an earlier offer to another is withdrawn)."""
        async with self.db.begin() as conn:
            await conn.execute(
                team_members.update().where(team_members.c.account_id == account_id).values(offered_owner=False)
            )
            await conn.execute(team_members.update().where(_mine(account_id, user_id)).values(offered_owner=True))

    async def take_ownership(self, *, account_id: int, user_id: int) -> bool:
        """The offered member becomes the owner and the owner an admin, in one transaction; False when no
        offer to this member stands (withdrawn, or already taken)."""
        async with self.db.begin() as conn:
            taken = await conn.execute(
                team_members.update()
                .where(_mine(account_id, user_id), team_members.c.offered_owner.is_(True))
                .values(role="owner", offered_owner=False, monthly_limit_milli=None)
            )
            if taken.rowcount != 1:
                return False
            await conn.execute(
                team_members.update()
                .where(
                    team_members.c.account_id == account_id,
                    team_members.c.role == "owner",
                    team_members.c.user_id != user_id,
                )
                .values(role="admin")
            )
        return True


def member_json(row: Any) -> dict[str, Any]:
    return {
        "user_id": int(row.user_id),
        "role": row.role,
        "name": row.name,
        "email": row.email,
        "phone": row.phone,
        "monthly_limit_milli": None if row.monthly_limit_milli is None else int(row.monthly_limit_milli),
        "ownership_offered": bool(row.offered_owner),
        "joined_at": row.joined_at.isoformat() + "Z",
    }


@dataclass(frozen=True, slots=True)
class TeamMembership:
    """The principal's fact for a team key (edge/context.py): the team (its account) and the member's role."""

    account_id: int
    role: str
