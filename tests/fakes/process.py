"""Running a fake: for the span of a block in a test, or as its own process until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar


class Fake(Protocol):
    url: str

    async def start(self, host: str = ..., port: int = ...) -> str: ...

    async def stop(self) -> None: ...


F = TypeVar("F", bound=Fake)


@contextlib.asynccontextmanager
async def running(fake: F, port: int = 0) -> AsyncIterator[F]:
    """`fake` served on 127.0.0.1 (port 0 = a free port) for the duration of the block."""
    await fake.start("127.0.0.1", port)
    try:
        yield fake
    finally:
        await fake.stop()


async def serve(fake: Fake, host: str, port: int) -> None:
    await fake.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"ready {fake.url}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await fake.stop()
