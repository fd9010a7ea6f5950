"""What each of the ten events says and to whom: pure functions from an event to a `Notice`.

Events are matched by `event.event_name` and read as `dataclasses.asdict(event)`, never by importing
the publishing plugin (billing's classes live in billing). The fields read are the publishers':
- core (edge/events.py): `user.registered`, `enterprise.registered`, `credits.low`, `credits.exhausted`,
  `cloud.budget_80`, `cloud.budget_100`;
- billing: `topup.paid` and `subscription.activated` (account_id, user_id, locale, phone, order_id,
  amount_fils, credits_milli, balance_milli; activated adds tier and plan_expires_at) and
  `subscription.renewal_due` (account_id, user_id, locale, phone, tier, plan_expires_at, days_left);
- notify: `ip.banned` (`IpBanned` below).

The de-duplication key names what the message is about, so that the same fact announced twice (a
re-delivered event, a second worker, or a second publisher of the same fact) is one message per recipient:
an order is paid once, a plan expires once per expiry, a day's cloud cap is reached once a day, an account
registers once. Facts with no such identity (a crossing below 20%, a ban) use the event's id. Money is
integer fils and milli-credits; credits are shown whole (rounded down, never more than there is).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Literal

from edge.config import TierSettings
from edge.events import Event
from plugins.notify.formats import KUWAIT, Bilingual, Kwd, Value

Audience = Literal["user", "admin"]
MAX_KEY = 160
# The preference that can turn a notice off (notify_preferences' columns); the others always go.
OPTIONAL = {"credits.low": "credits_low", "subscription.renewal_due": "renewal_due"}


@dataclass(frozen=True, kw_only=True)
class IpBanned(Event):
    """fail2ban banned `ip` in `jail` after `failures` failures, at `banned_at` (UTC)."""

    event_name: ClassVar[str] = "ip.banned"
    ip: str
    jail: str
    failures: int
    banned_at: datetime


@dataclass(frozen=True)
class Links:
    """The portal's addresses a message links to, absolute."""

    public_url: str
    quickstart_path: str
    billing_path: str
    receipt_path: str  # with `{order_id}`

    def url(self, path: str, **values: str) -> str:
        return self.public_url.rstrip("/") + path.format(**values)


@dataclass(frozen=True)
class Notice:
    """One event's message: the template, its values, who gets it, and the key that makes it once."""

    event: str
    audience: Audience
    values: dict[str, Value]
    key: str
    account_id: int | None = None
    user_id: int | None = None
    phone: str | None = None
    locale: str | None = None
    optional: str | None = field(default=None)

    def dedup_key(self, recipient: str) -> str:
        """`key:recipient`, hashed past the column's width (an order id is the payment provider's text)."""
        whole = f"{self.key}:{recipient}"
        if len(whole) <= MAX_KEY:
            return whole
        return f"{self.event}:{hashlib.sha256(whole.encode()).hexdigest()}"


def _utc(value: Any) -> datetime:
    """Events carry UTC-naive datetimes (or ISO text, from an older payload)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _kuwait_day(value: Any) -> date:
    return _utc(value).astimezone(KUWAIT).date()


def _credits(milli: Any) -> int:
    return int(milli) // 1000


def _plan(tiers: Mapping[str, TierSettings], tier: Any) -> Bilingual:
    found = tiers.get(str(tier))
    if found is None:
        return Bilingual(str(tier), str(tier))
    return Bilingual(found.label_ar or str(tier), found.label_en or str(tier))


def _user(name: str, f: dict[str, Any], values: dict[str, Value], key: str) -> Notice:
    return Notice(
        event=name,
        audience="user",
        values=values,
        key=key,
        account_id=f.get("account_id"),
        user_id=f.get("user_id"),
        phone=f.get("phone"),
        locale=f.get("locale"),
        optional=OPTIONAL.get(name),
    )


def _admin(name: str, values: dict[str, Value], key: str) -> Notice:
    return Notice(event=name, audience="admin", values=values, key=key)


def notice(event: Event, *, links: Links, tiers: Mapping[str, TierSettings]) -> Notice | None:
    """The notice for `event`, or None for an event that sends nothing."""
    name = event.event_name
    f = dataclasses.asdict(event)
    by_id = f"{name}:{event.id}"
    if name == "user.registered":
        values: dict[str, Value] = {"name": f["user_name"], "quickstart_url": links.url(links.quickstart_path)}
        return _user(name, f, values, f"{name}:{f['user_id']}")
    if name == "credits.low":
        values = {
            "percent": f["percent_remaining"],
            "balance": _credits(f["balance_milli"]),
            "topup_url": f["top_up_url"],
        }
        return _user(name, f, values, by_id)
    if name == "credits.exhausted":
        return _user(name, f, {"topup_url": f["top_up_url"]}, by_id)
    if name in {"topup.paid", "subscription.activated"}:
        receipt = links.url(links.receipt_path, order_id=str(f["order_id"]))
        values = {"credits": _credits(f["credits_milli"]), "price": Kwd(int(f["amount_fils"])), "receipt_url": receipt}
        if name == "topup.paid":
            values["balance"] = _credits(f["balance_milli"])
        else:
            values["plan"] = _plan(tiers, f["tier"])
            values["expires_on"] = _kuwait_day(f["plan_expires_at"])
        return _user(name, f, values, f"{name}:{f['order_id']}")
    if name == "subscription.renewal_due":
        expires = _utc(f["plan_expires_at"])
        values = {
            "plan": _plan(tiers, f["tier"]),
            "days": int(f["days_left"]),
            "expires_on": _kuwait_day(expires),
            "renew_url": links.url(links.billing_path),
        }
        return _user(name, f, values, f"{name}:{f['account_id']}:{expires:%Y%m%dT%H%M%S}")
    if name in {"cloud.budget_80", "cloud.budget_100"}:
        return _admin(name, {"used": f["used"], "cap": f["cap"]}, f"{name}:{f['day']}")
    if name == "ip.banned":
        values = {"ip": f["ip"], "jail": f["jail"], "failures": f["failures"], "banned_at": _utc(f["banned_at"])}
        return _admin(name, values, by_id)
    if name == "enterprise.registered":
        tier = tiers.get("enterprise")
        values = {
            "customer": f["user_name"],
            "email": f["email"],
            "phone": f["phone"],
            "plan": _plan(tiers, f["tier"]),
            "price": Kwd(tier.price_fils if tier is not None else 0),
        }
        return _admin(name, values, f"{name}:{f['account_id']}")
    return None
