"""The in-process key cache and the invalidations that keep every worker's copy honest.

A hit is one SHA-256 and one dict look-up. Revocations, tier and role changes are published on a Redis
channel (when Redis is configured) that every worker listens to, and applied locally at once, so a
revoked key stops working everywhere well within a second. A time-to-live bounds the damage of a
message missed while the subscription was down; the cache is also emptied on every (re)subscribe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from edge.context import Principal

log = logging.getLogger("resayil.auth_keys")
CHANNEL = "resayil:auth:invalidate"
MAX_ENTRIES = 100_000


@dataclass(slots=True)
class Entry:
    principal: Principal
    expires_at: int | None  # the key's own expiry, unix seconds
    stale_at: float  # monotonic: look the key up again after this


class KeyCache:
    """Secret hash → principal. `generation` moves on every invalidation so that a look-up that started
    before one cannot store what it read."""

    def __init__(self, *, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self.entries: dict[str, Entry] = {}
        self.generation = 0

    def put(
        self,
        digest: str,
        *,
        principal: Principal,
        expires_at: int | None,
        generation: int,
        now: float,
        keep: bool = True,
    ) -> Entry:
        """The entry for a fresh look-up at monotonic `now`; kept only when `keep` and no invalidation came
        in between."""
        entry = Entry(principal, expires_at, now + self.ttl)
        if keep and generation == self.generation:
            if len(self.entries) >= MAX_ENTRIES:
                self.entries.clear()
            self.entries[digest] = entry
        return entry

    def apply(self, message: str) -> None:
        """`key:<id>`, `account:<id>`, `user:<id>` or `all`: drop the matching entries."""
        self.generation += 1
        kind, _, raw = message.partition(":")
        if kind == "all":
            self.entries.clear()
            return
        if not raw.isdigit() or kind not in ("key", "account", "user"):
            log.warning("ignoring an unknown invalidation", extra={"fields": {"message": message[:64]}})
            return
        ident = int(raw)
        for digest, entry in list(self.entries.items()):
            p = entry.principal
            if (
                (kind == "key" and p.key_id == ident)
                or (kind == "account" and p.account_id == ident)
                or (kind == "user" and p.user_id == ident)
            ):
                self.entries.pop(digest, None)


class Invalidations:
    """Publishes invalidations and, with Redis, listens for everyone else's."""

    def __init__(self, *, cache: KeyCache, redis: aioredis.Redis | None) -> None:
        self.cache = cache
        self.redis = redis
        self.task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        # Channels are server-wide, not per database: gateways sharing a Redis server on different
        # databases must not hear each other.
        db = redis.connection_pool.connection_kwargs.get("db", 0) if redis is not None else 0
        self.channel = f"{CHANNEL}:{db}"

    @property
    def live(self) -> bool:
        """True when this worker hears every invalidation (always, without Redis: there is one worker)."""
        return self.redis is None or self.subscribed.is_set()

    async def start(self) -> None:
        if self.redis is None:
            return
        self.task = asyncio.create_task(self._listen(), name="auth_keys.invalidations")
        # Subscribed before serving, so nothing published from now on is missed by this worker.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), timeout=5)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            # Bounded: a cancellation swallowed inside the Redis client must not keep the process alive.
            await asyncio.wait({self.task}, timeout=5)
            self.task = None

    async def publish(self, message: str) -> None:
        self.cache.apply(message)
        if self.redis is None:
            return
        try:
            await self.redis.publish(self.channel, message)
        except Exception:
            # The change is in the database; other workers catch up when their entries go stale.
            log.exception("could not publish a key cache invalidation")

    async def _listen(self) -> None:
        assert self.redis is not None
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.cache.apply("all")
                self.subscribed.set()
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        self.cache.apply(data.decode("utf-8", "replace"))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("key cache subscription lost; retrying", exc_info=True)
            finally:
                # Until subscribed again nothing is cached, and what was cached may have missed a message.
                self.subscribed.clear()
                self.cache.apply("all")
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(1)
