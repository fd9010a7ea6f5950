"""Invitations into a team: a one-time token sent to an email or a phone, of which only the hash is kept.

An invitation is accepted at most once, by the user whose own email or phone it names, before it expires
and unless it was revoked; the accepting UPDATE checks all of that in its WHERE and the membership row is
inserted in the same transaction, so two accepts of one token (a replay, a double click) make one member.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from edge.db import Database
from edge.services import PortalUser
from plugins.teams import answers
from plugins.teams.tables import team_invitations, team_members

TOKEN_PREFIX = "rti_"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Invitation:
    id: int
    account_id: int
    role: str
    email: str | None
    phone: str | None
    expires_at: datetime


class InvitationStore:
    def __init__(self, *, database: Database) -> None:
        self.db = database

    async def create(
        self,
        *,
        account_id: int,
        email: str | None,
        phone: str | None,
        role: str,
        invited_by: int,
        now: datetime,
        expires_at: datetime,
    ) -> tuple[int, str]:
        """Store a new invitation; its id and token (the only time the token exists)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.db.begin() as conn:
            result = await conn.execute(
                team_invitations.insert().values(
                    account_id=account_id,
                    token_hash=token_digest(token),
                    email=email,
                    phone=phone,
                    role=role,
                    invited_by=invited_by,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        return int(result.inserted_primary_key[0]), token  # type: ignore[index]

    async def revoke(self, *, account_id: int, invitation_id: int, now: datetime) -> bool:
        """Revoke the team's open invitation; False when the team has no such open invitation."""
        c = team_invitations.c
        async with self.db.begin() as conn:
            done = await conn.execute(
                team_invitations.update()
                .where(
                    c.id == invitation_id, c.account_id == account_id, c.revoked_at.is_(None), c.accepted_at.is_(None)
                )
                .values(revoked_at=now)
            )
        return done.rowcount == 1

    async def accept(self, *, token: str, user: PortalUser, now: datetime) -> Invitation:
        """Make `user` a member of the invitation's team; raises the refusal a client sees otherwise."""
        c = team_invitations.c
        digest = token_digest(token)
        async with self.db.begin() as conn:
            row = (await conn.execute(sa.select(team_invitations).where(c.token_hash == digest))).first()
            if row is None or row.revoked_at is not None or row.accepted_at is not None:
                raise answers.invitation_not_found()
            if row.expires_at <= now:
                raise answers.invitation_expired()
            if not _addressed_to(row.email, row.phone, user):
                raise answers.invitation_not_yours()
            taken = await conn.execute(
                team_invitations.update()
                .where(c.id == row.id, c.accepted_at.is_(None), c.revoked_at.is_(None))
                .values(accepted_at=now, accepted_by=user.user_id)
            )
            if taken.rowcount != 1:
                raise answers.invitation_not_found()
            try:
                await conn.execute(
                    team_members.insert().values(
                        account_id=row.account_id,
                        user_id=user.user_id,
                        role=row.role,
                        home=row.account_id == user.account_id,
                        joined_at=now,
                    )
                )
            except IntegrityError:  # the user is in a team already: the whole accept rolls back
                raise answers.already_in_team() from None
        return Invitation(
            id=int(row.id),
            account_id=int(row.account_id),
            role=row.role,
            email=row.email,
            phone=row.phone,
            expires_at=row.expires_at,
        )


def _addressed_to(email: str | None, phone: str | None, user: PortalUser) -> bool:
    if email is not None:
        return email == user.email.lower()
    return phone is not None and phone == user.phone
