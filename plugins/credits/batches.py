"""Settled charges waiting in a worker to be written together (see leases.py), and their answers.

A batch holds many accounts' charges in one transaction. Every entry is checked before it joins one
(entries.checked), and should a batch fail all the same, each of its entries is written again in a
transaction of its own (`Pending.alone`): if one entry's data is what cannot be written, only that
entry is affected, and every other account's charge is written exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from plugins.credits.entries import log_capped
from plugins.credits.lease_rows import Charge, Written
from plugins.credits.rows import Change

log = logging.getLogger("resayil.credits")


@dataclass(eq=False, slots=True)
class Pending:
    """A settled charge waiting to be written; `alone` once a batch holding it failed: it is then written in
    a transaction of its own, not before `not_before` (monotonic seconds)."""

    charge: Charge
    done: asyncio.Future[Change | None]
    attempts: int = 0
    alone: bool = False
    not_before: float = 0.0


def answer(batch: list[Pending], written: Written | None) -> None:
    """Give each settled request what its batch did: its balance after, what it cost, and whether the
    low-credit line was crossed (told only with the account's last charge of the batch)."""
    if written is None:  # written, but what it did is not known: no balance to report, no event
        for p in batch:
            if not p.done.done():
                p.done.set_result(None)
        return
    last: dict[int, str] = {}
    for p in batch:
        if p.charge.charge_id in written.balances_after:
            last[p.charge.account_id] = p.charge.charge_id
    for p in batch:
        c = p.charge
        if p.done.done():
            continue
        if c.charge_id not in written.balances_after:
            log.warning("lease lost before its charges were written", extra={"fields": {"charge": c.charge_id}})
            p.done.set_result(None)
            continue
        cost = written.charged[c.charge_id]
        log_capped(c.account_id, c.wanted_milli, cost)
        p.done.set_result(
            Change(
                written.balances_after[c.charge_id],
                written.tiers.get(c.account_id),
                crossed_low=c.account_id in written.crossed_low and last[c.account_id] == c.charge_id,
                charged_milli=cost,
            )
        )
