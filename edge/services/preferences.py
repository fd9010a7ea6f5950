"""The notification preferences service, owned by notify: which optional WhatsApp notices a user gets.

auth_keys owns the profile (`GET` / `PATCH /api/me`), notify owns the notices. A `PATCH /api/me` body's
`notifications` object, e.g. `{"credits.low": false, "subscription.renewal_due": true}`, goes to `check`,
whose FieldError joins the request's other bad fields in the one 422 (edge/inputs.py); the checked change
is then `save`d on the connection of the profile's own transaction, so a request changes both or neither.
`current` is what `GET /api/me` shows. Events are named as the outbox names them; only the optional ones
can be turned off, every other notice always goes. With no plugin providing this service the field is
refused (auth_keys), never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from edge.services.keys import Service

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, slots=True)
class NotificationChoices:
    """Optional notices on (True) or off (False), by event name, in a fixed order."""

    choices: tuple[tuple[str, bool], ...]

    def as_json(self) -> dict[str, bool]:
        return dict(self.choices)


class Preferences(Protocol):
    def check(self, value: object) -> NotificationChoices:
        """The body's `notifications` value as a change, or a FieldError (edge.inputs): `notifications_invalid`
        (not an object), `notifications_unknown_event`, `notifications_always_sent` (a notice that cannot be
        turned off), `notifications_not_boolean`. Names are matched exactly, case included."""
        ...

    async def save(self, conn: AsyncConnection, *, user_id: int, change: NotificationChoices) -> None:
        """Store a checked change for the user, inside the caller's transaction; unnamed events keep theirs."""
        ...

    async def current(self, user_id: int) -> NotificationChoices:
        """Every optional notice for the user: on unless they turned it off."""
        ...


PREFERENCES: Service[Preferences] = Service("preferences")
