"""`--soak SECONDS`: a long mixed load on a running target, watching each worker's memory as it goes.

Plain chat completions (wrk, 32 connections) and 20-chunk streams (8 clients) at the same time, for the
whole period. Every few seconds each worker's resident memory is read from /proc; the result is the memory
at the start, at half time and at the end, and the growth over the second half (issue 7: under 120 MB a
worker after five minutes, growing less than 10 % over the second half). Errors are counted as in a case.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.cases import CASES
from bench.load import LoadResult, Shot, run_streams, run_wrk
from bench.measure import say
from bench.procs import memory_kib
from bench.targets import BenchEnv, Running, Target

PLAIN, STREAMS = 32, 8


@dataclass
class SoakResult:
    target: str
    seconds: float
    plain: LoadResult
    streams: LoadResult
    # (seconds since the start, {worker pid: VmRSS KiB})
    samples: list[tuple[float, dict[int, int]]] = field(default_factory=list)

    def at(self, fraction: float) -> dict[int, int]:
        """The sample closest to this fraction of the run."""
        want = fraction * self.seconds
        return min(self.samples, key=lambda s: abs(s[0] - want))[1] if self.samples else {}

    def growth_second_half(self) -> dict[int, float]:
        half, end = self.at(0.5), self.at(1.0)
        return {pid: 100 * (end[pid] - half[pid]) / half[pid] for pid in end if half.get(pid)}

    def render(self) -> str:
        start, half, end = self.at(0.0), self.at(0.5), self.at(1.0)
        growth = self.growth_second_half()
        lines = [
            f"soak {self.target}: {self.seconds:.0f} s mixed load: "
            f"{self.plain.requests:,} chat completions ({self.plain.rps:,.0f}/s, {self.plain.error_count} errors), "
            f"{self.streams.requests:,} streams ({self.streams.rps:,.0f}/s, {self.streams.error_count} errors)",
        ]
        for pid in sorted(end):
            lines.append(
                f"  worker {pid}: RSS {start.get(pid, 0) / 1024:.1f} MiB at the start, {half.get(pid, 0) / 1024:.1f} "
                f"at half time, {end[pid] / 1024:.1f} at the end: {growth.get(pid, 0.0):+.1f} % over the second half"
            )
        return "\n".join(lines)


def soak(env: BenchEnv, target: Target, running: Running, *, seconds: float, chunks: int) -> SoakResult:
    plain_case = next(c for c in CASES if not c.stream)
    stream_case = next(c for c in CASES if c.stream)
    shots = []
    for case, concurrency in ((plain_case, PLAIN), (stream_case, STREAMS)):
        body = env.work / f"soak-{int(case.stream)}.json"
        body.write_bytes(case.body(running.model))
        shots.append(
            Shot(
                url=running.base_url + "/v1/chat/completions",
                body_file=body,
                headers=running.headers,
                concurrency=concurrency,
                seconds=seconds,
                cpus=env.layout.cpus(target.load_on),
            )
        )
    results: dict[str, LoadResult] = {}
    failures: list[BaseException] = []

    def run(name: str, load: Callable[[], LoadResult]) -> None:
        try:
            results[name] = load()
        except BaseException as exc:  # handed to the main thread below
            failures.append(exc)

    threads = [
        threading.Thread(target=run, args=("plain", lambda: run_wrk(shots[0]))),
        threading.Thread(target=run, args=("streams", lambda: run_streams(shots[1], expect_content=chunks))),
    ]
    say(f"soak {target.name}: {seconds:.0f} s of mixed load")
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, dict[int, int]]] = []
    while any(t.is_alive() for t in threads):
        samples.append((time.monotonic() - started, {pid: memory_kib(pid)[0] for pid in running.worker_pids()}))
        for thread in threads:
            thread.join(timeout=5.0 / len(threads))
    samples.append((time.monotonic() - started, {pid: memory_kib(pid)[0] for pid in running.worker_pids()}))
    if failures:
        raise failures[0]
    return SoakResult(target.name, seconds, results["plain"], results["streams"], samples)
