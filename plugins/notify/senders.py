"""Three ways to send one WhatsApp message, behind one `Sender` interface.

- `LogSender` (the default): nothing is sent; the text goes to the log with the phone masked, and the
  outcome is `NotConfigured`, so `make run` works with no provider set up.
- `ResayilSender`: the Resayil session gateway, free text. Its API is not documented, so the path, the
  body (a JSON shape whose string leaves `{to}`, `{to_digits}`, `{text}`, `{language}` are filled in)
  and where the answer names the message id are all settings.
- `CloudSender`: the WhatsApp Business Cloud API, which outside a customer's 24-hour window only sends
  approved templates: one per event and language, named `{prefix}{event with _ for .}`, in the locale
  it was approved under (`en` and `en_US` are different locales), with the message's values as its body
  parameters in order.

Invariants: one call is one HTTP request at most (retries, backoff and pacing belong to the outbox's
sender job); a provider's answer never raises, it becomes an `Outcome` (policy.py); the token goes
only into the Authorization header, never into a log line, an outcome or an error; redirects are not
followed, so the token is never replayed to another host; at most `MAX_ANSWER` bytes of an answer are read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp
import orjson

from plugins.notify.policy import NO_MESSAGE_ID, NotConfigured, Outcome, Retry, Sent, for_code
from plugins.notify.provider import CloudSettings, ResayilSettings

log = logging.getLogger("resayil.notify")

Language = Literal["ar", "en"]
MAX_ANSWER = 64 * 1024
MAX_MESSAGE_ID = 256


@dataclass(frozen=True)
class Message:
    """One message to one recipient.

    `to` is E.164 (`+96512345678`). `text` is the whole text for free-text providers (for a user, both
    languages, theirs first); `event` names the template and `params` are its body parameters, in the
    recipient's `language`, for template providers.
    """

    to: str
    language: Language
    text: str
    event: str
    params: tuple[str, ...] = ()


class Sender(Protocol):
    """Sends one message and says what came of it; never raises for what the provider answered.

    `free_text`: whether it sends `text` (a user's two languages in one message); otherwise it sends one
    language's template with `params`, and a user gets one message per language (recipients.py)."""

    name: str
    free_text: bool

    async def send(self, *, message: Message) -> Outcome: ...


def masked(phone: str) -> str:
    """The phone with all but its first three and last two digits hidden: enough to tell numbers apart
    in a log, not enough to call one."""
    digits = phone.removeprefix("+")
    if len(digits) <= 5:
        return "+" + "*" * len(digits)
    return "+" + digits[:3] + "*" * (len(digits) - 5) + digits[-2:]


class LogSender:
    """No provider: log the message (phone masked) and report `NotConfigured`."""

    name = "log"
    free_text = True

    async def send(self, *, message: Message) -> Outcome:
        fields = {"to": masked(message.to), "event": message.event, "language": message.language, "text": message.text}
        log.info("whatsapp message not sent: no provider is configured", extra={"fields": fields})
        return NotConfigured()


@dataclass(frozen=True)
class _Answer:
    status: int
    body: object


async def _post(http: aiohttp.ClientSession, url: str, *, token: str, body: object, seconds: float) -> _Answer | Retry:
    """One POST of `body` as JSON; a timeout or a connection failure is a `Retry`."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"}
    try:
        async with http.post(
            url,
            data=orjson.dumps(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
            allow_redirects=False,
        ) as answer:
            raw = await answer.content.read(MAX_ANSWER + 1)
            status = answer.status
    except TimeoutError:
        return Retry("timeout")
    except (aiohttp.ClientError, OSError):
        return Retry("connection")
    try:
        parsed: object = orjson.loads(raw) if len(raw) <= MAX_ANSWER else None
    except orjson.JSONDecodeError:
        parsed = None
    return _Answer(status, parsed)


def _error_code(body: object) -> int | None:
    """WhatsApp's code from `{"error": {"code": …}}` (the Graph API's envelope; Resayil passes it on)."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _message_id(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_MESSAGE_ID and value.isprintable():
        return value
    return None


def _outcome(answer: _Answer, message_id: str | None) -> Outcome:
    code = _error_code(answer.body)
    if 200 <= answer.status < 300:
        if message_id is not None and code is None:
            return Sent(message_id)
        return NO_MESSAGE_ID if code is None else for_code(code, status=answer.status)
    return for_code(code, status=answer.status)


def _dig(body: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def _fill(shape: object, values: dict[str, str]) -> object:
    """`shape` with every string leaf that is exactly `{name}` replaced by its value. Values are put into
    the parsed structure, never formatted into JSON text, so no message text can change the body's shape."""
    if isinstance(shape, dict):
        return {k: _fill(v, values) for k, v in shape.items()}
    if isinstance(shape, list):
        return [_fill(v, values) for v in shape]
    if isinstance(shape, str) and shape.startswith("{") and shape.endswith("}") and shape[1:-1] in values:
        return values[shape[1:-1]]
    return shape


class ResayilSender:
    """The Resayil gateway: one free-text message a request."""

    name = "resayil"
    free_text = True

    def __init__(self, settings: ResayilSettings, *, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.http = http
        self.url = settings.base_url.rstrip("/") + settings.path

    async def send(self, *, message: Message) -> Outcome:
        s = self.settings
        values = {
            "to": message.to,
            "to_digits": message.to.removeprefix("+"),
            "text": message.text,
            "language": message.language,
        }
        answer = await _post(self.http, self.url, token=s.token, body=_fill(s.body, values), seconds=s.timeout)
        if isinstance(answer, Retry):
            return answer
        return _outcome(answer, _message_id(_dig(answer.body, s.id_field)))


def cloud_param(value: str) -> str:
    """A template parameter Meta accepts: no newline or tab, no run of more than four spaces, not empty."""
    return " ".join(value.split()) or "-"


class CloudSender:
    """The WhatsApp Cloud API: the event's template in the message's language (a user gets one per language)."""

    name = "cloud"
    free_text = False

    def __init__(self, settings: CloudSettings, *, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.http = http
        base = settings.base_url.rstrip("/")
        self.url = f"{base}/{settings.api_version}/{settings.phone_number_id}/messages"

    def body(self, message: Message) -> dict[str, object]:
        s = self.settings
        template: dict[str, object] = {
            "name": s.template_prefix + message.event.replace(".", "_"),
            "language": {"code": s.locales[message.language]},
        }
        if message.params:
            parameters = [{"type": "text", "text": cloud_param(p)} for p in message.params]
            template["components"] = [{"type": "body", "parameters": parameters}]
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.to.removeprefix("+"),
            "type": "template",
            "template": template,
        }

    async def send(self, *, message: Message) -> Outcome:
        s = self.settings
        answer = await _post(self.http, self.url, token=s.token, body=self.body(message), seconds=s.timeout)
        if isinstance(answer, Retry):
            return answer
        messages = _dig(answer.body, ("messages",))
        first = messages[0] if isinstance(messages, list) and messages else None
        return _outcome(answer, _message_id(_dig(first, ("id",))))


def build_sender(settings: ResayilSettings | CloudSettings | None, *, http: aiohttp.ClientSession) -> Sender:
    """The sender for checked provider settings (provider.from_env); None is the log sender."""
    if isinstance(settings, ResayilSettings):
        return ResayilSender(settings, http=http)
    if isinstance(settings, CloudSettings):
        return CloudSender(settings, http=http)
    return LogSender()
