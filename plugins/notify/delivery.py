"""The sender job's one run: claim due outbox rows, send each once, record what came of it.

What an attempt's outcome (policy.py) does to its row:
- `Sent`: `sent`, with the provider's message id (a status webhook may later say `delivered`);
- `NotConfigured` (the `log` provider): `not_configured`, final: nothing was sent and nothing will be;
- `Permanent`: `failed`, never retried (not a WhatsApp number, blocked, no such template, no message id);
- `Retry`: `retrying` after a backoff that doubles from `first_backoff_seconds` up to `max_backoff_seconds`
  (never shorter than the pair interval), until `max_attempts`, then `failed`. Tenacity decides both (its
  `wait_exponential` and `stop_after_attempt`), but does not drive the attempts: a row waits in the
  database between them, so any worker's next run of the job may take it, and a restart loses nothing;
- `Alert` (token expired, account blocked or locked): `retrying` after `alert_pause_seconds`, so messages
  wait for the operator instead of being burnt one by one, and the admins are alerted once a day per code
  (`provider.alert` rows, and an error in the log).
Every attempt counts in `attempts` and leaves its code in `last_error`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

import orjson
from tenacity import RetryCallState, Retrying, stop_after_attempt, wait_exponential

from edge.db import Database
from plugins.notify import outbox
from plugins.notify.policy import Alert, NotConfigured, Outcome, Permanent, Retry, Sent
from plugins.notify.senders import Message, Sender, masked

log = logging.getLogger("resayil.notify")
# Sends in flight at once within one run: the rows go to different recipients, so nothing is paced here.
PARALLEL = 8


@dataclass(frozen=True)
class Policy:
    """The sender's settings (the plugin's Settings, checked)."""

    batch: int
    pair_seconds: float
    lease_seconds: float
    max_attempts: int
    first_backoff_seconds: float
    max_backoff_seconds: float
    alert_pause_seconds: float

    @cached_property
    def retrying(self) -> Retrying:
        """Asked once per failed attempt, never run: the outbox row is the loop (module docstring)."""
        return Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(
                multiplier=self.first_backoff_seconds, max=self.max_backoff_seconds, min=self.pair_seconds
            ),
        )

    def backoff(self, attempts: int) -> float | None:
        """Seconds until the next attempt after `attempts` failed ones, or None when they are spent."""
        state = RetryCallState(self.retrying, None, (), {})
        state.attempt_number = attempts
        if self.retrying.stop(state):
            return None
        return float(self.retrying.wait(state))


def outcome_values(outcome: Outcome, *, attempts: int, policy: Policy, now: datetime) -> dict[str, Any]:
    """The row's new values after an attempt (the module docstring's table)."""
    values: dict[str, Any] = {"attempts": attempts}
    if isinstance(outcome, Sent):
        return values | {"status": "sent", "provider_message_id": outcome.message_id, "last_error": None}
    if isinstance(outcome, NotConfigured):
        return values | {"status": "not_configured", "last_error": None}
    values["last_error"] = outcome.code[:64]
    wait = policy.backoff(attempts)
    if isinstance(outcome, Permanent) or wait is None:
        return values | {"status": "failed"}
    if isinstance(outcome, Alert):
        wait = policy.alert_pause_seconds
    return values | {"status": "retrying", "next_attempt_at": now + timedelta(seconds=wait)}


AlertAdmins = Callable[[str], Awaitable[None]]


class Delivery:
    """Sends what is due through one `Sender`; `run` is the `notify.send` job's body."""

    def __init__(
        self,
        *,
        database: Database,
        sender: Sender,
        policy: Policy,
        clock: Callable[[], datetime],
        alert: AlertAdmins,
    ) -> None:
        self.db = database
        self.sender = sender
        self.policy = policy
        self.clock = clock
        self.alert = alert

    async def run(self) -> int:
        """One batch: returns how many rows had an attempt."""
        p = self.policy
        rows = await outbox.claim(
            self.db, now=self.clock(), limit=p.batch, lease_seconds=p.lease_seconds, pair_seconds=p.pair_seconds
        )
        gate = asyncio.Semaphore(PARALLEL)

        async def one(row: outbox.Row) -> None:
            async with gate:
                await self._attempt(row)

        await asyncio.gather(*(one(row) for row in rows))
        return len(rows)

    async def _attempt(self, row: outbox.Row) -> None:
        message = Message(
            to=row.recipient,
            language="en" if row.language == "en" else "ar",
            text=row.body,
            event=row.event_name,
            params=tuple(orjson.loads(row.params)),
        )
        try:
            outcome = await self.sender.send(message=message)
        except Exception:
            # A sender never raises for the provider's answer; this is our own bug. Retried like a failure.
            log.exception("a whatsapp sender raised", extra={"fields": {"outbox_id": row.id}})
            outcome = Retry("sender_error")
        now = self.clock()
        values = outcome_values(outcome, attempts=int(row.attempts) + 1, policy=self.policy, now=now)
        values["provider"] = self.sender.name
        if not await outbox.record(self.db, row, values, now=now):
            log.warning("a whatsapp send outlasted its claim", extra={"fields": {"outbox_id": row.id}})
        fields = {
            "outbox_id": row.id,
            "event": row.event_name,
            "to": masked(row.recipient),
            "status": values["status"],
            "code": values.get("last_error"),
        }
        log.info("whatsapp attempt", extra={"fields": fields})
        if isinstance(outcome, Alert) and row.event_name != "provider.alert":
            await self.alert(outcome.code)
