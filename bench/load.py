"""The two load generators, behind one result type: wrk for plain requests, `bench.streamclient` for streams."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.procs import BenchError, pinned

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
_MARK = "BENCH_JSON "


@dataclass
class LoadResult:
    """What a load generator saw. Latencies in milliseconds; for streams `p50`/`p99` are to the last byte."""

    requests: int
    seconds: float
    errors: dict[str, int]
    p50: float
    p99: float
    ttfb_p50: float | None = None
    ttfb_p99: float | None = None
    load_cpu_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    # Streams through a gateway: the median milliseconds of each phase in its `server-timing` header.
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class Shot:
    """One load run: where, what, how hard, how long, and on which CPUs the generator runs."""

    url: str
    body_file: Path
    headers: dict[str, str]
    concurrency: int
    seconds: float
    cpus: str | None


def ensure_wrk() -> None:
    """Install Debian's wrk when it is missing (the benchmark runs as root on a Debian machine)."""
    if shutil.which("wrk"):
        return
    print("wrk is missing: installing it with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, check=False, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, capture_output=True)
        subprocess.run(install, env=env, check=False, capture_output=True)
    if not shutil.which("wrk"):
        raise BenchError("wrk is missing and `apt-get install -y wrk` did not install it (are you root?)")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(shot: Shot) -> LoadResult:
    """One wrk thread is plenty for a single pinned core and keeps the generator's own cost small."""
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(shot.body_file),
        "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in shot.headers.items()),
    }
    argv = [
        "wrk",
        "-t1",
        f"-c{shot.concurrency}",
        f"-d{max(1, round(shot.seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        shot.url,
    ]
    cpu0 = _children_cpu()
    done = subprocess.run(pinned(argv, shot.cpus), env=env, capture_output=True, text=True, check=False)
    cpu = _children_cpu() - cpu0
    line = next((x for x in done.stdout.splitlines() if x.startswith(_MARK)), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    data = orjson.loads(line[len(_MARK) :])
    errors = {k: v for k, v in data["errors"].items() if v}
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        p50=data["p50_us"] / 1000,
        p99=data["p99_us"] / 1000,
        load_cpu_seconds=cpu,
        extra={"p90": data["p90_us"] / 1000, "max": data["max_us"] / 1000, "mean": data["mean_us"] / 1000},
    )


def run_streams(shot: Shot, *, expect_content: int, stagger: float = 0.0) -> LoadResult:
    argv = [
        sys.executable,
        "-m",
        "bench.streamclient",
        "--url",
        shot.url,
        "--body-file",
        str(shot.body_file),
        "--concurrency",
        str(shot.concurrency),
        "--duration",
        str(shot.seconds),
        "--expect-content",
        str(expect_content),
        "--stagger",
        str(stagger),
    ]
    for name, value in shot.headers.items():
        argv += ["--header", f"{name}: {value}"]
    done = subprocess.run(pinned(argv, shot.cpus), capture_output=True, check=False, cwd=BENCH_DIR.parent)
    if done.returncode != 0:
        raise BenchError(f"the stream client failed: {done.stderr.decode(errors='replace')[-2000:]}")
    data = orjson.loads(done.stdout)
    ttfb, ttlb = sorted(data["ttfb"]), sorted(data["ttlb"])
    if not ttlb:
        raise BenchError(f"no stream completed; errors: {data['errors']}")
    return LoadResult(
        requests=data["requests"],
        seconds=data["seconds"],
        errors=data["errors"],
        p50=percentile(ttlb, 50) * 1000,
        p99=percentile(ttlb, 99) * 1000,
        ttfb_p50=percentile(ttfb, 50) * 1000,
        ttfb_p99=percentile(ttfb, 99) * 1000,
        load_cpu_seconds=data["cpu_seconds"],
        phases=data.get("phases", {}),
    )


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest rank, like wrk's histogram: the smallest value with at least pct% of values at or below it."""
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]
