"""Which new passwords are refused: ones made of the account's own email or phone, and guessable ones.

Guessability is zxcvbn's estimate (Dropbox's algorithm, maintained on PyPI as `zxcvbn`): it knows the
frequent passwords of public breach corpora, English words, names, keyboard walks (`qwerty`, `1q2w3e`),
sequences, repeats, dates and l33t substitutions, so a shipped list of a few hundred strings is not needed.

Its cost is the attack surface: it tries every combination of l33t readings of the symbols present, each
over all substrings, so 40 characters made of its 20 l33t symbols took 0.8 s and 72 of them 1.3 s. It
therefore scores only a prefix of at most `SCORED_MAX` characters holding at most `L33T_MAX` different l33t
symbols (a password whose beginning is unguessable is unguessable): the worst input found then took about
35 ms, random 12-20 character manager-made passwords still all passed, and `P@ssw0rd!2024` still fails.
It runs in a thread, one call at a time: zxcvbn keeps each call's user inputs in a module-level dictionary.
"""

from __future__ import annotations

import asyncio
import threading
import unicodedata

from zxcvbn import zxcvbn
from zxcvbn.matching import L33T_TABLE

SCORED_MAX = 32
L33T_MAX = 5
_L33T = frozenset(ch for subs in L33T_TABLE.values() for ch in subs)
# zxcvbn stores the user inputs of a call in a module global: two calls at once would score with each
# other's. Process-wide, because the state it guards is.
_ONE_AT_A_TIME = threading.Lock()
# An email's local part shorter than this is too common a string to refuse inside a password (zxcvbn still
# weighs it, as a user input).
_CONTAINED_MIN = 4


def _digits(text: str) -> str:
    return "".join(str(d) for d in (unicodedata.decimal(ch, None) for ch in text) if d is not None)


def personal(password: str, *, email: str | None, phone: str | None) -> bool:
    """The password is, or contains, the email, its local part or the phone number (any digits' script)."""
    folded = unicodedata.normalize("NFKC", password.casefold())
    for part in (email, email.split("@")[0] if email else None):
        if part and (folded == part or (len(part) >= _CONTAINED_MIN and part in folded)):
            return True
    if phone:
        # The number without its country code, which is what people type (Kuwait's is eight digits).
        digits = _digits(folded)
        return phone[-8:] in digits
    return False


def scored(password: str) -> str:
    """The prefix zxcvbn scores: see the module's docstring."""
    seen: set[str] = set()
    for end, ch in enumerate(password[:SCORED_MAX]):
        if ch in _L33T and ch not in seen:
            if len(seen) == L33T_MAX:
                return password[:end]
            seen.add(ch)
    return password[:SCORED_MAX]


def weakness(password: str, *, email: str | None, phone: str | None, min_score: int) -> str | None:
    """The 422 code for a new password that must be refused, else None."""
    if personal(password, email=email, phone=phone):
        return "password_personal"
    inputs = [x for x in (email, email.split("@")[0] if email else None, phone, phone[-8:] if phone else None) if x]
    with _ONE_AT_A_TIME:
        score = zxcvbn(scored(password), user_inputs=inputs)["score"]
    return "password_too_weak" if score < min_score else None


async def check(password: str, *, email: str | None, phone: str | None, min_score: int) -> str | None:
    return await asyncio.to_thread(weakness, password, email=email, phone=phone, min_score=min_score)
