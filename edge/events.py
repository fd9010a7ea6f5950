"""Domain events: one frozen dataclass per event, and the registry that turns stored rows back into them.

An event is published through `gateway.events` (edge/outbox.py), stored in the `events` table, and
delivered to every `resayil_event(event)` implementation at least once. Consumers receive these typed
objects, never dicts; they match on the class (`isinstance(event, CreditsLow)`) and de-duplicate on
`event.id`, which is fixed when the event is built and never changes across redeliveries.

The core's events are below. A plugin adds its own (billing's `topup.paid`, teams' `ip.banned`, ...) by
defining a subclass of `Event` in its own package, with a unique `event_name`, and returning it from
`resayil_event_types`; no core edit. Field values are what JSON carries plus dates: int (money is
integer milli-credits or fils, never a float), str, bool, None, `datetime.date` and `datetime.datetime`
(UTC-naive), so a stored row decodes to the same event on any worker.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

import orjson

from edge.settings import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


def new_event_id() -> str:
    """32 hex digits: milliseconds since the epoch, then 80 random bits. Unique, and sorted by time."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


@dataclass(frozen=True, kw_only=True)
class Event:
    """A domain event. Subclasses set `event_name` ("noun.happened") and add their fields."""

    event_name: ClassVar[str] = ""
    id: str = field(default_factory=new_event_id)


# ---- accounts (plugins/auth_keys) ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Registration(Event):
    """Who registered: their account, user, contact and language, and the plan the account started on."""

    account_id: int
    user_id: int
    user_name: str
    email: str
    phone: str  # E.164
    locale: str
    tier: str


@dataclass(frozen=True, kw_only=True)
class UserRegistered(Registration):
    """A new account and its first user, published in the registration's transaction."""

    event_name: ClassVar[str] = "user.registered"


@dataclass(frozen=True, kw_only=True)
class EnterpriseRegistered(Registration):
    """A registration on the Enterprise plan (besides its `user.registered`), for the admins."""

    event_name: ClassVar[str] = "enterprise.registered"


# ---- credits (plugins/credits) -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CreditNotice(Event):
    """Whom a credits event concerns: the account and its owner (the account's first user), to be told in
    their language on their phone. The owner fields are None when no accounts plugin has users."""

    account_id: int
    user_id: int | None
    locale: str | None
    phone: str | None
    tier: str | None
    balance_milli: int
    top_up_url: str


@dataclass(frozen=True, kw_only=True)
class CreditsLow(CreditNotice):
    """The balance has just fallen below `threshold_percent` of the plan's monthly credits (once a crossing)."""

    event_name: ClassVar[str] = "credits.low"
    plan_credits_milli: int
    percent_remaining: int
    threshold_percent: int


@dataclass(frozen=True, kw_only=True)
class CreditsExhausted(CreditNotice):
    """A request was refused (402) for want of credits: the first refusal since the last credit."""

    event_name: ClassVar[str] = "credits.exhausted"
    available_milli: int
    needed_milli: int
    model: str | None


# ---- the cloud budget (plugins/failover) ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CloudBudget(Event):
    """The day's cloud requests (`day` in the failover plugin's time zone) against the daily cap."""

    day: date
    used: int
    cap: int
    percent: int


@dataclass(frozen=True, kw_only=True)
class CloudBudget80(CloudBudget):
    """The day's cloud requests reached 80% of the cap (once a day)."""

    event_name: ClassVar[str] = "cloud.budget_80"


@dataclass(frozen=True, kw_only=True)
class CloudBudget100(CloudBudget):
    """The day's cloud cap is reached: local models only until midnight (once a day)."""

    event_name: ClassVar[str] = "cloud.budget_100"


CORE_EVENTS: tuple[type[Event], ...] = (
    UserRegistered,
    EnterpriseRegistered,
    CreditsLow,
    CreditsExhausted,
    CloudBudget80,
    CloudBudget100,
)


# ---- stored form ---------------------------------------------------------------------------------------------


def encode(event: Event) -> bytes:
    """The event's fields but its id, as JSON (dates and datetimes in ISO form)."""
    values = {f.name: getattr(event, f.name) for f in dataclasses.fields(event) if f.name != "id"}
    return orjson.dumps(values)


def _hints(cls: type[Event]) -> dict[str, Any]:
    return {f.name: get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}


def _decode_value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    if hint is date:
        return date.fromisoformat(value)
    if hint is datetime:
        return datetime.fromisoformat(value)
    return value


class EventTypes:
    """The event classes of one gateway, by name: the core's and those plugins return from
    `resayil_event_types`."""

    def __init__(self, groups: Iterable[Iterable[type[Event]] | None]) -> None:
        self.by_name: dict[str, type[Event]] = {}
        self._hints: dict[str, dict[str, Any]] = {}
        for group in groups:
            for cls in group or ():
                self.add(cls)

    def add(self, cls: type[Event]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Event) and dataclasses.is_dataclass(cls)):
            raise ConfigError(f"resayil_event_types: expected edge.events.Event dataclasses, got {cls!r}")
        name = cls.event_name
        if not _NAME.match(name) or len(name) > 64:
            raise ConfigError(f"event class {cls.__qualname__}: event_name {name!r} is not like 'noun.happened'")
        known = self.by_name.get(name)
        if known is not None and known is not cls:
            raise ConfigError(f"event {name!r}: both {known.__qualname__} and {cls.__qualname__} claim it")
        self.by_name[name] = cls
        self._hints[name] = _hints(cls)

    def check(self, event: Event) -> str:
        """The event's name, once it is known to be one this gateway can decode again."""
        name = type(event).event_name
        if self.by_name.get(name) is not type(event):
            raise TypeError(f"{type(event).__qualname__} is not a registered event type (resayil_event_types)")
        return name

    def decode(self, *, name: str, event_id: str, payload: str | bytes) -> Event:
        """The event a row stores; KeyError for a name no enabled plugin registers, ValueError or TypeError
        for a payload its class no longer accepts."""
        cls, hints = self.by_name[name], self._hints[name]
        values = orjson.loads(payload)
        fields = {key: _decode_value(hints[key], value) for key, value in values.items() if key in hints}
        return cls(id=event_id, **fields)
