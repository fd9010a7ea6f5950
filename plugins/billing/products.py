"""The catalogue: what a customer can buy, as pure rules over the YAML.

Plans are the gateway's tiers that have a price (`tiers:` in the YAML; a tier priced 0 is not sold);
packs come from the billing section's `packs` list, by default 5,000 credits for 5.000 KWD, 15,000 for
12.000 and 50,000 for 35.000. Every price is integer fils and every product says in both languages what
it is and what it costs. The catalogue is checked once, when the configuration is read: a hostile or
mistyped value (a zero or negative price, a price above MAX_PRICE_FILS, an id a URL or a log could be
confused by, a label with control characters, two products under one id) stops the gateway with a
message naming the key, instead of selling something nobody meant to sell.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edge.config import TierSettings
from edge.settings import ConfigError
from plugins.billing.money import CURRENCY, Locale, grouped, price_text

# A fat-finger guard: no plan or pack costs more than 10,000 KWD.
MAX_PRICE_FILS = 10_000_000
MAX_CREDITS = 100_000_000
MAX_PACKS = 20
MAX_LABEL = 64
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

Kind = Literal["plan", "pack"]


@dataclass
class PackSettings:
    """One credit pack in the billing section's `packs` list."""

    id: str
    credits: int
    price_fils: int
    # Without labels the pack is called by its size: "15,000 credits", "١٥٬٠٠٠ رصيد".
    label_ar: str | None = None
    label_en: str | None = None


DEFAULT_PACKS: tuple[PackSettings, ...] = (
    PackSettings(id="pack-5000", credits=5_000, price_fils=5_000),
    PackSettings(id="pack-15000", credits=15_000, price_fils=12_000),
    PackSettings(id="pack-50000", credits=50_000, price_fils=35_000),
)


@dataclass(frozen=True, slots=True)
class Product:
    """Something for sale: a plan (sets `tier` for a month and grants its monthly credits) or a pack."""

    id: str
    kind: Kind
    credits: int
    price_fils: int
    tier: str | None
    label_ar: str
    label_en: str

    def label(self, locale: Locale) -> str:
        return self.label_ar if locale == "ar" else self.label_en

    def price(self, locale: Locale) -> str:
        return price_text(self.price_fils, locale=locale)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "credits": self.credits}
        out["price_fils"] = self.price_fils
        out["currency"] = CURRENCY
        if self.tier is not None:
            out["tier"] = self.tier
        out["label"] = {"ar": self.label_ar, "en": self.label_en}
        out["price"] = {"ar": self.price("ar"), "en": self.price("en")}
        return out


def _checked_id(value: str, *, where: str) -> str:
    if not _ID.match(value):
        raise ConfigError(f"{where}: an id is 1 to 32 of a-z, 0-9, '-' and '_', starting with a letter or digit")
    return value


def _checked_label(value: str, *, where: str) -> str:
    text = value.strip()
    if not text or len(text) > MAX_LABEL:
        raise ConfigError(f"{where}: a label is 1 to {MAX_LABEL} characters")
    # Control and format characters (newlines, bidi overrides) could reorder or forge what a receipt says.
    if any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in text):
        raise ConfigError(f"{where}: a label cannot hold control or direction-changing characters")
    return text


def _checked_amounts(*, credits: int, price_fils: int, least_credits: int, where: str) -> None:
    if not least_credits <= credits <= MAX_CREDITS:
        raise ConfigError(f"{where}: credits must be between {least_credits} and {MAX_CREDITS}, got {credits}")
    if not 1 <= price_fils <= MAX_PRICE_FILS:
        raise ConfigError(f"{where}: price_fils must be between 1 and {MAX_PRICE_FILS} fils, got {price_fils}")


def plan(name: str, tier: TierSettings, *, where: str = "tiers") -> Product:
    at = f"{where}.{name}"
    _checked_id(name, where=at)
    _checked_amounts(credits=tier.monthly_credits, price_fils=tier.price_fils, least_credits=0, where=at)
    label_ar = _checked_label(tier.label_ar, where=f"{at}.label_ar")
    label_en = _checked_label(tier.label_en, where=f"{at}.label_en")
    return Product(name, "plan", tier.monthly_credits, tier.price_fils, name, label_ar, label_en)


def pack(settings: PackSettings, *, where: str) -> Product:
    _checked_id(settings.id, where=f"{where}.id")
    _checked_amounts(credits=settings.credits, price_fils=settings.price_fils, least_credits=1, where=where)
    credits = settings.credits
    label_ar = settings.label_ar if settings.label_ar is not None else f"{grouped(credits, locale='ar')} رصيد"
    label_en = settings.label_en if settings.label_en is not None else f"{grouped(credits, locale='en')} credits"
    return Product(
        settings.id,
        "pack",
        credits,
        settings.price_fils,
        None,
        _checked_label(label_ar, where=f"{where}.label_ar"),
        _checked_label(label_en, where=f"{where}.label_en"),
    )


def catalogue(
    *,
    tiers: Mapping[str, TierSettings],
    packs: Sequence[PackSettings] = DEFAULT_PACKS,
    where: str = "plugins.billing.settings.packs",
) -> tuple[Product, ...]:
    """Every product for sale, plans first (in the YAML's order), then packs; ConfigError on a bad one."""
    if len(packs) > MAX_PACKS:
        raise ConfigError(f"{where}: at most {MAX_PACKS} packs")
    products = [plan(name, tier) for name, tier in tiers.items() if tier.price_fils != 0]
    products += [pack(p, where=f"{where}[{i}]") for i, p in enumerate(packs)]
    seen: set[str] = set()
    for product in products:
        if product.id in seen:
            raise ConfigError(f"{where}: the id {product.id!r} names two products (plans use their tier's name)")
        seen.add(product.id)
    return tuple(products)


def find(products: Sequence[Product], product_id: object) -> Product | None:
    """The product a client named, or None; anything but an exact id string is None."""
    if not isinstance(product_id, str):
        return None
    return next((p for p in products if p.id == product_id), None)
