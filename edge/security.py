"""What the gateway tells browsers about itself: whether a request came over https, the headers that keep
the portal and `/api` from being framed, sniffed or fed third-party code, and which request ids it echoes."""

from __future__ import annotations

import re
from typing import Any

from edge.asgi import Receive, Scope, Send

# Only what the portal serves itself: no inline script or style, nothing from another origin, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The one header a JSON API (/v1) needs too: never let a browser guess a type other than the one we sent.
NOSNIFF = (b"x-content-type-options", b"nosniff")
BROWSER_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    NOSNIFF,
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
# A client's request id is logged and echoed, so it must not carry spaces, controls, quotes or markup.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def over_https(scope: Scope, *, public_url: str) -> bool:
    """Whether this request reached the gateway over https: the public URL is https, the server saw TLS, or
    the proxy in front said so (`x-forwarded-proto`). Only ever used to add protection (a `Secure` cookie,
    HSTS), so a client that claims https over plain http only makes its own cookie unusable."""
    if public_url.startswith("https://") or scope.get("scheme") == "https":
        return True
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-proto":
            return bool(value.split(b",")[0].strip().lower() == b"https")
    return False


def client_request_id(value: str | None) -> str | None:
    """The client's `x-request-id` when it is safe to log and echo (ASCII letters, digits, `. _ : -`, at
    most 128), else None: the caller then makes its own."""
    return value if value is not None and SANE_REQUEST_ID.fullmatch(value) else None


class SecurityHeaders:
    """Pure ASGI: every response gets `BROWSER_HEADERS`, and HSTS when the request came over https. A header
    the app already set is left as it is, so a route can ask for more (or other) protection than the default."""

    def __init__(self, app: Any, *, public_url: str) -> None:
        self.app = app
        self.public_url = public_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = (*BROWSER_HEADERS, HSTS) if over_https(scope, public_url=self.public_url) else BROWSER_HEADERS

        async def protected(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(header for header in extra if header[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, protected)
