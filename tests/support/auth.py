"""The one test authenticator: a bearer token that spells out the principal it stands for.

    headers = bearer(12, "pro", locale="en", plan_expires_at=1893456000, admin=True)

Inline: `serve(config, plugins=[TokenAuth()])`; in a gateway process (or any config):
`{name: test_auth, module: tests.support.auth, settings: {locale: en, pid_header: true}}`.

A token is `test:` and comma-separated `field=value` pairs (account, tier, user, key, locale, expires, role);
a field left out takes the default below, so a test names only what it is about. Any other token is left to
the next authenticator (the core answers 401 when none takes it); a malformed `test:` token is a 401 of its
own. Never in production: it trusts whatever the token says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from edge.context import Principal, RequestContext
from edge.errors import Unauthorized
from edge.hookspecs import hookimpl

PREFIX = "Bearer test:"


def token(
    account_id: int | None,
    tier: str = "basic",
    *,
    user: int | None = None,
    key: int | None = None,
    locale: str | None = None,
    plan_expires_at: int | None = None,
    admin: bool = False,
) -> str:
    """The bearer token (without `Bearer `) `TokenAuth` turns into that principal."""
    fields = {"account": "" if account_id is None else account_id, "tier": tier, "user": user, "key": key}
    fields |= {"locale": locale, "expires": plan_expires_at, "role": "admin" if admin else None}
    return "test:" + ",".join(f"{name}={value}" for name, value in fields.items() if value is not None)


def bearer(account_id: int | None, tier: str = "basic", **fields: Any) -> dict[str, str]:
    """`Authorization` headers for a caller of `account_id` (None: a principal that pays nothing) on `tier`;
    `fields` as `token` takes them. Unnamed fields default to user `account*10`, key `account*100`, the
    authenticator's locale, no plan end, role user."""
    return {"Authorization": f"Bearer {token(account_id, tier, **fields)}"}


class TokenAuth:
    """Authenticates `Authorization: Bearer test:account=<id>,tier=<tier>,...` (see `bearer`); with
    `pid_header` tags each authenticated answer with the serving process (`x-test-pid`)."""

    name = "test_auth"

    @dataclass
    class Settings:
        locale: str = "ar"
        pid_header: bool = False

    def __init__(self, settings: TokenAuth.Settings | None = None) -> None:
        self.settings = settings or TokenAuth.Settings()

    @hookimpl
    async def resayil_authenticate(self, ctx: RequestContext) -> Principal | None:
        header = ctx.headers.get("authorization", "")
        if not header.startswith(PREFIX):
            return None
        if self.settings.pid_header:
            ctx.response_headers["x-test-pid"] = str(os.getpid())  # which worker answered
        try:
            fields = dict(pair.split("=", 1) for pair in header.removeprefix(PREFIX).split(","))
            account = int(fields["account"]) if fields["account"] else None
            expires = fields.get("expires")
            return Principal(
                account_id=account,
                user_id=int(fields.get("user", (account or 0) * 10)) if account is not None else None,
                key_id=int(fields.get("key", (account or 0) * 100)) if account is not None else None,
                tier=fields.get("tier", "basic"),
                locale=fields.get("locale", self.settings.locale),
                plan_expires_at=int(expires) if expires else None,
                role=fields.get("role", "user"),
            )
        except (KeyError, ValueError):
            raise Unauthorized("Malformed test key.") from None


Plugin = TokenAuth
