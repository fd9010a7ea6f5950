"""Credits: an exact, append-only ledger of milli-credits; holds before a request, charges after it."""

from __future__ import annotations

import logging
import os
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.cli import Command
from edge.context import RequestContext
from edge.errors import PaymentRequired, ServiceUnavailable
from edge.hookspecs import hookimpl
from edge.jobs import Job
from edge.services import CREDITS, SpendLimits
from edge.settings import ConfigError
from plugins.credits import messages, pricing, reports, settlement
from plugins.credits import scopes as spend_scopes
from plugins.credits.api import routes
from plugins.credits.leases import Leases, Ticket
from plugins.credits.ledger import DATABASE_ERRORS, Ledger
from plugins.credits.notices import NOBODY, Notices, Owner
from plugins.credits.reconcile import arguments, rollup_command, run_reconcile
from plugins.credits.rows import Change, utcnow
from plugins.credits.scopes import LimitReached, Scope
from plugins.credits.service import CreditService
from plugins.credits.settlement import Hold

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection
    from starlette.routing import BaseRoute

    from edge.gateway import Gateway

log = logging.getLogger("resayil.credits")


class Plugin:
    """Holds the worst case before a request goes upstream, charges what it really cost after, and keeps
    every balance equal to the sum of its ledger rows. Serves /api/credits, /api/usage and admin credits."""

    @dataclass
    class Settings:
        # Below this many completion tokens a lowered budget is not worth sending: refuse with 402 instead.
        min_completion_tokens: int = 64
        # credits.low fires when the balance falls below this percentage of the plan's monthly credits.
        low_balance_percent: int = 20
        # A hold lives for timeouts.total_seconds plus this grace; the sweeper releases it after that.
        hold_grace_seconds: int = 120
        sweep_interval_seconds: float = 30.0
        # The calendar the usage chart and month totals count days in.
        timezone: str = "Asia/Kuwait"
        billing_path: str = "/#/billing"
        chart_days: int = 30
        # Leases (see leases.py): each worker reserves room for this many more requests like the last one
        # of an account, takes holds from it in memory and writes settlements in batches. 0: every request
        # holds and settles in its own transactions.
        lease_requests: int = 0
        # How long settled charges wait to be written together, and how long an unused lease is kept.
        settle_batch_ms: int = 20
        lease_idle_ms: int = 500

    def __init__(self, settings: Plugin.Settings) -> None:
        if settings.min_completion_tokens < 1:
            raise ConfigError("plugins.credits.settings.min_completion_tokens: must be at least 1")
        if not 0 <= settings.low_balance_percent <= 100:
            raise ConfigError("plugins.credits.settings.low_balance_percent: must be between 0 and 100")
        if settings.sweep_interval_seconds <= 0 or settings.hold_grace_seconds < 0:
            raise ConfigError(
                "plugins.credits.settings: sweep_interval_seconds and hold_grace_seconds must be positive"
            )
        if not 1 <= settings.chart_days <= 366:
            raise ConfigError("plugins.credits.settings.chart_days: must be between 1 and 366")
        if not 0 <= settings.lease_requests <= 1000:
            raise ConfigError("plugins.credits.settings.lease_requests: must be between 0 and 1000")
        if not 1 <= settings.settle_batch_ms <= 1000 or not 10 <= settings.lease_idle_ms <= 60_000:
            raise ConfigError("plugins.credits.settings: settle_batch_ms must be 1-1000 and lease_idle_ms 10-60000")
        try:
            self.tz = zoneinfo.ZoneInfo(settings.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"plugins.credits.settings.timezone: unknown time zone {settings.timezone!r}") from None
        self.settings = settings
        self._gateway: Gateway | None = None
        self._ledger: Ledger | None = None
        self._leases: Leases | None = None
        self._notices: Notices | None = None

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            raise RuntimeError("the credits plugin has not started")
        return self._gateway

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("the credits plugin has not started")
        return self._ledger

    @property
    def notices(self) -> Notices:
        if self._notices is None:
            raise RuntimeError("the credits plugin has not started")
        return self._notices

    @property
    def hold_seconds(self) -> float:
        """How long a hold (or a silent worker's lease) lives before the sweeper releases it."""
        return self.gateway.config.timeouts.total_seconds + self.settings.hold_grace_seconds

    @property
    def top_up_url(self) -> str:
        return self.gateway.config.server.public_url.rstrip("/") + self.settings.billing_path

    # ---- lifecycle -----------------------------------------------------------------------------------------

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        """Open the ledger on the shared database and provide the `CREDITS` service."""
        self._gateway = gateway
        gateway.provide(CREDITS, CreditService(self))
        self._ledger = Ledger(
            gateway.database,
            plans={name: pricing.plan_milli(gateway, name) for name in gateway.config.tiers},
            low_percent=self.settings.low_balance_percent,
        )
        self._notices = Notices(
            gateway,
            plan_milli=self._ledger.plan_milli,
            low_percent=self.settings.low_balance_percent,
            top_up_url=self.top_up_url,
        )
        if self.settings.lease_requests:
            self._leases = Leases(
                self._ledger,
                requests=self.settings.lease_requests,
                batch_seconds=self.settings.settle_batch_ms / 1000,
                idle_seconds=self.settings.lease_idle_ms / 1000,
                ttl_seconds=self.hold_seconds,
            )

    @hookimpl
    async def resayil_shutdown(self, gateway: Gateway) -> None:
        """Write what leases have settled and give their room back."""
        if self._leases is not None:
            await self._leases.stop()

    @hookimpl
    def resayil_jobs(self) -> list[Job]:
        """`credits.sweep`: release expired holds (and dead workers' leases), on one worker of all."""
        return [Job("credits.sweep", self._sweep, every_seconds=self.settings.sweep_interval_seconds)]

    async def _sweep(self, gateway: Gateway) -> None:
        await self.ledger.release_expired()

    @hookimpl
    def resayil_migrations(self) -> str:
        """The credits tables' Alembic revisions."""
        return str(Path(__file__).parent / "migrations")

    @hookimpl
    def resayil_commands(self) -> list[Command]:
        """`python -m edge reconcile` (balances, ledger, holds, roll-ups) and `credits rollup-rebuild`."""
        return [
            Command(
                "reconcile",
                "check every balance against its ledger and live holds; exit 1 on any difference",
                run_reconcile,
                arguments,
            ),
            rollup_command(),
        ]

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        """/api/credits, /api/usage, /api/usage.csv and the admin credits endpoints."""
        return routes(self)

    # ---- the request path ----------------------------------------------------------------------------------

    @hookimpl
    async def resayil_reserve(self, ctx: RequestContext) -> None:
        """Hold the request's worst case against the available balance; lower the completion budget to what
        the balance pays for, or refuse with 402 when not even a useful minimum fits."""
        principal = ctx.principal
        if principal is None or principal.account_id is None or ctx.model is None:
            return  # open access mode: nobody pays
        account = principal.account_id
        multiplier = pricing.worst_multiplier(self.gateway, ctx)
        if multiplier <= 0:
            return  # a free model (multiplier 0 in the YAML) costs nothing, so there is nothing to hold
        prompt = pricing.prompt_bound(ctx)
        budget = ctx.completion_budget
        expires = utcnow() + timedelta(seconds=self.hold_seconds)
        # A key (or member) with a spend limit holds against it in the same transaction as the balance, so
        # its requests take their holds from the database, not from a lease; without one, nothing changes.
        limits = principal.fact(SpendLimits) if principal.facts else None
        scopes = spend_scopes.in_order(limits.limits, now=self.gateway.clock.time(), tz=self.tz) if limits else ()
        leases = None if scopes else self._leases
        ticket: Ticket | None = None

        async def take(completion: int, *, first: bool = False) -> str | None:
            nonlocal ticket
            amount = pricing.hold_milli(prompt=prompt, completion=completion, multiplier=multiplier)
            try:
                if leases is not None:
                    ticket = await leases.take(
                        account_id=account, amount_milli=amount, tier=principal.tier, patient=first
                    )
                    return os.urandom(12).hex() if ticket is not None else None
                return await self.ledger.hold(
                    account_id=account,
                    amount_milli=amount,
                    request_id=ctx.request_id,
                    tier=principal.tier,
                    expires_at=expires,
                    scopes=scopes,
                )
            except LimitReached:
                return None  # the room left in each limit is read below, with the balance's
            except DATABASE_ERRORS:
                # Nothing is served unpaid: without the ledger the request waits for it to come back.
                log.exception("could not take a hold", extra={"fields": {"request_id": ctx.request_id}})
                raise ServiceUnavailable(
                    "Billing is unavailable for a moment, so the request was not run; please try again shortly.",
                    code="billing_unavailable",
                    headers={"retry-after": "5"},
                ) from None

        completion = budget
        hold_id = await take(budget, first=True)
        floor = min(self.settings.min_completion_tokens, budget)
        available = 0
        binding: Scope | None = None  # what refused: a limit's scope, or None for the balance
        # Another request may take what we just saw between the read and the hold: look again, a few times.
        for _ in range(3):
            if hold_id is not None:
                break
            available = (await self.ledger.state(account))["available_milli"]
            if leases is not None:
                available += leases.spare(account)  # this worker's own room counts as available to it
            binding = None
            for scope, room in await self.ledger.rooms(scopes, account_id=account):
                if room < available:
                    available, binding = room, scope
            completion = min(
                budget, pricing.affordable_completion(available_milli=available, prompt=prompt, multiplier=multiplier)
            )
            if completion < floor:
                break
            hold_id = await take(completion)
        if hold_id is None:
            if binding is not None:
                raise self._limit_reached(binding, locale=principal.locale)
            needed = pricing.hold_milli(prompt=prompt, completion=floor, multiplier=multiplier)
            await self._refuse(ctx, account=account, needed_milli=needed, available_milli=available)
            return
        # The budget the hold pays for; the edge sends it upstream as `max_tokens` (and as
        # `max_completion_tokens` when the client used that), the cap Ollama obeys.
        ctx.max_tokens = completion
        if completion < budget:
            ctx.response_headers["x-resayil-completion-budget"] = str(completion)
        ctx.extras["credits"] = Hold(
            hold_id,
            account,
            pricing.hold_milli(prompt=prompt, completion=completion, multiplier=multiplier),
            multiplier,
            completion,
            prompt,
            ticket,
            scoped=bool(scopes),
        )

    def _limit_reached(self, scope: Scope, *, locale: str) -> PaymentRequired:
        """402 `key_limit_reached` (`member_limit_reached`): the limit, its period and when it resets."""
        resets = scope.resets_at(self.tz)
        resets_at = resets.isoformat() + "Z" if resets is not None else None
        limit = scope.limit.limit_milli
        return PaymentRequired(
            messages.limit_reached(
                locale=locale, kind=scope.kind, period=scope.period, limit_milli=limit, resets_at=resets_at
            ),
            code=f"{scope.kind}_limit_reached",
            type="insufficient_quota",
            extra={"limit": limit, "period": scope.period, "resets_at": resets_at},
        )

    async def _refuse(self, ctx: RequestContext, *, account: int, needed_milli: int, available_milli: int) -> None:
        principal = ctx.principal
        assert principal is not None
        url = self.top_up_url

        async def announce(conn: AsyncConnection) -> None:
            await self.notices.exhausted(
                conn,
                account,
                needed_milli=needed_milli,
                model=ctx.model_name,
                tier=principal.tier,
                fallback=Owner(principal.user_id, principal.locale),
            )

        await self.ledger.mark_exhausted(account, announce=announce)
        raise PaymentRequired(
            messages.insufficient(
                locale=principal.locale, needed_milli=needed_milli, available_milli=available_milli, top_up_url=url
            ),
            code="insufficient_quota",
            type="insufficient_quota",
            extra={"top_up_url": url},
        )

    @hookimpl
    async def resayil_settle(self, ctx: RequestContext) -> None:
        """Replace the hold with the real charge at the route taken and record the usage row, once."""
        hold = ctx.extras.get("credits")
        if not isinstance(hold, Hold):
            return
        charge, usage_row = settlement.bill(ctx, hold, day=datetime.now(self.tz).date())
        change: Change | None
        if hold.ticket is not None:
            assert self._leases is not None
            settling = self._leases.settle(hold.ticket, charge_id=hold.id, charge_milli=charge, usage_row=usage_row)
            if charge == 0:
                # Nothing comes off the balance, so there is nothing to announce: the usage row goes with the
                # next batch, and an error answer (sent once settlement returns) does not wait for that.
                self.gateway.spawn(settling)
                return
            change = await settling
        else:
            change = await self.ledger.settle(
                hold_id=hold.id,
                account_id=hold.account_id,
                hold_milli=hold.amount_milli,
                charge_milli=charge,
                usage_row=usage_row,
                scoped=hold.scoped,
            )
        if change is None:
            log.info("hold already settled or released", extra={"fields": {"request_id": ctx.request_id}})
            return
        if change.crossed_low:
            # Off the request path, after the settlement's commit (notices.py says what that guarantees).
            caller = Owner(ctx.principal.user_id, ctx.principal.locale) if ctx.principal else NOBODY
            self.gateway.spawn(self.notices.low_after_charge(hold.account_id, change, fallback=caller))

    # ---- what the `CREDITS` service (service.py), the admin API and tests call -----------------------------

    async def grant(
        self,
        *,
        account_id: int,
        amount_milli: int,
        kind: str,
        reference: str,
        actor: str | int | None = None,
        reason: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> dict[str, Any]:
        """Add credits (kind grant, subscription, topup, refund or adjustment) as one ledger row, in the
        caller's transaction when `conn` is given.

        Idempotent by (kind, reference): a repeat returns the first row, with `created` False. Raises
        ValueError for a bad kind or amount, and edge.services.BalanceTooLow when a negative adjustment would take
        the available balance below zero.
        """
        change = await self.ledger.credit(
            account_id=account_id,
            amount_milli=amount_milli,
            kind=kind,
            reference=reference,
            actor=None if actor is None else str(actor),
            reason=reason,
            announce_low=lambda conn, change: self.notices.low(conn, account_id, change),
            conn=conn,
        )
        assert change.row is not None
        return {**change.row, "created": change.created}

    async def balance(self, account_id: int) -> dict[str, int]:
        """{account_id, balance_milli, reserved_milli, available_milli} for one account."""
        return await self.ledger.state(account_id)

    async def month_usage(self, account_id: int) -> dict[str, Any]:
        """This calendar month's totals (settings.timezone): requests, tokens and milli-credits spent."""
        return await reports.month_usage(
            self.gateway.database, account_id=account_id, today=datetime.now(self.tz).date()
        )
