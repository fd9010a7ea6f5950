"""What the credits plugin announces: `credits.low` and `credits.exhausted` (edge/events.py), to the account's
owner (its first user) in their language.

What is guaranteed:
- `credits.exhausted` is written in the transaction that marks the account as told (`exhausted_notified`):
  the mark and the event commit together, so there is one event per exhaustion (until the next credit),
  and it survives a worker killed at any point after that commit.
- `credits.low` after a grant or an adjustment is written in the transaction that applies it, together
  with the `low_notified` flag it sets.
- `credits.low` after a request's charge is written in a transaction of its own, started off the request
  path once the settlement has committed: the settlement is one stored procedure on MariaDB, or a batch of
  many accounts' charges with leases, and a request must not wait for a notice. A worker killed between
  the two commits loses that one warning (its flag is already set); every other case delivers it.
- Nothing here runs when no line is crossed: a request that crosses none writes nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection

from edge.events import CreditsExhausted, CreditsLow
from edge.services import ACCOUNTS
from plugins.credits import pricing
from plugins.credits.rows import Change, read_balance

if TYPE_CHECKING:
    from edge.gateway import Gateway

log = logging.getLogger("resayil.credits")


@dataclass(frozen=True, slots=True)
class Owner:
    """Who is told about an account: its first user (or, where it has none, the caller whose request crossed
    the line). All None when neither is known."""

    user_id: int | None = None
    locale: str | None = None
    phone: str | None = None


NOBODY = Owner()


class Notices:
    """Builds and publishes the credits events, each in the transaction given."""

    def __init__(
        self, gateway: Gateway, *, plan_milli: Callable[[str | None], int], low_percent: int, top_up_url: str
    ) -> None:
        self.gateway = gateway
        self.plan_milli = plan_milli
        self.low_percent = low_percent
        self.top_up_url = top_up_url

    async def owner(self, conn: AsyncConnection, account_id: int, *, fallback: Owner) -> Owner:
        """The account's first user (the accounts service's owner), else `fallback` (the caller whose request
        it was, if any), as when no plugin provides accounts."""
        accounts = self.gateway.maybe(ACCOUNTS)
        account = None if accounts is None else await accounts.account(account_id, conn=conn)
        if account is None or account.owner_user_id is None:
            return fallback
        return Owner(account.owner_user_id, account.locale, account.phone)

    async def low(self, conn: AsyncConnection, account_id: int, change: Change, *, fallback: Owner = NOBODY) -> None:
        """`credits.low` for a change that crossed the line, in `conn`'s transaction."""
        who = await self.owner(conn, account_id, fallback=fallback)
        plan = self.plan_milli(change.tier)
        event = CreditsLow(
            account_id=account_id,
            user_id=who.user_id,
            locale=who.locale,
            phone=who.phone,
            tier=change.tier,
            balance_milli=change.balance_milli,
            top_up_url=self.top_up_url,
            plan_credits_milli=plan,
            percent_remaining=pricing.percent(change.balance_milli, plan),
            threshold_percent=self.low_percent,
        )
        await self.gateway.events.publish(event, conn=conn)

    async def low_after_charge(self, account_id: int, change: Change, *, fallback: Owner) -> None:
        """`credits.low` for a committed charge, in a transaction of its own (see the module docstring)."""
        try:
            async with self.gateway.database.begin() as conn:
                await self.low(conn, account_id, change, fallback=fallback)
        except Exception:
            log.exception("could not store credits.low; it is lost", extra={"fields": {"account": account_id}})

    async def exhausted(
        self,
        conn: AsyncConnection,
        account_id: int,
        *,
        needed_milli: int,
        model: str | None,
        tier: str | None,
        fallback: Owner,
    ) -> None:
        """`credits.exhausted`, in the transaction that marked the account as told."""
        who = await self.owner(conn, account_id, fallback=fallback)
        state = await read_balance(conn, account_id)
        event = CreditsExhausted(
            account_id=account_id,
            user_id=who.user_id,
            locale=who.locale,
            phone=who.phone,
            tier=tier,
            balance_milli=int(state.balance_milli),
            top_up_url=self.top_up_url,
            available_milli=int(state.balance_milli - state.reserved_milli),
            needed_milli=needed_milli,
            model=model,
        )
        await self.gateway.events.publish(event, conn=conn)
