"""The fake Ollama of `tests/fakes/ollama.py`, served for the benchmark: on uvloop, with a bounded history.

Same server, same answers, as `python -m tests.fakes.ollama`, with two differences that matter under load:
uvloop makes it cheaper (about 0.6 ms instead of 0.75 ms a request at concurrency 1 on the reference
machine), so the upstream's share of the CPU it shares with the load generator stays small; and the
request history the tests inspect (`FakeOllama.served`, every body and header) is cleared every second,
where the plain fake keeps it all (gigabytes after a few minutes at thousands of requests a second).

    python -m bench.fake --port 0 --chunks 20     # prints "ready <url>"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

import uvloop

from tests.fakes.ollama import FakeOllama, FakeSettings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fake", description="The fake Ollama, for benchmarks.")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each answer starts")
    p.add_argument("--chunks", type=int, default=20, help="completion tokens (stream chunks) per answer")
    p.add_argument("--chunk-interval", type=float, default=0.0, help="seconds between stream chunks")
    return p.parse_args(argv)


async def serve(settings: FakeSettings, port: int) -> None:
    fake = FakeOllama(settings)
    await fake.start("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"ready {fake.url}\n")
    sys.stdout.flush()
    try:
        while not stop.is_set():
            fake.served.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = FakeSettings(latency=args.latency, chunks=args.chunks, chunk_interval=args.chunk_interval)
    uvloop.run(serve(settings, args.port))


if __name__ == "__main__":
    main()
