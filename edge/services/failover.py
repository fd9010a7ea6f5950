"""The failover service, owned by failover: each upstream's health and queue, and the daily cloud budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edge.services.keys import Service


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """One upstream as failover sees it across every worker: `state` is `up`, `down` (a local upstream
    cooling off after failures, for `down_for_s` more seconds) or `capped` (a cloud upstream past today's
    cap). A local upstream's `parallel` slots, `slots_in_use` and `queue_depth` (requests waiting for a slot);
    a cloud upstream has no slots (None) and no queue (0)."""

    name: str
    kind: str
    state: str
    down_for_s: int
    parallel: int | None
    slots_in_use: int | None
    queue_depth: int


@dataclass(frozen=True, slots=True)
class CloudBudgetState:
    """Today's cloud requests (`day`: failover's timezone) against the daily cap, and the share used."""

    day: str
    used: int
    cap: int
    percent: int


class Failover(Protocol):
    async def upstreams(self) -> list[UpstreamState]:
        """Every configured upstream, in the config's order (only reads: takes no slot)."""
        ...

    async def cloud_budget(self) -> CloudBudgetState:
        """Today's use of the cloud cap."""
        ...


FAILOVER: Service[Failover] = Service("failover")
