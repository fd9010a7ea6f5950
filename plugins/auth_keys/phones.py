"""Phone numbers to E.164: `+` and 8 to 15 digits. A bare local number gets the default country code."""

from __future__ import annotations

import unicodedata

# What people type between digits: spaces (incl. no-break), dashes, dots, brackets, directional marks.
_SEPARATORS = frozenset(" \t\u00a0\u2007\u202f-\u2010\u2011\u2012\u2013\u2014.()/\u200e\u200f\u061c")
KUWAIT = "965"


def normalize_phone(raw: str, *, country_code: str = KUWAIT, local_digits: int = 8) -> str | None:
    """The E.164 form of `raw`, or None when it is not a phone number.

    Arabic-Indic and other Unicode digits count as digits (`٩٩٨٨٧٧٦٦` is +96599887766); `00` is the
    international prefix; a number of exactly `local_digits` digits is local to `country_code`.
    """
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
    number = "".join(digits)
    if not plus:
        if number.startswith("00"):
            number = number[2:]
        elif len(number) == local_digits:
            number = country_code + number
        elif not (number.startswith(country_code) and len(number) == len(country_code) + local_digits):
            return None
    if not 8 <= len(number) <= 15 or number[0] == "0":
        return None
    if number.startswith(country_code) and len(number) != len(country_code) + local_digits:
        return None
    if number.startswith(country_code) and number[len(country_code)] == "0":
        return None
    return "+" + number
