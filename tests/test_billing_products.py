"""The catalogue and the fils rules: defaults from ARCHITECTURE.md, hostile values refused."""

from __future__ import annotations

from decimal import Decimal

import pytest

from edge.config import TierSettings, load
from edge.settings import ConfigError, build
from plugins.billing.money import AmountError, from_decimal, price_text, to_decimal_text
from plugins.billing.products import PackSettings, catalogue, find


def tier(price: int = 2500, credits: int = 1000, ar: str = "أساسي", en: str = "Basic") -> TierSettings:
    return TierSettings(ar, en, price, credits, 10, ["local-small"])


def test_default_catalogue_from_the_example_config() -> None:
    products = catalogue(tiers=load().tiers)
    rows = [(p.id, p.kind, p.credits, p.price_fils, p.tier) for p in products]
    assert rows == [
        ("basic", "plan", 1000, 2500, "basic"),
        ("pro", "plan", 5000, 7500, "pro"),
        ("enterprise", "plan", 20000, 25000, "enterprise"),
        ("pack-5000", "pack", 5000, 5000, None),
        ("pack-15000", "pack", 15000, 12000, None),
        ("pack-50000", "pack", 50000, 35000, None),
    ]
    assert products[4].as_json() == {
        "id": "pack-15000",
        "kind": "pack",
        "credits": 15000,
        "price_fils": 12000,
        "currency": "KWD",
        "label": {"ar": "١٥٬٠٠٠ رصيد", "en": "15,000 credits"},
        "price": {"ar": "١٢٫٠٠٠ د.ك", "en": "12.000 KWD"},
    }
    assert products[0].as_json()["tier"] == "basic" and products[0].price("ar") == "٢٫٥٠٠ د.ك"


def test_free_tier_is_not_sold_and_find_is_exact() -> None:
    products = catalogue(tiers={"free": tier(price=0), "basic": tier()}, packs=[])
    assert [p.id for p in products] == ["basic"]
    assert find(products, "basic") is products[0]
    for bad in ("BASIC", "basic ", None, 1, ["basic"], "free"):
        assert find(products, bad) is None


@pytest.mark.parametrize(
    ("pack", "message"),
    [
        ({"id": "p", "credits": 0, "price_fils": 100}, "credits must be between"),
        ({"id": "p", "credits": -5, "price_fils": 100}, "credits must be between"),
        ({"id": "p", "credits": 10, "price_fils": 0}, "price_fils must be between"),
        ({"id": "p", "credits": 10, "price_fils": -1}, "price_fils must be between"),
        ({"id": "p", "credits": 10, "price_fils": 10_000_001}, "price_fils must be between"),
        ({"id": "p", "credits": 10**9, "price_fils": 100}, "credits must be between"),
        ({"id": "../x", "credits": 10, "price_fils": 100}, "an id is"),
        ({"id": "", "credits": 10, "price_fils": 100}, "an id is"),
        ({"id": "Pack", "credits": 10, "price_fils": 100}, "an id is"),
        ({"id": "p", "credits": 10, "price_fils": 100, "label_en": "x\ny"}, "control"),
        ({"id": "p", "credits": 10, "price_fils": 100, "label_ar": "\u202ereversed"}, "control"),
        ({"id": "p", "credits": 10, "price_fils": 100, "label_en": " "}, "a label is"),
        ({"id": "p", "credits": 10, "price_fils": 100, "label_en": "x" * 65}, "a label is"),
        ({"id": "basic", "credits": 10, "price_fils": 100}, "names two products"),
    ],
)
def test_hostile_packs_are_refused_with_the_key(pack: dict[str, object], message: str) -> None:
    settings = build(PackSettings, pack, "plugins.billing.settings.packs[0]")
    with pytest.raises(ConfigError, match=message) as err:
        catalogue(tiers={"basic": tier()}, packs=[settings])
    assert str(err.value).startswith("plugins.billing.settings.packs")


@pytest.mark.parametrize(
    "raw", [{"id": "p", "credits": 1.5, "price_fils": 100}, {"id": "p", "credits": True, "price_fils": 1}]
)
def test_pack_numbers_must_be_whole(raw: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="whole number"):
        build(PackSettings, raw, "packs[0]")


def test_hostile_tiers_and_too_many_packs() -> None:
    with pytest.raises(ConfigError, match=r"tiers\.Basic Plan"):
        catalogue(tiers={"Basic Plan": tier()}, packs=[])
    with pytest.raises(ConfigError, match="label"):
        catalogue(tiers={"basic": tier(en="")}, packs=[])
    with pytest.raises(ConfigError, match="at most 20"):
        catalogue(tiers={}, packs=[PackSettings(f"p{i}", 1, 1) for i in range(21)])


def test_boundary_text_is_exact_three_decimals() -> None:
    assert [to_decimal_text(f) for f in (0, 1, 999, 1000, 35000, 1_000_000_000)] == [
        "0.000",
        "0.001",
        "0.999",
        "1.000",
        "35.000",
        "1000000.000",
    ]
    for bad in (-1, True, 1.0, 10**10):
        with pytest.raises(AmountError):
            to_decimal_text(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "fils"),
    [
        (Decimal("5.000"), 5000),
        (Decimal("5"), 5000),
        (Decimal("5.0000"), 5000),
        ("0.001", 1),
        (7, 7000),
        (Decimal("-0"), 0),
    ],
)
def test_parse_exact_amounts(value: object, fils: int) -> None:
    assert from_decimal(value) == fils


@pytest.mark.parametrize(
    "value",
    [
        Decimal("5.0005"),
        Decimal("5.0000000000000000000000000000001"),  # past Decimal's 28 digits: must not round to 5
        Decimal("1E-99999"),
        Decimal("1E+99999"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("-0.001"),
        Decimal("1000000.001"),
        5.0,
        True,
        None,
        "1e3",
        " 5",
        "5,000",
        "٥",
    ],
)
def test_parse_refuses_what_is_not_whole_fils(value: object) -> None:
    with pytest.raises(AmountError):
        from_decimal(value)


def test_user_facing_price_text() -> None:
    assert price_text(1_234_567, locale="en") == "1,234.567 KWD"
    assert price_text(1_234_567, locale="ar") == "١٬٢٣٤٫٥٦٧ د.ك"
    assert price_text(0, locale="ar") == "٠٫٠٠٠ د.ك"
