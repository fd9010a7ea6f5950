"""`make bench-admin` (`python -m bench.overview`): GET /api/admin/overview over a million usage rows.

On a fresh MariaDB database (`resayil_bench_overview`), migrated by `python -m edge migrate`, it seeds what a
busy platform would hold: `--accounts` accounts with one user each (registered over 90 days, a fifth on a
paid plan), `--orders` paid orders over two months, and `--rows` usage rows over 90 days (a few accounts
spend most, 8 models, about 15% on the cloud at twice the price), written as multi-row INSERTs. The roll-ups
are then filled by `python -m edge credits rollup-rebuild` (the usage rows' sums, as the settlement path keeps
them) and checked by `python -m edge reconcile`. The example config's gateway (one worker, no Redis) is
started, an admin is registered and logged in, and the overview is fetched `--calls` times after 5 warm-up
calls; the median, 95th percentile and worst time are printed, as the client sees them over HTTP.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pymysql
from sqlalchemy.engine import url as sa_url

from bench.accounts import PASSWORD, Portal
from bench.procs import BenchError, free_port, spawn, wait_for_http
from bench.targets import MARIADB_URL, ROOT, fresh_mariadb

MODELS = (
    "llama3.2:3b",
    "qwen2.5-coder:14b",
    "qwen3:30b",
    "qwen2.5:7b",
    "gemma3:12b",
    "mistral:7b",
    "qwen3-embedding:0.6b",
    "deepseek-v3.1:671b-cloud",
)
BATCH = 5000
_USAGE = (
    "INSERT INTO usage_records (charge_id, request_id, account_id, user_id, key_id, model, endpoint, route, "
    "upstream, stream, prompt_tokens, completion_tokens, usage_source, multiplier, cost_milli, status, outcome, "
    "latency_ms, ttft_ms, day, created_at) VALUES (%s, %s, %s, %s, NULL, %s, 'chat', %s, %s, 0, %s, %s, "
    "'upstream', %s, %s, 200, 'ok', 300, 80, %s, %s)"
)
_ORDER = (
    "INSERT INTO billing_orders (reference, account_id, user_id, product_id, kind, tier, credits, price_fils, "
    "currency, status, locale, label_ar, label_en, created_at, expires_at, paid_at, updated_at) VALUES "
    "(%s, %s, %s, 'pack-5000', 'pack', NULL, 5000, 5000, 'KWD', 'paid', 'en', 'x', 'x', %s, %s, %s, %s)"
)


def _connect(url: str) -> pymysql.Connection[Any]:
    parsed = sa_url.make_url(url)
    return pymysql.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        database=parsed.database,
        autocommit=False,
    )


def seed(url: str, *, accounts: int, rows: int, orders: int, today: date) -> None:
    """Accounts, users, paid orders and usage rows, in batches of multi-row INSERTs."""
    rng = random.Random(19)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    with _connect(url) as db, db.cursor() as cur:
        people = []
        for i in range(accounts):
            joined = now - timedelta(days=rng.uniform(0, 90))
            plan = now + timedelta(days=rng.uniform(-5, 30)) if i % 5 == 0 else None
            people.append((f"a{i}", ("basic", "pro", "enterprise")[i % 3], plan, joined))
        cur.executemany(
            "INSERT INTO accounts (name, tier, plan_expires_at, created_at) VALUES (%s, %s, %s, %s)", people
        )
        cur.execute("SELECT MIN(id) FROM accounts")
        first = int(cur.fetchone()[0])
        cur.executemany(
            "INSERT INTO users (account_id, name, email, phone, password_hash, role, locale, created_at) "
            "VALUES (%s, %s, %s, %s, 'x', 'user', 'en', %s)",
            [(first + i, f"u{i}", f"u{i}@bench.test", f"+96551{i:06d}", p[3]) for i, p in enumerate(people)],
        )
        paid = [now - timedelta(days=rng.uniform(0, 60)) for _ in range(orders)]
        cur.executemany(
            _ORDER,
            [(f"B{i:08d}", first + i % accounts, None, t, t + timedelta(days=1), t, t) for i, t in enumerate(paid)],
        )
        db.commit()
        tz = ZoneInfo("Asia/Kuwait")
        batch: list[tuple[Any, ...]] = []
        started = time.monotonic()
        for n in range(rows):
            account = first + int(accounts * rng.random() ** 3)  # a few accounts spend most
            cloud = rng.random() < 0.15
            model = MODELS[-1] if cloud else MODELS[(account + int(rng.random() * 2.2)) % (len(MODELS) - 1)]
            prompt, completion = rng.randint(20, 2000), rng.randint(10, 800)
            multiplier = 2 if cloud else 1
            at = now - timedelta(seconds=rng.uniform(0, 90 * 86400))
            day = at.replace(tzinfo=UTC).astimezone(tz).date()
            batch.append(
                (
                    f"s{n:031d}",
                    f"req-{n}",
                    account,
                    account - first + 1,
                    model,
                    "cloud" if cloud else "local",
                    "cloud" if cloud else "ollama",
                    prompt,
                    completion,
                    multiplier,
                    (prompt + completion) * multiplier,
                    min(day, today),
                    at,
                )
            )
            if len(batch) == BATCH:
                cur.executemany(_USAGE, batch)
                db.commit()
                batch.clear()
                if (n + 1) % 100_000 == 0:
                    print(f"  {n + 1:,} usage rows ({time.monotonic() - started:.0f} s)", flush=True)
        if batch:
            cur.executemany(_USAGE, batch)
            db.commit()


def _edge(environ: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edge", *args], cwd=ROOT, env=environ, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"`python -m edge {' '.join(args)}` failed:\n{(done.stdout + done.stderr)[-2000:]}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def _admin(base_url: str, environ: dict[str, str]) -> Portal:
    portal = Portal(base_url)
    email, phone = "bench-admin@example.com", "+96590000002"
    body = {"name": "Admin", "email": email, "phone": phone, "password": PASSWORD, "locale": "en"}
    # With --reuse the run that seeded the database registered them: promoted and logged in below.
    with contextlib.suppress(BenchError):
        portal.call("POST", "/api/auth/register", body)
    _edge({**environ, "RESAYIL_ADMIN_PASSWORD": PASSWORD}, "create-admin", "--email", email, "--phone", phone)
    portal.call("POST", "/api/auth/login", {"login": email, "password": PASSWORD})
    return portal


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _figures(ms: list[float]) -> str:
    return f"median {statistics.median(ms):.1f} ms, p95 {_percentile(ms, 0.95):.1f} ms, max {max(ms):.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overview", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="usage rows to seed")
    parser.add_argument("--accounts", type=int, default=5_000)
    parser.add_argument("--orders", type=int, default=2_000)
    parser.add_argument("--calls", type=int, default=50, help="timed overview calls")
    parser.add_argument(
        "--reuse", action="store_true", help="time the database a previous run seeded again (no seeding)"
    )
    args = parser.parse_args(argv)
    database = str(sa_url.make_url(MARIADB_URL).set(database="resayil_bench_overview"))
    if not args.reuse:
        database = fresh_mariadb("overview")
    environ = {
        **os.environ,
        "RESAYIL_CONFIG": str(ROOT / "config" / "gateway.example.yaml"),
        "RESAYIL_DATABASE_URL": database,
        "RESAYIL_WORKERS": "1",
        "RESAYIL_REDIS_URL": "",
    }
    _edge(environ, "migrate")
    if not args.reuse:
        today = datetime.now(ZoneInfo("Asia/Kuwait")).date()
        started = time.monotonic()
        print(f"seeding {args.rows:,} usage rows, {args.accounts:,} accounts, {args.orders:,} paid orders", flush=True)
        seed(database, accounts=args.accounts, rows=args.rows, orders=args.orders, today=today)
        print(f"seeded in {time.monotonic() - started:.0f} s", flush=True)
        started = time.monotonic()
        print(_edge(environ, "credits", "rollup-rebuild"), f"({time.monotonic() - started:.1f} s)", flush=True)
        print(_edge(environ, "reconcile"), flush=True)
    with _connect(database) as db, db.cursor() as cur:
        sizes = {}
        for table in ("usage_records", "usage_daily", "usage_monthly"):
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            sizes[table] = int(cur.fetchone()[0])
    print(", ".join(f"{t}: {n:,} rows" for t, n in sizes.items()), flush=True)
    logs = ROOT / "var" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        port = free_port()
        argv_ = [sys.executable, "-m", "edge", "serve", "--workers", "1", "--port", str(port)]
        proc = spawn("overview", argv_, cpus=None, env=environ, cwd=ROOT, log_dir=logs)
        stack.callback(proc.stop)
        base_url = f"http://127.0.0.1:{port}"
        wait_for_http(proc, f"{base_url}/healthz", timeout=60)
        portal = _admin(base_url, environ)
        body: dict[str, Any] = {}
        for _ in range(5):
            body = portal.call("GET", "/api/admin/overview")
        paths = ("/api/admin/overview", "/api/admin/cloud-budget", "/healthz")
        times: dict[str, list[float]] = {path: [] for path in paths}
        for _ in range(args.calls):
            # Interleaved: an admin route that reads almost nothing (the session check and HTTP), and one that
            # reads nothing at all; what the overview costs beyond them is its own.
            for path in paths:
                t = time.perf_counter()
                answer = portal.call("GET", path)
                times[path].append((time.perf_counter() - t) * 1000)
                if path == paths[0]:
                    body = answer
    month = body["usage"]["this_month"]["total"]
    print(
        f"this month: {month['requests']:,} requests, {month['charged_milli']:,} milli-credits; "
        f"top account {body['top_accounts'][0]['account_id']}; revenue this month "
        f"{body['revenue']['this_month']['paid_fils']:,} fils"
    )
    print(f"over {sizes['usage_records']:,} usage rows, {args.calls} calls each, interleaved:")
    for path, ms in times.items():
        print(f"  GET {path}: {_figures(ms)}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
