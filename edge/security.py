"""What the gateway tells browsers about itself: whether a request came over https."""

from __future__ import annotations

from edge.asgi import Scope


def over_https(scope: Scope, *, public_url: str) -> bool:
    """Whether this request reached the gateway over https: the public URL is https, the server saw TLS, or
    the proxy in front said so (`x-forwarded-proto`). Only ever used to add protection (a `Secure` cookie,
    HSTS), so a client that claims https over plain http only makes its own cookie unusable."""
    if public_url.startswith("https://") or scope.get("scheme") == "https":
        return True
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-proto":
            return value.split(b",")[0].strip().lower() == b"https"
    return False
