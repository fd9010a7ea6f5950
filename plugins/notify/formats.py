"""Numbers, money and dates as each language writes them in a message.

English: `1,234`, `5.000 KWD`, `14 March 2026`, `14 March 2026, 09:05`. Arabic (as written in Kuwait):
Arabic-Indic digits with the Arabic thousands and decimal separators, `١٬٢٣٤`, `٥٫٠٠٠ د.ك`,
`١٤ مارس ٢٠٢٦`, `١٤ مارس ٢٠٢٦، ٠٩:٠٥`. Money comes in as integer fils and is shown with three decimals
(1 KWD = 1000 fils), computed with integers only. Times are shown in Asia/Kuwait, whatever zone they
come in; a naive datetime is refused, since its zone would be a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

Language = Literal["ar", "en"]
KUWAIT = ZoneInfo("Asia/Kuwait")

_ARABIC_DIGITS = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
_AR_THOUSANDS = "\u066c"  # ٬
_AR_DECIMAL = "\u066b"  # ٫
# The month names used in Kuwait and the Gulf (not the Levantine كانون الثاني, شباط, …).
_AR_MONTHS = (
    "يناير",
    "فبراير",
    "مارس",
    "أبريل",
    "مايو",
    "يونيو",
    "يوليو",
    "أغسطس",
    "سبتمبر",
    "أكتوبر",
    "نوفمبر",
    "ديسمبر",
)
_EN_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class Kwd:
    """An amount of Kuwaiti dinars, in integer fils."""

    fils: int


def number(value: int, language: Language) -> str:
    grouped = f"{value:,}"
    if language == "en":
        return grouped
    return grouped.replace(",", _AR_THOUSANDS).translate(_ARABIC_DIGITS)


def kwd(amount: Kwd, language: Language) -> str:
    sign = "-" if amount.fils < 0 else ""
    dinars, fils = divmod(abs(amount.fils), 1000)
    if language == "en":
        return f"{sign}{dinars:,}.{fils:03d} KWD"
    whole = number(dinars, "ar")
    return f"{sign}{whole}{_AR_DECIMAL}{fils:03d}".translate(_ARABIC_DIGITS) + " د.ك"


def day(value: date, language: Language) -> str:
    if language == "en":
        return f"{value.day} {_EN_MONTHS[value.month - 1]} {value.year}"
    return f"{value.day} {_AR_MONTHS[value.month - 1]} {value.year}".translate(_ARABIC_DIGITS)


def moment(value: datetime, language: Language) -> str:
    """Date and time of day in Kuwait."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a time without a zone cannot be shown in Kuwait time")
    local = value.astimezone(KUWAIT)
    clock = f"{local.hour:02d}:{local.minute:02d}"
    if language == "en":
        return f"{day(local.date(), 'en')}, {clock}"
    return f"{day(local.date(), 'ar')}، {clock.translate(_ARABIC_DIGITS)}"


@dataclass(frozen=True)
class Bilingual:
    """Text that differs by language (a plan's label): each language gets its own."""

    ar: str
    en: str


Value = str | int | Kwd | Bilingual | date | datetime


def value_text(value: Value, language: Language) -> str:
    """One placeholder's value as text in `language`; strings are left exactly as they are."""
    if isinstance(value, bool):
        raise TypeError("a yes/no value has no place in a message")
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return number(value, language)
    if isinstance(value, Kwd):
        return kwd(value, language)
    if isinstance(value, Bilingual):
        return value.ar if language == "ar" else value.en
    if isinstance(value, datetime):
        return moment(value, language)
    return day(value, language)
