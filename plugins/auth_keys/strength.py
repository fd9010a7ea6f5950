"""Which new passwords are refused: ones made of the account's own email or phone, and guessable ones.

Guessability is zxcvbn's estimate (Dropbox's algorithm, maintained on PyPI as `zxcvbn`): it knows the
frequent passwords of public breach corpora, English words, names, keyboard walks (`qwerty`, `1q2w3e`),
sequences, repeats, dates and l33t substitutions, so a shipped list of a few hundred strings is not needed.
It is CPU work (about 1-5 ms), so it runs off the event loop, and only on a bounded prefix.
"""

from __future__ import annotations

import asyncio
import unicodedata

from zxcvbn import zxcvbn

# zxcvbn refuses longer input; a password whose first 72 characters are strong is strong.
SCORED_PREFIX = 72
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


def weakness(password: str, *, email: str | None, phone: str | None, min_score: int) -> str | None:
    """The 422 code for a new password that must be refused, else None."""
    if personal(password, email=email, phone=phone):
        return "password_personal"
    inputs = [x for x in (email, email.split("@")[0] if email else None, phone, phone[-8:] if phone else None) if x]
    if zxcvbn(password[:SCORED_PREFIX], user_inputs=inputs)["score"] < min_score:
        return "password_too_weak"
    return None


async def check(password: str, *, email: str | None, phone: str | None, min_score: int) -> str | None:
    return await asyncio.to_thread(weakness, password, email=email, phone=phone, min_score=min_score)
