"""The WhatsApp provider's settings, from the environment (secrets never live in YAML or git).

- `RESAYIL_WHATSAPP_PROVIDER`: `log` (the default), `resayil` or `cloud`.
- `RESAYIL_WHATSAPP_TOKEN`: the bearer token; required for resayil and cloud.
- `RESAYIL_WHATSAPP_URL`: resayil's base URL, required (e.g. `https://wa.resayil.io/api/v1`); for
  cloud the Graph API's (default `https://graph.facebook.com`).
- `RESAYIL_WHATSAPP_TIMEOUT`: seconds one request may take (default 10).
- resayil only: `RESAYIL_WHATSAPP_PATH`, the send path under the base URL (default `/messages/send`);
  `RESAYIL_WHATSAPP_BODY`, `text` (default: `{"to","type":"text","text":{"body"}}`), `legacy`
  (`{"phone","message","language"}`) or a JSON object whose string leaves `{to}`, `{to_digits}`,
  `{text}`, `{language}` are filled in; `RESAYIL_WHATSAPP_ID_FIELD`, where the answer names the
  message id, dotted (default `message_id`).
- cloud only: `RESAYIL_WHATSAPP_CLOUD_PHONE_NUMBER_ID` (required), the sending number's id;
  `RESAYIL_WHATSAPP_CLOUD_API_VERSION` (default `v21.0`); `RESAYIL_WHATSAPP_CLOUD_LOCALES`, the locale
  each language's templates were approved under (default `ar=ar,en=en`; `en_US` is not `en`);
  `RESAYIL_WHATSAPP_CLOUD_TEMPLATE_PREFIX`, template names are this plus the event with `_` for `.`
  (default `resayil_`).

The token goes to the provider only over HTTPS; plain HTTP is allowed to a loopback address alone
(a local relay, the tests' fake). A bad value stops startup with a message naming the variable, never
showing the token.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from edge.settings import ConfigError

PREFIX = "RESAYIL_WHATSAPP_"
LANGUAGES = ("ar", "en")
BODIES: dict[str, dict[str, object]] = {
    "text": {"to": "{to}", "type": "text", "text": {"body": "{text}"}},
    "legacy": {"phone": "{to}", "message": "{text}", "language": "{language}"},
}
FIELDS = frozenset({"to", "to_digits", "text", "language"})
_LOCALE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_NAME = re.compile(r"[a-z0-9_]{0,200}")
_VERSION = re.compile(r"v[0-9]{1,3}\.[0-9]{1,3}")


@dataclass(frozen=True)
class ResayilSettings:
    base_url: str
    token: str = field(repr=False)
    path: str = "/messages/send"
    body: dict[str, object] = field(default_factory=lambda: BODIES["text"])
    id_field: tuple[str, ...] = ("message_id",)
    timeout: float = 10.0


@dataclass(frozen=True)
class CloudSettings:
    phone_number_id: str
    token: str = field(repr=False)
    base_url: str = "https://graph.facebook.com"
    api_version: str = "v21.0"
    locales: dict[str, str] = field(default_factory=lambda: {"ar": "ar", "en": "en"})
    template_prefix: str = "resayil_"
    timeout: float = 10.0


def from_env(env: Mapping[str, str]) -> ResayilSettings | CloudSettings | None:
    """The provider's checked settings; None for the `log` provider."""
    provider = env.get(PREFIX + "PROVIDER", "log").strip() or "log"
    if provider == "log":
        return None
    if provider not in {"resayil", "cloud"}:
        raise ConfigError(f"{PREFIX}PROVIDER: must be log, resayil or cloud, not {provider[:40]!r}")
    token = env.get(PREFIX + "TOKEN", "").strip()
    if not token or not token.isprintable():
        raise ConfigError(f"{PREFIX}TOKEN: required for the {provider} provider")
    timeout = _timeout(env.get(PREFIX + "TIMEOUT", "10"))
    if provider == "resayil":
        return ResayilSettings(
            base_url=_url(env.get(PREFIX + "URL", "")),
            token=token,
            path=_path(env.get(PREFIX + "PATH", "/messages/send")),
            body=_body(env.get(PREFIX + "BODY", "text")),
            id_field=_id_field(env.get(PREFIX + "ID_FIELD", "message_id")),
            timeout=timeout,
        )
    phone_id = env.get(PREFIX + "CLOUD_PHONE_NUMBER_ID", "").strip()
    if not phone_id.isdigit() or len(phone_id) > 32:
        raise ConfigError(f"{PREFIX}CLOUD_PHONE_NUMBER_ID: required for the cloud provider, digits only")
    version = env.get(PREFIX + "CLOUD_API_VERSION", "v21.0").strip()
    if not _VERSION.fullmatch(version):
        raise ConfigError(f"{PREFIX}CLOUD_API_VERSION: must look like v21.0")
    prefix = env.get(PREFIX + "CLOUD_TEMPLATE_PREFIX", "resayil_").strip()
    if not _NAME.fullmatch(prefix):
        raise ConfigError(f"{PREFIX}CLOUD_TEMPLATE_PREFIX: lowercase letters, digits and _ only")
    return CloudSettings(
        phone_number_id=phone_id,
        token=token,
        base_url=_url(env.get(PREFIX + "URL", "https://graph.facebook.com")),
        api_version=version,
        locales=_locales(env.get(PREFIX + "CLOUD_LOCALES", "ar=ar,en=en")),
        template_prefix=prefix,
        timeout=timeout,
    )


def _url(raw: str) -> str:
    name = PREFIX + "URL"
    url = raw.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise ConfigError(f"{name}: not a valid URL") from None
    if parts.scheme not in {"http", "https"} or not host or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"{name}: must be an http(s) URL with a host and no query, fragment or user")
    if parts.scheme == "http" and not _loopback(host):
        raise ConfigError(f"{name}: must be https (the token would cross the network in clear)")
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _path(raw: str) -> str:
    path = raw.strip()
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", path):
        raise ConfigError(f"{PREFIX}PATH: must be a path such as /messages/send")
    return path


def _body(raw: str) -> dict[str, object]:
    name = PREFIX + "BODY"
    text = raw.strip()
    if text in BODIES:
        return BODIES[text]
    try:
        shape = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ConfigError(f"{name}: must be text, legacy or a JSON object") from None
    if not isinstance(shape, dict):
        raise ConfigError(f"{name}: must be text, legacy or a JSON object")
    used = set(_placeholders(shape))
    unknown = used - FIELDS
    if unknown:
        raise ConfigError(
            f"{name}: unknown placeholder {{{sorted(unknown)[0]}}}; use {{to}}, {{to_digits}}, {{text}}, {{language}}"
        )
    if "text" not in used or not used & {"to", "to_digits"}:
        raise ConfigError(f"{name}: must place {{text}} and {{to}} (or {{to_digits}})")
    return shape


def _placeholders(shape: object) -> list[str]:
    if isinstance(shape, dict):
        return [p for v in shape.values() for p in _placeholders(v)]
    if isinstance(shape, list):
        return [p for v in shape for p in _placeholders(v)]
    if isinstance(shape, str) and re.fullmatch(r"\{[A-Za-z_]+\}", shape):
        return [shape[1:-1]]
    return []


def _id_field(raw: str) -> tuple[str, ...]:
    parts = tuple(raw.strip().split("."))
    if not all(re.fullmatch(r"[A-Za-z0-9_]{1,64}", p) for p in parts):
        raise ConfigError(f"{PREFIX}ID_FIELD: a dotted path of field names, such as message_id or data.id")
    return parts


def _timeout(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 120:
        raise ConfigError(f"{PREFIX}TIMEOUT: seconds between 0.1 and 120")
    return value


def _locales(raw: str) -> dict[str, str]:
    name = PREFIX + "CLOUD_LOCALES"
    locales: dict[str, str] = {}
    for pair in raw.split(","):
        language, _, locale = pair.strip().partition("=")
        if language not in LANGUAGES or not _LOCALE.fullmatch(locale) or language in locales:
            raise ConfigError(f"{name}: must be ar=<locale>,en=<locale>, such as ar=ar,en=en_US")
        locales[language] = locale
    if set(locales) != set(LANGUAGES):
        raise ConfigError(f"{name}: must name a locale for both ar and en")
    return locales
