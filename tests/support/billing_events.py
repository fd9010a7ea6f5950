"""Billing's own event types, registered without the billing plugin, so notify's tests publish exactly what
billing publishes (a field billing renames fails them) without its routes, jobs and MyFatoorah. Register
with `serve(..., plugins=[BillingEvents()])`."""

from __future__ import annotations

from edge.events import Event
from edge.hookspecs import hookimpl
from plugins.billing.events import BILLING_EVENTS
from plugins.billing.lifecycle import LIFECYCLE_EVENTS


class BillingEvents:
    """Registers billing's event types, as the billing plugin does."""

    name = "billing_events_test"

    @hookimpl
    def resayil_event_types(self) -> list[type[Event]]:
        return [*BILLING_EVENTS, *LIFECYCLE_EVENTS]
