"""KWD as integer fils (1 KWD = 1000 fils), turned into text only where it leaves the gateway.

Two kinds of text: the MyFatoorah boundary, where an amount is a decimal number with exactly three places
("5.000"), and what a user reads, in English ("5.000 KWD") or Arabic ("٥٫٠٠٠ د.ك"). Parsing accepts only
amounts that are a whole number of fils: 5.0005 is refused, never rounded, because a rounded amount is
an amount nobody agreed to. Floats are refused outright: one that reached this point already lost
exactness (parse provider JSON with `parse_float=Decimal`).

Arabic uses Arabic-Indic digits with the Arabic decimal and group separators, the way CLDR's `ar-KW`
locale writes numbers (so `Intl.NumberFormat("ar-KW")` in the portal agrees, and so do the notify plugin's
messages): what Kuwaiti banks, KNET receipts and government services show in Arabic text. Latin digits
in an Arabic sentence would also make the bidirectional layout of "د.ك" around the number unpredictable.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

FILS_PER_KWD = 1000
# The most an amount may be anywhere in billing: 1,000,000 KWD. Far above any price, far below overflow.
MAX_FILS = 1_000_000_000
CURRENCY = "KWD"

Locale = Literal["ar", "en"]

_DECIMAL_TEXT = re.compile(r"^[0-9]{1,10}(?:\.[0-9]{1,9})?$")
_ARABIC_DIGITS = str.maketrans("0123456789.,", "٠١٢٣٤٥٦٧٨٩٫٬")


class AmountError(ValueError):
    """An amount that is not a whole number of fils between 0 and MAX_FILS; the message says which."""


def checked_fils(value: object) -> int:
    """`value` when it is an int (never a bool) in 0..MAX_FILS, else AmountError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AmountError(f"an amount in fils must be a whole number, got {type(value).__name__}")
    if not 0 <= value <= MAX_FILS:
        raise AmountError(f"an amount in fils must be between 0 and {MAX_FILS}, got {value}")
    return value


def to_decimal_text(fils: int) -> str:
    """The boundary form: 5000 -> "5.000", 1 -> "0.001"; always exactly three decimals."""
    whole, part = divmod(checked_fils(fils), FILS_PER_KWD)
    return f"{whole}.{part:03d}"


def from_decimal(value: object) -> int:
    """Fils from a KWD amount given as a Decimal, an int (whole KWD) or text like "5.000".

    Exact or refused: more than three significant decimals, a float, a bool, NaN, infinity, a negative
    or an amount above MAX_FILS raise AmountError.
    """
    if isinstance(value, (bool, float)):
        raise AmountError(f"a KWD amount must be exact, got {type(value).__name__}")
    if isinstance(value, str):
        if not _DECIMAL_TEXT.match(value):
            raise AmountError("a KWD amount must be written as digits with at most one decimal point")
        value = Decimal(value)
    if isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise AmountError(f"a KWD amount must be a number, got {type(value).__name__}")
    if not value.is_finite():
        raise AmountError("a KWD amount must be a finite number")
    # From the digits themselves, not through arithmetic: Decimal arithmetic rounds to the context's
    # precision, and a 5.000000000000000000000000000001 rounded to 5 is exactly what must be refused.
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).lstrip("0") or "0"
    shift = exponent + 3
    if shift < 0:
        text, dropped = (text[:shift] or "0"), text[shift:]
        if dropped.strip("0"):
            raise AmountError(f"{value} KWD is not a whole number of fils")
    elif text != "0":
        if len(text) + shift > len(str(MAX_FILS)):
            raise AmountError(f"a KWD amount must be at most {MAX_FILS // FILS_PER_KWD} KWD")
        text += "0" * shift
    whole = int(text)
    if sign and whole:
        raise AmountError("a KWD amount cannot be negative")
    if whole > MAX_FILS:
        raise AmountError(f"a KWD amount must be at most {MAX_FILS // FILS_PER_KWD} KWD")
    return whole


def grouped(number: int, *, locale: Locale) -> str:
    """A whole number with group separators: 15000 -> "15,000" or "١٥٬٠٠٠"."""
    text = f"{number:,}"
    return text.translate(_ARABIC_DIGITS) if locale == "ar" else text


def price_text(fils: int, *, locale: Locale) -> str:
    """What a user reads: "12,000.000 KWD" in English, "١٢٬٠٠٠٫٠٠٠ د.ك" in Arabic (as the notify plugin writes it)."""
    whole, part = divmod(checked_fils(fils), FILS_PER_KWD)
    number = f"{whole:,}.{part:03d}"
    if locale == "ar":
        return f"{number.translate(_ARABIC_DIGITS)} د.ك"
    return f"{number} {CURRENCY}"
