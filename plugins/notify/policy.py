"""What one send attempt came to, and WhatsApp's per-code policy for what to do next.

A sender answers exactly one `Outcome` per attempt and never raises for a provider's answer:

- `Sent`: the provider accepted the message and named it (its id, to match later status updates);
  accepted is not delivered, which only a status report says;
- `Retry`: worth trying again later with backoff (rate limits, the pair rate, the provider's own
  failures, a timeout or a dropped connection);
- `Permanent`: trying again cannot help (not a WhatsApp number, the user opted out, no such template,
  a request the provider calls invalid, a 2xx that named no message);
- `Alert`: nothing will go out until an operator acts (token expired, account blocked or locked):
  retrying is pointless and an admin must be told, once;
- `NotConfigured`: no provider is set up; the message was only logged.

Codes are strings: WhatsApp's numeric codes as digits (`"131056"`), and `http_<status>`, `timeout`,
`connection`, `bad_answer` or `no_message_id` where the provider gave no code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sent:
    message_id: str


@dataclass(frozen=True)
class Failed:
    """A send that did not go out, and why; the subclass says what to do about it."""

    code: str


class Retry(Failed):
    pass


class Permanent(Failed):
    pass


class Alert(Failed):
    pass


@dataclass(frozen=True)
class NotConfigured:
    pass


Outcome = Sent | Retry | Permanent | Alert | NotConfigured

# The reference's policy (shared/reference/notifications.md), code by code.
RETRY_CODES = frozenset({130429, 131056, 131000})
PERMANENT_CODES = frozenset({131026, 131050, 132001, 100})
ALERT_CODES = frozenset({190, 368, 131031})

# A 2xx that names no message is a failure, and not retried: the provider may well have sent it, and a
# retry would then send it twice; an operator sees `no_message_id` in the outbox and can resend.
NO_MESSAGE_ID = Permanent("no_message_id")


def for_code(code: int | None, *, status: int) -> Retry | Permanent | Alert:
    """The outcome of a refused send: by WhatsApp's code when the answer carried one, else by HTTP status.

    Codes the reference does not list follow their HTTP status: 5xx and 429 are worth a retry, 401 and
    403 mean the credentials or the account need an operator, any other 4xx is the request's own fault
    and would fail again the same way.
    """
    if code is not None:
        if code in RETRY_CODES:
            return Retry(str(code))
        if code in PERMANENT_CODES:
            return Permanent(str(code))
        if code in ALERT_CODES:
            return Alert(str(code))
    named = str(code) if code is not None else f"http_{status}"
    if status >= 500 or status == 429:
        return Retry(named)
    if status in {401, 403}:
        return Alert(named)
    return Permanent(named)
