"""The Redis lock that makes a single-runner job's due run happen on exactly one worker of all hosts.

Two keys a job: `resayil:jobs:<name>:lock` holds the token of the worker running it (SET NX PX: it expires
unless renewed), and `resayil:jobs:<name>:due` the last due instant (Unix ms) some worker claimed. One
script claims a run: it fails when that instant (or a later one) was already claimed, or when the lock is
taken, and otherwise takes the lock and records the instant, so two workers can never both claim one due
run, whatever their clocks or timing. Renewal and release compare the token first: a worker whose lock
expired and was taken by another can neither extend nor delete the other's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from edge.jobs import Job

log = logging.getLogger("resayil.jobs")
PREFIX = "resayil:jobs:"

# KEYS: lock, last due. ARGV: token, lock ms, due ms, how long the due mark is kept (ms).
# Returns 1 claimed, 0 already claimed (done elsewhere), -1 the lock is held (an earlier run still going).
_CLAIM = """
local last = redis.call('GET', KEYS[2])
if last and tonumber(last) >= tonumber(ARGV[3]) then return 0 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Claim = Literal["claimed", "done", "busy"]


def lock_seconds(job: Job) -> float:
    """How long the lock outlives its last renewal: half the period (0.5 s to 30 s), so the workers left
    take over a dead holder's job within one interval of its death."""
    return min(max(job.period / 2, 0.5), 30.0)


def lock_key(job: Job) -> str:
    return f"{PREFIX}{job.name}:lock"


class JobLock:
    """Claims, renews and releases single-runner jobs' runs on one Redis; one per worker."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        # Who holds a lock, for an operator reading Redis: host, process, and a part no other worker has.
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def claim(self, job: Job, *, due: float) -> Claim:
        keep_mark = int(max(3 * job.period, 60.0) * 1000)
        reply = await self._claim(
            keys=[lock_key(job), f"{PREFIX}{job.name}:due"],
            args=[self.token, int(lock_seconds(job) * 1000), round(due * 1000), keep_mark],
        )
        return "claimed" if reply == 1 else "done" if reply == 0 else "busy"

    async def take(self, job: Job) -> bool:
        """The lock alone, with no due instant: a run started by hand (`python -m edge jobs run`)."""
        return bool(await self.redis.set(lock_key(job), self.token, nx=True, px=int(lock_seconds(job) * 1000)))

    async def holder(self, job: Job) -> str | None:
        value = await self.redis.get(lock_key(job))
        return value.decode() if isinstance(value, bytes) else value

    async def keep(self, job: Job) -> None:
        """Renew the lock until cancelled (the run ended)."""
        every = lock_seconds(job) / 3
        while True:
            await asyncio.sleep(every)
            try:
                renewed = await self._renew(keys=[lock_key(job)], args=[self.token, int(lock_seconds(job) * 1000)])
            except Exception:
                log.warning("could not renew a job's lock", exc_info=True, extra={"fields": {"job": job.name}})
                continue
            if not renewed:
                log.warning("a job's lock expired while it ran", extra={"fields": {"job": job.name}})
                return

    async def release(self, job: Job) -> None:
        try:
            await self._release(keys=[lock_key(job)], args=[self.token])
        except Exception:
            # It expires by itself; until then the other workers only wait.
            log.warning("could not release a job's lock", exc_info=True, extra={"fields": {"job": job.name}})
