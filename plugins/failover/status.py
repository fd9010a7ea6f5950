"""What operators see of failover: each upstream's state, slots in use and line by tier, and the cloud cap.

What stays true: it only reads (the slot store's snapshot and today's cloud count), so an admin looking, or
/readyz asking, never takes or gives back a slot; every tier the config knows is listed, waiting or not.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from edge.services import CloudBudgetState, UpstreamState
from plugins.failover.budget import CloudBudget
from plugins.failover.slots import SlotStore

if TYPE_CHECKING:
    from edge.gateway import Gateway


async def upstream_states(*, gateway: Gateway, slots: SlotStore, budget: CloudBudget) -> dict[str, Any]:
    """Each upstream: its state, slots in use of its parallel slots, and who waits, by tier."""
    status = await budget.status()
    data: list[dict[str, Any]] = []
    for name, upstream in gateway.upstreams.items():
        if upstream.kind != "local":
            exhausted = status["used"] >= status["cap"]
            data.append(
                {
                    "name": name,
                    "kind": upstream.kind,
                    "state": "capped" if exhausted else "up",
                    "cloud_budget": status,
                }
            )
            continue
        snap = await slots.snapshot(upstream=name)
        waiting = {tier: snap.waiting.get(tier, 0) for tier in gateway.config.tiers}
        waiting.update(snap.waiting)
        data.append(
            {
                "name": name,
                "kind": upstream.kind,
                "state": "down" if snap.down_for_s else "up",
                "down_for_s": math.ceil(snap.down_for_s),
                "parallel": upstream.settings.parallel,
                "slots_in_use": snap.in_use,
                "queue_depth": sum(snap.waiting.values()),
                "queue_by_tier": waiting,
            }
        )
    return {"object": "list", "data": data}


def readiness(states: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A part per local upstream: down (cooling off after failures) makes it not ok."""
    parts: dict[str, dict[str, Any]] = {}
    for entry in states["data"]:
        if entry["kind"] == "local":
            parts[f"queue:{entry['name']}"] = {
                "ok": entry["state"] == "up",
                "state": entry["state"],
                "down_for_s": entry["down_for_s"],
                "slots_in_use": entry["slots_in_use"],
                "queue_depth": entry["queue_depth"],
            }
    return parts


class FailoverService:
    """Implements `edge.services.Failover` (the admins' overview) over the same reads as the routes above."""

    def __init__(self, *, gateway: Gateway, slots: SlotStore, budget: CloudBudget) -> None:
        self.gateway = gateway
        self.slots = slots
        self.budget = budget

    async def upstreams(self) -> list[UpstreamState]:
        states = await upstream_states(gateway=self.gateway, slots=self.slots, budget=self.budget)
        return [
            UpstreamState(
                name=entry["name"],
                kind=entry["kind"],
                state=entry["state"],
                down_for_s=int(entry.get("down_for_s", 0)),
                parallel=entry.get("parallel"),
                slots_in_use=entry.get("slots_in_use"),
                queue_depth=int(entry.get("queue_depth", 0)),
            )
            for entry in states["data"]
        ]

    async def cloud_budget(self) -> CloudBudgetState:
        status = await self.budget.status()
        return CloudBudgetState(
            day=str(status["day"]), used=int(status["used"]), cap=int(status["cap"]), percent=int(status["percent"])
        )
