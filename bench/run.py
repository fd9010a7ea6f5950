"""`make bench`: start the fake upstream, then each target in turn, put each case's load on it, report.

make bench                                         # 15 s a case after a 3 s warm-up
make bench BENCH_ARGS=--quick                      # 3 s a case, for development
make bench BENCH_ARGS="--targets minimal --cases chat-c64 --profile"
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

from bench import profile
from bench.cases import CASES, Case
from bench.lineup import TARGETS
from bench.load import ensure_wrk
from bench.machine import Layout, describe
from bench.measure import Plan, check_answers, measure, say
from bench.procs import BenchError, Proc, free_port, memory_kib, spawn, wait_for_line
from bench.report import Report, Row, TargetInfo
from bench.soak import soak
from bench.targets import ROOT, BenchEnv, Target

T = TypeVar("T", Case, Target)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="Benchmark the gateway against its upstream.")
    p.add_argument("--quick", action="store_true", help="3 s a case after a 1 s warm-up, no quiet wait")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per case (default 15)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each case (default 3)")
    p.add_argument("--repeat", type=int, default=1, help="measure each case N times, keep the median run")
    names = ", ".join(t.name for t in TARGETS)
    p.add_argument("--targets", default=",".join(t.name for t in TARGETS), help=f"comma-separated, from: {names}")
    names = ", ".join(c.name for c in CASES)
    p.add_argument("--cases", default=",".join(c.name for c in CASES), help=f"comma-separated, from: {names}")
    p.add_argument("--chunks", type=int, default=20, help="tokens (stream chunks) in each answer of the fake")
    p.add_argument("--chunk-interval", type=float, default=0.0, help="seconds between the fake's stream chunks")
    p.add_argument(
        "--stagger",
        type=float,
        default=None,
        metavar="SECONDS",
        help="spread the stream clients' first requests over this long (default: one paced stream's length, "
        "--chunks x --chunk-interval, so the clients do not start and stay in step; 0: all at once)",
    )
    p.add_argument(
        "--plain-fake",
        action="store_true",
        help="serve the upstream with `python -m tests.fakes.ollama` as is (asyncio, unbounded history)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs with taskset")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each case, wait up to this many seconds for other work on the machine to stop (0: don't)",
    )
    p.add_argument("--gateway-src", type=Path, default=ROOT, help="run the gateway from this checkout (A/B a change)")
    p.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "latest.json", help="where to write JSON")
    p.add_argument("--profile", action="store_true", help="sample each gateway worker with py-spy, per case")
    p.add_argument("--ratio-to", default=None, help="add a column: each target's requests/s over this target's")
    p.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the cases, a mixed load for this long on each target, watching its workers' memory",
    )
    args = p.parse_args(argv)
    if not (args.gateway_src / "edge" / "__main__.py").is_file():
        p.error(f"--gateway-src: {args.gateway_src} is not a checkout of the gateway (no edge/__main__.py)")
    if args.stagger is None:
        args.stagger = args.chunks * args.chunk_interval
    if args.quick:
        args.duration, args.warmup, args.quiet_wait = 3.0, 1.0, 0.0
    return args


def pick(items: Sequence[T], names: str, what: str) -> list[T]:
    by_name = {item.name: item for item in items}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise BenchError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(by_name)})")
    return [by_name[n] for n in wanted]


def start_fake(args: argparse.Namespace, *, work: Path, layout: Layout, stack: ExitStack) -> tuple[Proc, str]:
    module = "tests.fakes.ollama" if args.plain_fake else "bench.fake"
    argv = [
        sys.executable,
        "-m",
        module,
        "--port",
        str(free_port()),
        "--chunks",
        str(args.chunks),
        "--chunk-interval",
        str(args.chunk_interval),
    ]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    fake = spawn("fake-ollama", argv, cpus=layout.cpus("aux"), env=env, cwd=ROOT, log_dir=work)
    stack.callback(fake.stop)
    return fake, wait_for_line(fake, "ready ", timeout=20)


def run(args: argparse.Namespace) -> Report:
    targets = pick(TARGETS, args.targets, "targets")
    cases = pick(CASES, args.cases, "cases")
    if args.profile:
        profile.py_spy()
    ensure_wrk()
    layout = Layout.default(pin=not args.no_pin)
    plan = Plan(
        duration=args.duration,
        warmup=args.warmup,
        chunks=args.chunks,
        repeat=max(1, args.repeat),
        quiet_wait=args.quiet_wait,
        profile_dir=args.json.parent / "profiles" if args.profile else None,
        stagger=args.stagger,
    )
    rows: list[Row] = []
    infos: list[TargetInfo] = []
    with tempfile.TemporaryDirectory(prefix="resayil-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        fake, fake_url = start_fake(args, work=work, layout=layout, stack=stack)
        env = BenchEnv(
            work=work,
            fake=fake,
            fake_url=fake_url,
            layout=layout,
            python=sys.executable,
            src=args.gateway_src.resolve(),
        )
        for target in targets:
            with ExitStack() as target_stack:
                say(f"{target.name}: starting ({target.label})")
                running = target.start(env, target_stack)
                check_answers(target, running, cases or list(CASES), chunks=args.chunks)
                for case in cases:
                    row = measure(env, target, running, case, plan)
                    res = row.result
                    say(
                        f"{target.name} {case.name}: {res.rps:,.0f} req/s, p50 {res.p50:.2f} ms, "
                        f"p99 {res.p99:.2f} ms, {res.error_count} errors, noise {row.noise:.0%}"
                    )
                    rows.append(row)
                summary = None
                if args.soak > 0:
                    soaked = soak(env, target, running, seconds=args.soak, chunks=args.chunks)
                    summary = soaked.render()
                    say(summary)
                workers = [(pid, *memory_kib(pid)) for pid in running.worker_pids()]
                checks = [check() for check in running.checks]
                for what, ok, output in checks:
                    say(f"{target.name}: {'ok' if ok else 'FAILED'}  {what}: {output}")
                infos.append(TargetInfo(target.name, target.label, running.ready_seconds, workers, checks, summary))
    settings = {
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": plan.repeat,
        "chunks": args.chunks,
        "chunk_interval": args.chunk_interval,
        "stagger": args.stagger,
        "fake": "tests.fakes.ollama" if args.plain_fake else "bench.fake",
        "cpus": {"server": layout.server, "aux": layout.aux},
        "targets": {t.name: {"label": t.label, "serve_on": t.serve_on, "load_on": t.load_on} for t in targets},
        "gateway_src": str(args.gateway_src),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # With LiteLLM in the run, every target's requests/s is also given as a multiple of LiteLLM's (issue 7).
    ratio_to = args.ratio_to or ("litellm" if any(t.name == "litellm" for t in targets) else None)
    return Report(rows=rows, targets=infos, machine=describe(), settings=settings, ratio_to=ratio_to)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(report.render())
    report.write_json(args.json)
    args.json.with_suffix(".md").write_text(report.markdown())
    print(f"\nwritten to {args.json} (and the table as Markdown to {args.json.with_suffix('.md')})")
    return 0
