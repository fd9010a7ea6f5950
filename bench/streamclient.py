"""A streaming load generator: `concurrency` clients, each posting a streamed chat completion in a loop.

Run as its own (pinned) process by `bench.load`; prints one JSON object with every request's time to
first byte and to last byte, so the parent computes the percentiles. wrk cannot see the first byte.

    python -m bench.streamclient --url URL --body-file F --concurrency 16 --duration 15 --expect-content 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import orjson

from bench.cases import content_events


def server_timing(header: str) -> dict[str, float]:
    """`read;dur=0.21, auth;dur=0.05` as {"read": 0.21, "auth": 0.05} (a phase seen twice is added up)."""
    phases: dict[str, float] = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name and dur:
            phases[name] = phases.get(name, 0.0) + float(dur)
    return phases


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    expect_content: int,
    phases: dict[str, list[float]],
) -> tuple[float, float] | str:
    """(seconds to first body byte, seconds to last byte), or why the stream was not a good one. A gateway's
    `server-timing` phases of a good stream go into `phases`."""
    started = time.perf_counter()
    first = 0.0
    received: list[bytes] = []
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            await resp.read()
            return f"status {resp.status}"
        async for data in resp.content.iter_any():
            if not first:
                first = time.perf_counter()
            received.append(data)
    ended = time.perf_counter()
    whole = b"".join(received)
    if not first or not whole.rstrip().endswith(b"data: [DONE]"):
        return "incomplete"
    if expect_content and (found := content_events(whole)) != expect_content:
        return f"{found} content events"
    for name, ms in server_timing(resp.headers.get("server-timing", "")).items():
        phases.setdefault(name, []).append(ms)
    return first - started, ended - started


async def _client(
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
    times: list[tuple[float, float]],
    errors: Counter[str],
    phases: dict[str, list[float]],
    delay: float,
) -> None:
    await asyncio.sleep(delay)
    while time.perf_counter() < deadline:
        try:
            result = await _one(session, args.url, body, headers, args.expect_content, phases)
        except (aiohttp.ClientError, OSError) as exc:
            result = type(exc).__name__
        if isinstance(result, str):
            errors[result] += 1
        else:
            times.append(result)


async def run(args: argparse.Namespace, body: bytes) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    for line in args.header:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    times: list[tuple[float, float]] = []
    errors: Counter[str] = Counter()
    phases: dict[str, list[float]] = {}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        cpu0 = time.process_time()
        started = time.perf_counter()
        deadline = started + args.duration
        # Client i starts i/n of the stagger late, so paced streams do not start (and then stay) in step.
        delays = [i * args.stagger / args.concurrency for i in range(args.concurrency)]
        await asyncio.gather(
            *(_client(session, args, body, headers, deadline, times, errors, phases, d) for d in delays)
        )
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    return {
        "requests": len(times),
        "seconds": elapsed,
        "errors": dict(errors),
        "ttfb": [round(t[0], 7) for t in times],
        "ttlb": [round(t[1], 7) for t in times],
        "cpu_seconds": cpu,
        # Median milliseconds of each phase the gateway reported before the first byte (none for an upstream).
        "phases": {name: statistics.median(values) for name, values in phases.items()},
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.streamclient")
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--header", action="append", default=[], help="extra 'Name: value' header (repeatable)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument(
        "--expect-content", type=int, default=0, help="events with content in a whole stream (0 = any number)"
    )
    p.add_argument(
        "--stagger", type=float, default=0.0, help="spread the clients' first requests over this many seconds"
    )
    args = p.parse_args(argv)
    body = Path(args.body_file).read_bytes()
    try:
        import uvloop

        result = uvloop.run(run(args, body))
    except ImportError:
        result = asyncio.run(run(args, body))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
