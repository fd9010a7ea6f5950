"""A test plugin that makes some accounts' requests report an absurd usage, as a broken or hostile upstream
would, right before the credits plugin settles them.

Inline: `AbsurdUsage(AbsurdUsage.Settings(accounts=[4]))`; in a gateway process:
`{name: credits_absurd_usage, module: tests.support.absurd_usage, settings: {accounts: [4]}}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.context import RequestContext, Usage
from edge.hookspecs import hookimpl


class AbsurdUsage:
    """Replaces the counted usage of the listed accounts' requests with `prompt` and `completion`."""

    name = "credits_absurd_usage"

    @dataclass
    class Settings:
        accounts: list[int] = field(default_factory=list)
        prompt: Any = 10**30
        completion: Any = 10**30

    def __init__(self, settings: AbsurdUsage.Settings | None = None) -> None:
        self.settings = settings or AbsurdUsage.Settings()

    @hookimpl(tryfirst=True)
    async def resayil_settle(self, ctx: RequestContext) -> None:
        principal = ctx.principal
        if principal is not None and principal.account_id in self.settings.accounts:
            ctx.usage = Usage(self.settings.prompt, self.settings.completion, "upstream")


Plugin = AbsurdUsage
