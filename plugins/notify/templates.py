"""The ten notifications' texts: one file per event and language, loaded and checked at startup.

`templates/{event}.{ar,en}.txt` holds the text with named placeholders (`{balance}`); `EVENTS` says
which placeholders each event has, in the order the Cloud API's template parameters take them. Loading
refuses, with a message naming the file and the placeholder, a missing file, a file for no known event,
a placeholder the event does not have, one of the event's placeholders the text leaves out, and any
field that is more than a plain name (`{x.attr}`, `{x[0]}`, `{x!r}`, `{x:>9}`, `{}`): an operator's
edit never reaches a send unchecked, and a template can never read attributes of the values.

Rendering formats every value for the language (formats.py), turns `,` `;` `?` in the Arabic texts'
own words into `،` `؛` `؟` (only where a space or the end of a text part follows, so `1,000` and a
literal `?x=1` stay as they are; values are never touched), and puts a user's two languages in one text.

Direction: WhatsApp lays out each line (paragraph) by its first strong character, so an Arabic line that
starts with a Latin name or a `+965…` number would be laid out left to right. Every line of an Arabic
block therefore starts with U+200F RIGHT-TO-LEFT MARK, which is invisible and fixes the line as
right-to-left whatever comes first. Inside an Arabic line, a value with Latin letters or ASCII digits and
no Arabic letter (a phone, an email, an IP, a Latin name) is put between two U+200E LEFT-TO-RIGHT MARKs,
so that its `+`, dots and the punctuation next to it keep their places (without them `+96512345678`
shows as `96512345678+`). Links get no mark at all, and the shipped texts put each link on a line of its
own, which then gets no RLM either: a left-to-right paragraph of its own, as a link should be. A mark
glued to a URL could be taken into the link by the client's link detection (Android's pattern accepts
most of Unicode in a path), so it would open a broken address. Numbers and dates in Arabic
are written in Arabic-Indic digits, which sit correctly in right-to-left text without marks. The English
block gets a U+200E at the start of each line that would otherwise begin with an Arabic value. Isolates
(U+2066-2069) would be the modern tool, but older WhatsApp clients show them as boxes; the marks are
understood everywhere.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edge.settings import ConfigError
from plugins.notify.formats import Language, Value, value_text

DIRECTORY = Path(__file__).resolve().parent / "templates"
LANGUAGES: tuple[Language, Language] = ("ar", "en")
RLM = "\u200f"
LRM = "\u200e"

EVENTS: dict[str, tuple[str, ...]] = {
    "user.registered": ("name", "quickstart_url"),
    "subscription.activated": ("plan", "credits", "price", "expires_on", "receipt_url"),
    "credits.low": ("percent", "balance", "topup_url"),
    "credits.exhausted": ("topup_url",),
    "topup.paid": ("credits", "price", "balance", "receipt_url"),
    "subscription.renewal_due": ("plan", "days", "expires_on", "renew_url"),
    "cloud.budget_80": ("used", "cap"),
    "cloud.budget_100": ("used", "cap"),
    "ip.banned": ("ip", "jail", "failures", "banned_at"),
    "enterprise.registered": ("customer", "email", "phone", "plan", "price"),
    # Not an event: the sender's own alert when the provider needs an operator (delivery.py).
    "provider.alert": ("code",),
}

_ARABIC_PUNCTUATION = str.maketrans({",": "،", ";": "؛", "?": "؟"})
_LATIN_PUNCTUATION_BEFORE_SPACE = re.compile(r"[,;?](?=\s|$)")
_ARABIC_LETTER = re.compile(r"[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff]")


@dataclass(frozen=True)
class Template:
    """A parsed text: literal parts and placeholder names, alternating (a name of None ends it)."""

    file: str
    language: Language
    parts: tuple[tuple[str, str | None], ...]


def _parse(path: Path, event: str, language: Language) -> Template:
    where = f"{path.parent.name}/{path.name}"
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff").strip()
    except FileNotFoundError:
        raise ConfigError(f"{where}: missing (every event needs an .ar.txt and an .en.txt template)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read as UTF-8 text ({type(exc).__name__})") from None
    if not text:
        raise ConfigError(f"{where}: is empty")
    allowed = EVENTS[event]
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc} (write a literal brace as {{{{ or }}}})") from None
    for raw, name, spec, conversion in parsed:
        literal = _LATIN_PUNCTUATION_BEFORE_SPACE.sub(_arabic_mark, raw) if language == "ar" else raw
        if name is None:
            parts.append((literal, None))
            continue
        field = "{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
        if not name.isidentifier() or spec or conversion:
            raise ConfigError(f"{where}: placeholder {field} must be a plain name such as {{{allowed[0]}}}")
        if name not in allowed:
            raise ConfigError(f"{where}: unknown placeholder {{{name}}}; {event} has {_names(allowed)}")
        parts.append((literal, name))
    used = {name for _, name in parts if name is not None}
    for name in allowed:
        if name not in used:
            raise ConfigError(f"{where}: placeholder {{{name}}} is missing; {event} has {_names(allowed)}")
    return Template(file=where, language=language, parts=tuple(parts))


def _arabic_mark(match: re.Match[str]) -> str:
    return match[0].translate(_ARABIC_PUNCTUATION)


def _names(names: tuple[str, ...]) -> str:
    return ", ".join("{" + n + "}" for n in names)


def _is_link(text: str) -> bool:
    return text.startswith(("https://", "http://")) and not any(c.isspace() for c in text)


def _arabic_value(text: str) -> str:
    """A value inside an Arabic line: Latin text, ASCII digits and phones between two LRMs; links, Arabic
    text and formatted Arabic numbers and dates as they are."""
    if _is_link(text) or _ARABIC_LETTER.search(text) or not any(c.isascii() and c.isalnum() for c in text):
        return text
    return LRM + text + LRM


def _lines(text: str, mark: str, *, links: set[str]) -> str:
    out = []
    for line in text.split("\n"):
        out.append(line if not line.strip() or line.strip() in links else mark + line)
    return "\n".join(out)


class Templates:
    """Every event's template in both languages, checked; renders messages."""

    def __init__(self, templates: Mapping[tuple[str, Language], Template]) -> None:
        self.templates = dict(templates)

    def render(self, event: str, language: Language, values: Mapping[str, Value]) -> str:
        """One language's text, values formatted for it, direction marks set (see the module docstring)."""
        template = self.templates[(event, language)]
        texts = self.values(event, language, values)
        links = {t for t in texts.values() if _is_link(t)}
        pieces = []
        for literal, name in template.parts:
            pieces.append(literal)
            if name is None:
                continue
            text = texts[name]
            if language == "ar":
                text = _arabic_value(text)
            elif _ARABIC_LETTER.search(text):
                text = text + LRM
            pieces.append(text)
        rendered = "".join(pieces)
        if language == "ar":
            return _lines(rendered, RLM, links=links)
        return "\n".join(LRM + ln if _ARABIC_LETTER.match(ln) else ln for ln in rendered.split("\n"))

    def values(self, event: str, language: Language, values: Mapping[str, Value]) -> dict[str, str]:
        """Each placeholder's value formatted for `language`; the event's placeholders exactly, or ValueError."""
        expected = EVENTS[event]
        if set(values) != set(expected):
            missing = sorted(set(expected) - set(values))
            extra = sorted(set(values) - set(expected))
            raise ValueError(f"{event}: values must be exactly {_names(expected)} (missing {missing}, extra {extra})")
        return {name: value_text(values[name], language) for name in expected}

    def params(self, event: str, language: Language, values: Mapping[str, Value]) -> tuple[str, ...]:
        """The Cloud API template's body parameters: the values formatted, in `EVENTS` order."""
        return tuple(self.values(event, language, values).values())

    def user_text(self, event: str, language: str, values: Mapping[str, Value]) -> str:
        """The one bilingual text a user gets: their language first (Arabic unless they chose English),
        then the other, a blank line between."""
        first: Language = "en" if language == "en" else "ar"
        second: Language = "ar" if first == "en" else "en"
        return self.render(event, first, values) + "\n\n" + self.render(event, second, values)


def load(directory: Path = DIRECTORY) -> Templates:
    """Read and check every template, or raise ConfigError naming the file (and the placeholder)."""
    known = {f"{event}.{language}.txt" for event in EVENTS for language in LANGUAGES}
    if directory.is_dir():
        for path in sorted(directory.glob("*.txt")):
            if path.name not in known:
                raise ConfigError(f"{directory.name}/{path.name}: no such event; the events are {', '.join(EVENTS)}")
    found = {
        (event, language): _parse(directory / f"{event}.{language}.txt", event, language)
        for event in EVENTS
        for language in LANGUAGES
    }
    return Templates(found)
