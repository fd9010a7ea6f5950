"""Putting one case's load on one running target: check its answers, warm it up, measure, account for CPU."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from bench import profile
from bench.cases import PATH, Case, content_events
from bench.load import LoadResult, Shot, run_streams, run_wrk
from bench.machine import cpu_times, wait_quiet
from bench.procs import BenchError, cpu_seconds
from bench.report import Row
from bench.targets import BenchEnv, Running, Target

# Between cases our processes idle; more than this share of a CPU busy means someone else is working.
QUIET = 0.1


@dataclass(frozen=True)
class Plan:
    """How each case is measured: seconds of warm-up and of measurement, repeats, what the fake answers."""

    duration: float
    warmup: float
    chunks: int
    # Measure this many times and keep the run with the median requests/s (a shared machine is noisy).
    repeat: int = 1
    quiet_wait: float = 0.0
    profile_dir: Path | None = None
    # Seconds over which the stream clients start (see `--stagger`).
    stagger: float = 0.0


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_answers(target: Target, running: Running, cases: list[Case], *, chunks: int) -> None:
    """One request of each kind before any load, so a broken target fails loudly instead of measuring errors."""
    for stream in sorted({c.stream for c in cases}):
        case = next(c for c in cases if c.stream == stream)
        request = urllib.request.Request(
            running.base_url + PATH,
            data=case.body(running.model),
            method="POST",
            headers={"Content-Type": "application/json", **running.headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            raise BenchError(f"{target.name}: {case.name} answered {exc.code}: {exc.read()[:300]!r}") from None
        if stream:
            ok = content_events(body) == chunks and body.rstrip().endswith(b"data: [DONE]")
        else:
            ok = bool(orjson.loads(body)["choices"][0]["message"].get("content"))
        if not ok:
            raise BenchError(f"{target.name}: {case.name} gave an unexpected answer: {body[:300]!r}")


def measure(env: BenchEnv, target: Target, running: Running, case: Case, plan: Plan) -> Row:
    body_file = env.work / f"body-{running.model.replace(':', '_')}-{int(case.stream)}.json"
    body_file.write_bytes(case.body(running.model))
    shot = Shot(
        url=running.base_url + PATH,
        body_file=body_file,
        headers=running.headers,
        concurrency=case.concurrency,
        seconds=plan.warmup,
        cpus=env.layout.cpus(target.load_on),
    )
    if plan.warmup > 0:
        _wait_quiet(target, case, plan)
        _load(case, shot, plan)
    rows = []
    for i in range(plan.repeat):
        if i or plan.warmup <= 0:
            _wait_quiet(target, case, plan)
        rows.append(_measure_once(env, target, running, case, replace(shot, seconds=plan.duration), plan))
    rows.sort(key=lambda r: r.result.rps)
    row = rows[len(rows) // 2]
    row.runs = [r.result.rps for r in rows]
    return row


def _load(case: Case, shot: Shot, plan: Plan) -> LoadResult:
    if case.stream:
        return run_streams(shot, expect_content=plan.chunks, stagger=plan.stagger)
    return run_wrk(shot)


def _wait_quiet(target: Target, case: Case, plan: Plan) -> None:
    if plan.quiet_wait > 0:
        busy = wait_quiet(limit=QUIET, max_wait=plan.quiet_wait)
        if busy > QUIET:
            say(f"{target.name} {case.name}: other work keeps {busy:.0%} of a CPU busy; measuring anyway")


def _measure_once(env: BenchEnv, target: Target, running: Running, case: Case, shot: Shot, plan: Plan) -> Row:
    cost = running.cost_pids()
    upstream = [p for p in env.fake.tree() if p not in cost]
    spies = []
    if plan.profile_dir is not None:
        plan.profile_dir.mkdir(parents=True, exist_ok=True)
        for pid in running.worker_pids():
            out = plan.profile_dir / f"{target.name}-{case.name}-{pid}.raw"
            spies.append((out, profile.start(pid, out=out, seconds=shot.seconds, cpus=shot.cpus)))
    services = running.service_pids()
    target0, services0, upstream0, machine0 = (
        cpu_seconds(cost),
        cpu_seconds(services),
        cpu_seconds(upstream),
        cpu_times(),
    )
    result = _load(case, shot, plan)
    cpu = {
        "target": cpu_seconds(cost) - target0,
        "services": cpu_seconds(services) - services0,
        "upstream": cpu_seconds(upstream) - upstream0,
        "load": result.load_cpu_seconds,
        **{f"machine_{k}": v - machine0[k] for k, v in cpu_times().items()},
    }
    for out, spy in spies:
        spy.wait(timeout=30)
        if out.exists():
            summary = out.with_suffix(".txt")
            summary.write_text(profile.summarize(out) + "\n")
            say(f"profile: {summary}")
    return Row(case.name, target.name, result, cpu)
