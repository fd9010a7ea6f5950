"""Every team action leaves one row in the core audit trail (edge/audit.py), in the transaction that makes it.

Actions, all `teams.<verb>`; the target is the member (`user:<id>`), the invitation (`invitation:<id>`) or
the team key (`key:<id>`), and `details` always names the team (`account_id`):

| action | target | details |
|---|---|---|
| `teams.team_founded` | `user:<owner>` | `role` |
| `teams.invitation_created` | `invitation:<id>` | `role`, `email` or `phone`, `expires_at` |
| `teams.invitation_revoked` | `invitation:<id>` | |
| `teams.invitation_accepted` | `invitation:<id>` | `user_id`, `role`, `registered` (joined while registering) |
| `teams.member_added` | `user:<id>` | `role`, `invitation_id` |
| `teams.member_removed` | `user:<id>` | `role`, `keys_revoked` (their keys' ids, revoked in the same transaction) |
| `teams.role_changed` | `user:<id>` | `before`, `after` |
| `teams.limit_changed` | `user:<id>` | `before`, `after` (milli-credits a month, null: none) |
| `teams.ownership_offered` | `user:<id>` | |
| `teams.ownership_accepted` | `user:<id>` | `previous_owner` |
| `teams.key_revoked` | `key:<id>` | `user_id` (who made the key) |
| `teams.key_limit_changed` | `key:<id>` | `user_id`, `before`, `after` (`limit_milli`, `limit_period`) |

The actor is the user who acted (for an accept, the one joining), `ip` their address; `reason` is empty, as
no team endpoint asks for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from edge import audit


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, from where, and when (the gateway's clock): what each audit row of the action says."""

    user_id: int
    ip: str | None
    at: datetime


async def note(
    conn: AsyncConnection, actor: Actor, action: str, *, target: str, account_id: int, **details: Any
) -> None:
    await audit.record(
        conn,
        actor_user_id=actor.user_id,
        action=f"teams.{action}",
        target=target,
        reason=None,
        ip=actor.ip,
        details={"account_id": account_id, **details},
        at=actor.at,
    )
