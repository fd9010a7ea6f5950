"""The transactional outbox: domain events stored in the `events` table and delivered from it.

`gateway.events.publish(event, conn=conn)` writes the event's row in the transaction `conn` is in, so the
event exists exactly when what it announces was committed: a rollback takes it away, a commit keeps it
whatever happens to the worker next. Without `conn` the row is written in a transaction of its own.

What stays true, on any number of workers and hosts:
- Every committed event is delivered at least once to every `resayil_event` implementation. Right after
  the commit the publishing worker delivers it off the request path (`Database.after_commit`, then a
  spawned task); the `events.dispatch` job delivers whatever that missed: a worker killed between the
  commit and the delivery, a consumer that failed, a publisher outside `Database.begin`.
- A row is delivered by one worker at a time: a worker claims rows with one conditional UPDATE (unclaimed,
  or its previous claim's lease expired) before delivering them. A worker that dies or hangs mid-delivery
  loses its claim when the lease runs out, and the row is delivered again: at least once, not exactly
  once. Consumers de-duplicate on `event.id`.
- A consumer that fails (or outlasts `consumer_timeout_seconds`) gets the event again after a backoff
  that doubles up to `max_backoff_seconds`; the consumers that took it are remembered by plugin name
  (`delivered_to`) and not called again for it by a worker that holds the claim.
- Order is not guaranteed. Delivered rows are kept `retention_days`, then the `events.prune` job deletes
  them; undelivered rows are never deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncConnection

from edge.clock import utc_now
from edge.config import EventSettings
from edge.events import CORE_EVENTS, Event, EventTypes, encode
from edge.hookspecs import hookimpl
from edge.jobs import Job

if TYPE_CHECKING:
    from edge.gateway import Gateway

log = logging.getLogger("resayil.events")
# Batches one dispatch run delivers at most; the next run goes on where it stopped.
MAX_BATCHES = 20

metadata = sa.MetaData()
Moment = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("created_at", Moment, nullable=False),
    sa.Column("next_attempt_at", Moment, nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_until", Moment, nullable=True),
    # A JSON list of the plugins that have taken the event.
    sa.Column("delivered_to", sa.Text(), nullable=True),
    sa.Column("delivered_at", Moment, nullable=True),
    sa.Column("last_error", sa.String(500), nullable=True),
    # The dispatcher's question: what is undelivered and due.
    sa.Index("ix_events_pending", "delivered_at", "next_attempt_at"),
)


def backoff(settings: EventSettings, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: doubling, capped."""
    return float(min(settings.first_backoff_seconds * 2 ** min(attempts - 1, 30), settings.max_backoff_seconds))


class Outbox:
    """One gateway's publisher and deliverer of events (`gateway.events`)."""

    def __init__(self, gateway: Gateway, types: EventTypes, settings: EventSettings) -> None:
        self.gateway = gateway
        self.types = types
        self.settings = settings
        # Who holds a claim, for an operator reading the table: host, process, and a part no other worker has.
        # UTC-naive; tests move it instead of sleeping through backoffs and leases.
        self.clock: Callable[[], datetime] = utc_now
        self.worker = f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"

    async def publish(self, *events: Event, conn: AsyncConnection | None = None) -> None:
        """Store `events`: in `conn`'s transaction when given (delivered once it commits, never when it rolls
        back), else in a transaction of their own. Raises TypeError for an unregistered event type."""
        if not events:
            return
        now = self.clock()
        rows = [
            {
                "id": event.id,
                "name": self.types.check(event),
                "payload": encode(event).decode(),
                "created_at": now,
                "next_attempt_at": now,
                "attempts": 0,
            }
            for event in events
        ]
        if conn is None:
            async with self.gateway.database.begin() as own:
                await self._write(own, rows)
            return
        await self._write(conn, rows)

    def publish_soon(self, *events: Event) -> None:
        """Store `events` in a transaction of their own, off the caller's path (a failure is logged): for
        events with no transaction to share, announced from the request path."""
        self.gateway.spawn(self._publish_logged(events))

    async def _publish_logged(self, events: tuple[Event, ...]) -> None:
        try:
            await self.publish(*events)
        except Exception:
            names = [type(event).event_name for event in events]
            log.exception("could not store events; they are lost", extra={"fields": {"events": names}})

    async def _write(self, conn: AsyncConnection, rows: list[dict[str, object]]) -> None:
        await conn.execute(events.insert(), rows)
        ids = [str(row["id"]) for row in rows]
        # Delivered straight after the commit, off the caller's path; should this worker die first, the
        # dispatch job delivers it.
        self.gateway.database.after_commit(conn, lambda: self._kick(ids))

    def _kick(self, ids: list[str]) -> None:
        self.gateway.spawn(self.deliver(ids=ids))

    # ---- delivery ------------------------------------------------------------------------------------------

    async def dispatch(self) -> int:
        """Deliver every due undelivered row, a batch at a time; returns how many were delivered fully."""
        delivered = 0
        for _ in range(MAX_BATCHES):
            claimed = await self._claim(ids=None)
            delivered += sum(await asyncio.gather(*(self._deliver(row) for row in claimed)))
            if len(claimed) < self.settings.batch:
                break
        return delivered

    async def deliver(self, *, ids: list[str]) -> int:
        """Deliver these rows now if nobody holds them (the publisher's own attempt after its commit)."""
        try:
            claimed = await self._claim(ids=ids)
            return sum(await asyncio.gather(*(self._deliver(row) for row in claimed)))
        except Exception:
            log.exception("could not deliver events after their commit; the dispatch job will")
            return 0

    async def _claim(self, *, ids: list[str] | None) -> list[sa.Row[tuple[object, ...]]]:
        """Claim rows for this worker with one conditional UPDATE, then read what it got."""
        now = self.clock()
        token = f"{self.worker}:{secrets.token_hex(4)}"
        free = sa.and_(
            events.c.delivered_at.is_(None), sa.or_(events.c.claimed_until.is_(None), events.c.claimed_until < now)
        )
        db = self.gateway.database
        async with db.begin() as conn:
            if ids is None:
                # MariaDB cannot UPDATE ... LIMIT with IN (subquery) on the same table: pick the ids first.
                query = (
                    sa.select(events.c.id)
                    .where(free, events.c.next_attempt_at <= now)
                    .order_by(events.c.next_attempt_at)
                    .limit(self.settings.batch)
                )
                ids = list((await conn.execute(query)).scalars())
            if not ids:
                return []
            lease = now + timedelta(seconds=self.settings.lease_seconds)
            await conn.execute(
                events.update().where(events.c.id.in_(ids), free).values(claimed_by=token, claimed_until=lease)
            )
        async with db.connect() as conn:
            query = sa.select(
                events.c.id,
                events.c.name,
                events.c.payload,
                events.c.attempts,
                events.c.delivered_to,
                events.c.claimed_by,
            ).where(events.c.claimed_by == token)
            return list((await conn.execute(query)).all())

    async def _deliver(self, row: sa.Row[tuple[object, ...]]) -> bool:
        """Hand one claimed row to the consumers that have not taken it; record how that went."""
        event_id, name, attempts = str(row.id), str(row.name), int(row.attempts) + 1
        done: list[str] = orjson.loads(row.delivered_to) if row.delivered_to else []
        fields = {"event": name, "event_id": event_id, "attempt": attempts}
        try:
            event = self.types.decode(name=name, event_id=event_id, payload=row.payload)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("an event no enabled plugin can read; kept for later", extra={"fields": fields})
            outcome: dict[str, BaseException | None] = {"outbox": exc}
        else:
            outcome = await self.gateway.chain.each_plugin(
                "resayil_event",
                skip=frozenset(done),
                within_seconds=self.settings.consumer_timeout_seconds,
                event=event,
            )
        done += [plugin for plugin, failure in outcome.items() if failure is None]
        failures = [(plugin, failure) for plugin, failure in outcome.items() if failure is not None]
        now = self.clock()
        values: dict[str, object] = {"attempts": attempts, "claimed_by": None, "claimed_until": None}
        values["delivered_to"] = orjson.dumps(done).decode()
        if failures:
            plugin, failure = failures[0]
            values["next_attempt_at"] = now + timedelta(seconds=backoff(self.settings, attempts))
            values["last_error"] = f"{plugin}: {type(failure).__name__}: {failure}"[:500]
            log.warning("event delivery failed; it will be retried", extra={"fields": {**fields, "plugin": plugin}})
        else:
            values["delivered_at"] = now
        async with self.gateway.database.begin() as conn:
            # Only while the claim is still this worker's: after its lease ran out the row is another's.
            await conn.execute(
                events.update().where(events.c.id == event_id, events.c.claimed_by == row.claimed_by).values(**values)
            )
        return not failures

    async def prune(self) -> int:
        """Delete rows delivered longer than `retention_days` ago; returns how many."""
        cutoff = self.clock() - timedelta(days=self.settings.retention_days)
        pruned = 0
        while True:
            async with self.gateway.database.begin() as conn:
                query = sa.select(events.c.id).where(events.c.delivered_at < cutoff).limit(500)
                ids = list((await conn.execute(query)).scalars())
                if ids:
                    await conn.execute(events.delete().where(events.c.id.in_(ids)))
            pruned += len(ids)
            if len(ids) < 500:
                return pruned


class CoreEvents:
    """The core's event types, and the two outbox jobs: `events.dispatch` (delivers what is due, on one
    worker of all) and `events.prune` (deletes delivered rows past retention)."""

    @hookimpl(trylast=True)
    def resayil_event_types(self) -> list[type[Event]]:
        return list(CORE_EVENTS)

    @hookimpl(trylast=True)
    def resayil_jobs(self, gateway: Gateway) -> list[Job]:
        every = gateway.config.events.dispatch_every_seconds
        return [
            Job("events.dispatch", _dispatch, every_seconds=every),
            Job("events.prune", _prune, every_seconds=3600),
        ]


async def _dispatch(gateway: Gateway) -> None:
    await gateway.events.dispatch()


async def _prune(gateway: Gateway) -> None:
    pruned = await gateway.events.prune()
    if pruned:
        log.info("pruned delivered events", extra={"fields": {"rows": pruned}})
