"""Phone numbers to E.164: `+`, a country code and a national number, at most 15 digits. A bare local
number gets the default country code.

One subscriber has one normal form. After the country code, a national trunk prefix and any run of
leading zeros typed before the number are dropped for every country (`+966 55 123 4567`, `+966 055 123
4567`, `+966 0055 123 4567` and `00966 55 123 4567` are all `+966551234567`), so one phone cannot be
registered, or use the per-phone limits, two or three times. The zero is kept only where it is part of
the number itself (Italy's `+39 06…`, Côte d'Ivoire's `+225 07…`, …): Google's libphonenumber (the
`phonenumbers` package) knows the country codes, each country's trunk prefix and number lengths, and
which numbers keep a leading zero, so none of that is a hand-made list here.
"""

from __future__ import annotations

import unicodedata

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

# What people type between digits: spaces (incl. no-break), dashes, dots, brackets, directional marks.
_SEPARATORS = frozenset(" \t\u00a0\u2007\u202f-\u2010\u2011\u2012\u2013\u2014.()/\u200e\u200f\u061c")
KUWAIT = "965"
E164_MAX_DIGITS = 15


def _digits(raw: str) -> tuple[bool, str] | None:
    """(whether it began with `+`, its digits in ASCII), or None when it holds anything but digits and
    separators (letters, `ext.`, `;`: libphonenumber would accept some of these; a login never should)."""
    text = unicodedata.normalize("NFKC", raw).strip()
    if len(text) > 40:
        return None
    plus = text.startswith("+")
    digits = []
    for ch in text[1:] if plus else text:
        if ch in _SEPARATORS:
            continue
        value = unicodedata.decimal(ch, None)
        if value is None:
            return None
        digits.append(str(value))
    return plus, "".join(digits)


def _international(digits: str) -> str | None:
    """`digits` (country code first) in E.164, with the trunk prefix and leading zeros dropped unless the
    number is one whose leading zero belongs to it; None for an unknown country code or a length the
    country's numbers cannot have."""
    try:
        number = phonenumbers.parse("+" + digits, None)
    except NumberParseException:
        return None
    # libphonenumber drops one trunk prefix and keeps what follows; a number it does not know with zeros
    # left in front is the same number typed with more of them.
    if number.italian_leading_zero and not phonenumbers.is_valid_number(number):
        number.italian_leading_zero = None
        number.number_of_leading_zeros = None
    if not phonenumbers.is_possible_number(number):
        return None
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    return e164 if len(e164) - 1 <= E164_MAX_DIGITS else None


def normalize_phone(raw: str, *, country_code: str = KUWAIT, local_digits: int = 8) -> str | None:
    """The E.164 form of `raw`, or None when it is not a phone number.

    Arabic-Indic and other Unicode digits count as digits (`٩٩٨٨٧٧٦٦` is +96599887766); `00` is the
    international prefix; a number of exactly `local_digits` digits is local to `country_code`, and a
    number in that country has exactly `local_digits` digits after any trunk zeros.
    """
    parsed = _digits(raw)
    if parsed is None:
        return None
    plus, number = parsed
    if not plus:
        if number.startswith("00"):
            number = number[2:]
        elif len(number) == local_digits:
            number = country_code + number
        elif not (number.startswith(country_code) and len(number) == len(country_code) + local_digits):
            return None
    if not number or number[0] == "0" or len(number) > 2 * E164_MAX_DIGITS:
        return None
    e164 = _international(number)
    if e164 is None:
        return None
    if e164.startswith("+" + country_code) and len(e164) != 1 + len(country_code) + local_digits:
        return None
    return e164
