"""WhatsApp notifications (issue 18): the ten events, in Arabic and English, each delivered once.

Each event (`resayil_event`) becomes outbox rows, one per recipient, under a de-duplication key
(recipients.py, notices.py, outbox.py); the single-runner job `notify.send` sends what is due through the
configured provider, paced per recipient, retried with backoff, stopped by permanent errors
(delivery.py). The provider comes from the environment (provider.py): `log` by default, which sends
nothing and records `not_configured`. Templates are checked when the plugin is built, so a bad one stops
startup and `check-config`, never a send. Users' opt-outs are the `PREFERENCES` service
(preferences.py), which auth_keys' `PATCH /api/me` checks and saves. Routes: the admins' outbox (`GET
/api/admin/outbox`, `POST /api/admin/outbox/{id}/resend`), fail2ban's `POST /internal/fail2ban` (loopback
and token only), which publishes `ip.banned`; and the Cloud API's signed status webhooks
(`/api/notify/webhooks/whatsapp`, statuses.py), which mark messages delivered or failed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edge.clock import utc_now
from edge.events import Event
from edge.hookspecs import hookimpl
from edge.jobs import Job
from edge.services import ACCOUNTS, PREFERENCES
from edge.settings import ConfigError
from plugins.notify import outbox, provider, routes, statuses, templates
from plugins.notify.delivery import Delivery, Policy
from plugins.notify.notices import IpBanned, Links, Notice, notice
from plugins.notify.preferences import NotifyPreferences
from plugins.notify.recipients import ADMIN_PHONES, Addressing, admin_phones
from plugins.notify.senders import build_sender

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from edge.gateway import Gateway

log = logging.getLogger("resayil.notify")
FAIL2BAN_TOKEN = "RESAYIL_FAIL2BAN_TOKEN"
MIN_TOKEN = 16


class Plugin:
    """WhatsApp notifications through a durable outbox; see the module docstring."""

    @dataclass
    class Settings:
        send_every_seconds: float = 2.0
        batch: int = 20
        # WhatsApp's pair rate: about one message every 6 s to one recipient.
        pair_interval_seconds: float = 6.0
        max_attempts: int = 6
        first_backoff_seconds: float = 30.0
        max_backoff_seconds: float = 3600.0
        # After a token or account error: how long messages wait for the operator before the next try.
        alert_pause_seconds: float = 900.0
        # A sender's claim on a row; a sender that dies mid-send holds it this long.
        lease_seconds: float = 120.0
        # An operator's copy of templates/ (every event's .ar.txt and .en.txt); empty: the shipped ones.
        templates_dir: str | None = None
        quickstart_path: str = "/#/quickstart"
        billing_path: str = "/#/billing"
        receipt_path: str = "/#/billing/orders/{order_id}"

    def __init__(self, settings: Plugin.Settings) -> None:
        s = settings
        where = "plugins.notify.settings"
        for name in ("send_every_seconds", "lease_seconds", "first_backoff_seconds", "max_backoff_seconds"):
            if not getattr(s, name) > 0:
                raise ConfigError(f"{where}.{name}: must be more than 0")
        if s.batch < 1 or s.max_attempts < 1 or s.pair_interval_seconds < 0 or s.alert_pause_seconds < 0:
            raise ConfigError(f"{where}: batch and max_attempts must be at least 1, the pauses at least 0")
        if s.receipt_path.replace("{order_id}", "").count("{") or "{order_id}" not in s.receipt_path:
            raise ConfigError(f"{where}.receipt_path: must hold {{order_id}} and no other placeholder")
        self.settings = s
        # Checked here, so that `check-config` and startup refuse a bad template or setting before any send.
        self.templates = templates.load(Path(s.templates_dir) if s.templates_dir else templates.DIRECTORY)
        self.provider = provider.from_env(os.environ)
        self.admins = admin_phones(os.environ.get(ADMIN_PHONES, ""))
        token = os.environ.get(FAIL2BAN_TOKEN, "").strip()
        if token and len(token) < MIN_TOKEN:
            raise ConfigError(f"{FAIL2BAN_TOKEN}: must have at least {MIN_TOKEN} characters")
        self.fail2ban_token = token or None
        self.webhook_secrets = statuses.Secrets.from_env(os.environ)
        self.policy = Policy(
            batch=s.batch,
            pair_seconds=s.pair_interval_seconds,
            lease_seconds=s.lease_seconds,
            max_attempts=s.max_attempts,
            first_backoff_seconds=s.first_backoff_seconds,
            max_backoff_seconds=s.max_backoff_seconds,
            alert_pause_seconds=s.alert_pause_seconds,
        )
        self._gateway: Gateway | None = None
        self._delivery: Delivery | None = None
        self._addressing: Addressing | None = None
        self._alerted: set[str] = set()

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "notify has not started"
        return self._gateway

    @property
    def delivery(self) -> Delivery:
        assert self._delivery is not None, "notify has not started"
        return self._delivery

    def now(self) -> datetime:
        """UTC-naive, from the gateway's clock (tests move it)."""
        return utc_now(self.gateway.clock)

    # ---- hooks -----------------------------------------------------------------------------------------

    @hookimpl
    async def resayil_startup(self, gateway: Gateway) -> None:
        """Build the sender on the gateway's HTTP session and the addressing of rows; provide `PREFERENCES`."""
        self._gateway = gateway
        sender = build_sender(self.provider, http=gateway.session)
        self._addressing = Addressing(
            database=gateway.database, templates=self.templates, admins=self.admins, free_text=sender.free_text
        )
        self._delivery = Delivery(
            database=gateway.database, sender=sender, policy=self.policy, clock=self.now, alert=self.alert
        )
        gateway.provide(PREFERENCES, NotifyPreferences(database=gateway.database, clock=self.now))
        log.info("whatsapp notifications ready", extra={"fields": {"provider": sender.name}})

    @hookimpl
    def resayil_event_types(self) -> list[type[Event]]:
        return [IpBanned]

    @hookimpl
    async def resayil_event(self, event: Event) -> None:
        """Queue the event's messages, once per recipient whatever is redelivered."""
        s = self.settings
        links = Links(
            public_url=self.gateway.config.server.public_url,
            quickstart_path=s.quickstart_path,
            billing_path=s.billing_path,
            receipt_path=s.receipt_path,
        )
        found = notice(event, links=links, tiers=self.gateway.config.tiers)
        if found is not None:
            await self.queue(found, event_id=event.id)

    @hookimpl
    def resayil_jobs(self, gateway: Gateway) -> list[Job]:
        return [Job("notify.send", self.send, every_seconds=self.settings.send_every_seconds)]

    @hookimpl
    def resayil_routes(self, gateway: Gateway) -> list[BaseRoute]:
        """/api/admin/outbox, /internal/fail2ban and the WhatsApp status webhook."""
        return routes.build(self)

    @hookimpl
    def resayil_migrations(self) -> str:
        """notify_outbox and notify_preferences (branch `notify`)."""
        return str(Path(__file__).parent / "migrations")

    # ---- work ------------------------------------------------------------------------------------------

    async def queue(self, found: Notice, *, event_id: str) -> int:
        assert self._addressing is not None, "notify has not started"
        accounts = self.gateway.maybe(ACCOUNTS)
        rows = await self._addressing.rows(found, event_id=event_id, accounts=accounts, now=self.now())
        return await outbox.enqueue(self.gateway.database, rows)

    async def send(self, gateway: Gateway) -> None:
        """The `notify.send` job: one batch of due messages."""
        await self.delivery.run()

    async def alert(self, code: str) -> None:
        """Tell the admins the provider needs an operator: once a day per code, however many sends fail."""
        day = self.now().date().isoformat()
        alert = Notice(
            event="provider.alert", audience="admin", values={"code": code}, key=f"provider.alert:{code}:{day}"
        )
        # Sends failing together ask at once: one of them asks the database, which decides across workers.
        if alert.key in self._alerted:
            return
        self._alerted.add(alert.key)
        if await self.queue(alert, event_id=f"alert-{code}-{day}"[:32]) or not self.admins:
            log.error("the whatsapp provider needs an operator; messages wait", extra={"fields": {"code": code}})
