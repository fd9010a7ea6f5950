"""A Redis claim: one plugin's script step, run inside another plugin's script call to save a round trip.

The rate limiter checks each request's window in one Redis script during `admit`; the failover plugin
takes a local-queue slot in one of its own during `route`. Before the first byte that is two round trips,
and on an idle machine each costs more than its work. So a plugin that will need a Redis step for a request
offers it as a claim (`resayil_redis_claim`), the edge hands it to the admit phase once every authorize
passed, and the rate limiter, when it checks that request's window on the gateway's own Redis, runs the
claim in the same script, and only if the window admits the request. Admit is the last phase before
reserve, so a claim that ran is always followed by settle, where its plugin gives it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RedisClaim:
    """`lua` defines `local function claim(KEYS, ARGV)`, which returns a list; `keys` and `args` are its KEYS
    and ARGV. The plugin running it calls `accept` with that list when its own check let the claim run, or
    `abandon` when the call failed or was cancelled and whether the claim ran is unknown. Neither, when its
    check refused the request or it runs no claims (another Redis, in-process windows): then the claim did
    not run, and its plugin takes the step itself."""

    lua: str
    keys: list[str]
    args: list[Any]
    accept: Callable[[list[Any]], None]
    abandon: Callable[[], None]
