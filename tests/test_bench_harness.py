"""The benchmark harness's own logic (`make bench` is not run in CI, so what it relies on is tested here):
how streams are judged, how soaks and ratios are computed, and the full chain's setup end to end."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from bench.cases import CASES, PATH, content_events
from bench.lineup import TARGETS
from bench.load import LoadResult, Shot, run_streams
from bench.machine import Layout
from bench.measure import check_answers
from bench.report import Report, Row
from bench.run import start_fake
from bench.soak import SoakResult
from bench.targets import BenchEnv, EdgeGateway
from tests.conftest import need


def _event(delta: dict[str, object], finish: str | None = None) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def test_a_stream_is_judged_by_its_content_events_not_its_event_count() -> None:
    ours = b"".join(_event({"content": f"tok{i} "}) for i in range(20)) + b"data: [DONE]\n\n"
    # LiteLLM's shape: the same content, then an empty event carrying finish_reason.
    theirs = ours.replace(b"data: [DONE]", _event({}, "stop") + _event({"content": ""}, "stop") + b"data: [DONE]")
    assert content_events(ours) == 20
    assert content_events(theirs) == 20
    assert content_events(b'data: {"error": {"message": "content"}}\n\n') == 0


def _load(rps: float, p50: float = 1.0) -> LoadResult:
    return LoadResult(requests=int(rps * 10), seconds=10.0, errors={}, p50=p50, p99=p50 * 2)


def test_a_soak_reports_memory_at_half_time_and_the_growth_after_it() -> None:
    soak = SoakResult("full", 300.0, _load(500), _load(100))
    soak.samples = [(0.0, {1: 80_000}), (149.0, {1: 90_000}), (152.0, {1: 91_000}), (300.5, {1: 99_000})]
    assert soak.at(0.5) == {1: 90_000}
    assert soak.growth_second_half() == {1: pytest.approx(10.0)}
    assert "+10.0 % over the second half" in soak.render()


def test_ratios_and_goals_come_from_the_same_run() -> None:
    rows = [
        Row("chat-c64", "direct", _load(10_000)),
        Row("chat-c64", "litellm", _load(100)),
        Row("chat-c64", "auth", _load(2_500)),
        Row("chat-c64", "full", _load(700)),
    ]
    report = Report(rows=rows, targets=[], machine={}, settings={}, ratio_to="litellm")
    goals = {goal.text: (value, ok) for goal, value, ok in report.checked_goals()}
    assert goals["auth-only chain: >= 20x LiteLLM's requests/s at concurrency 64"] == (pytest.approx(25.0), True)
    assert goals["full chain: >= 8x LiteLLM's requests/s at concurrency 64"] == (pytest.approx(7.0), False)
    assert "x litellm" in report.table()
    assert "streams:" not in report.render()


def test_the_report_says_how_streams_were_paced_and_started() -> None:
    stream = replace(_load(40, p50=385.0), ttfb_p50=1.2, ttfb_p99=3.0)
    settings = {"chunks": 20, "chunk_interval": 0.02, "stagger": 0.4}
    report = Report(rows=[Row("stream-c16", "full", stream)], targets=[], machine={}, settings=settings)
    assert "streams: 20 chunks from the fake, 20 ms apart; stream clients' first requests spread over 0.4 s" in (
        report.render()
    )
    report.settings = {"chunks": 20, "chunk_interval": 0.0, "stagger": 0.0}
    assert "all at once (saturating); stream clients' first requests all at once (then in step)" in report.render()


def test_the_full_chain_target_sets_up_a_paying_customer_and_reconciles(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `full` target exactly as `make bench` starts it (MariaDB, Redis, two granian workers, a customer
    registered, promoted, put on Enterprise, granted credits and given a key over the portal API): its
    answers pass the harness's checks and `reconcile` exits 0 afterwards."""
    need("MariaDB", "127.0.0.1", 3306)
    full = next(t for t in TARGETS if t.name == "full")
    assert isinstance(full, EdgeGateway) and full.reconcile
    # This test's own database and Redis database, so it cannot disturb a benchmark running meanwhile.
    target = replace(full, name="test_full", redis_db=int(redis_url.rsplit("/", 1)[1]))
    args = argparse.Namespace(plain_fake=False, chunks=20, chunk_interval=0.0)
    with ExitStack() as stack:
        stack.callback(_drop_database, "resayil_bench_test_full")
        layout = Layout(None, None)
        fake, fake_url = start_fake(args, work=tmp_path, layout=layout, stack=stack)
        env = BenchEnv(work=tmp_path, fake=fake, fake_url=fake_url, layout=layout, python=_python())
        running = target.start(env, stack)
        assert running.headers["Authorization"].startswith("Bearer rsk_")
        assert len(running.worker_pids()) == 2
        check_answers(target, running, list(CASES), chunks=20)
        stream = next(c for c in CASES if c.name == "stream-c1")
        body_file = tmp_path / "stream.json"
        body_file.write_bytes(stream.body(running.model))
        shot = Shot(running.base_url + PATH, body_file, running.headers, concurrency=1, seconds=1.0, cpus=None)
        streamed = run_streams(shot, expect_content=20)
        results = [check() for check in running.checks]
    assert [(what, ok) for what, ok, _ in results] == [("`python -m edge reconcile` exits 0", True)]
    # The gateway's own account of each stream's time before its first byte reaches the report.
    assert streamed.requests > 0 and not streamed.errors
    assert list(streamed.phases) == ["read", "auth", "authorize", "reserve", "route", "upstream"]
    assert streamed.ttfb_p50 is not None and 0 < sum(streamed.phases.values()) < streamed.ttfb_p50 * 1.5
    report = Report(rows=[Row("stream-c1", "full", streamed)], targets=[], machine={}, settings={})
    assert "  full stream-c1: read " in report.render()


def _python() -> str:
    import sys

    return sys.executable


def _drop_database(name: str) -> None:
    import pymysql

    from tests.conftest import MARIADB

    conn = pymysql.connect(**MARIADB, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


async def _arrivals_of_first_requests(stagger: float) -> list[float]:
    """Seconds after the first at which each of four stream clients' first requests arrive at an upstream
    whose streams last 0.3 s."""
    from aiohttp import web

    from bench import streamclient

    arrivals: list[float] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        arrivals.append(time.perf_counter())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_event({"content": "hi"}))
        await asyncio.sleep(0.3)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post(PATH, stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        args = argparse.Namespace(
            url=f"http://127.0.0.1:{port}{PATH}",
            header=[],
            concurrency=4,
            duration=0.35,
            expect_content=1,
            stagger=stagger,
        )
        result = await streamclient.run(args, b"{}")
    finally:
        await runner.cleanup()
    assert result["errors"] == {}
    first = arrivals[0]
    return [t - first for t in arrivals[:4]]


async def test_stream_clients_start_spread_over_the_stagger_or_together_without_one() -> None:
    """Paced streams started together stay in step, and each first byte then meets fifteen others; the
    stagger spreads the clients' first requests evenly over it, as independent users would arrive."""
    together = await _arrivals_of_first_requests(0.0)
    assert max(together) < 0.1
    spread = await _arrivals_of_first_requests(0.3)
    assert spread[3] == pytest.approx(0.225, abs=0.06)
    assert all(b - a == pytest.approx(0.075, abs=0.04) for a, b in itertools.pairwise(spread))
