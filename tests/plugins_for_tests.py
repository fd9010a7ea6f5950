"""Test-only plugins a config can name with `module: tests.plugins_for_tests` (also in server processes)."""

from __future__ import annotations

import os

from edge.context import Principal, RequestContext
from edge.errors import Unauthorized
from edge.hookspecs import hookimpl


def bearer(
    account_id: int, tier: str = "basic", *, key: int = 1, locale: str | None = None, plan_expires_at: int | None = None
) -> dict[str, str]:
    """Headers that `Plugin` turns into a principal of `account_id` on `tier`, using key number `key`."""
    headers = {"Authorization": f"Bearer test:{account_id}:{tier}:{key}"}
    if locale is not None:
        headers["x-test-locale"] = locale
    if plan_expires_at is not None:
        headers["x-test-plan-expires"] = str(plan_expires_at)
    return headers


class Plugin:
    """Authenticates `Authorization: Bearer test:<account id>:<tier>:<key id>`, with `x-test-locale` and
    `x-test-plan-expires` (unix seconds) for the principal's locale and plan end; tags each answer with
    the serving process (`x-test-pid`). Never in production."""

    name = "test_auth"

    @hookimpl
    async def resayil_authenticate(self, ctx: RequestContext) -> Principal | None:
        header = ctx.headers.get("authorization", "")
        if not header.startswith("Bearer test:"):
            return None
        try:
            _, account, tier, key = header.removeprefix("Bearer ").split(":")
            expires = ctx.headers.get("x-test-plan-expires")
            return Principal(
                account_id=int(account),
                user_id=int(account),
                tier=tier,
                key_id=int(key),
                locale=ctx.headers.get("x-test-locale", "en"),
                plan_expires_at=int(expires) if expires else None,
            )
        except ValueError:
            raise Unauthorized("Malformed test key.") from None

    @hookimpl
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        ctx.response_headers["x-test-pid"] = str(os.getpid())
