"""`python -m edge ...`: serve, migrate, check-config, jobs, and the commands plugins contribute."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edge import config as config_module
from edge import logs
from edge.chain import build_manager
from edge.config import GatewayConfig
from edge.settings import ConfigError

if TYPE_CHECKING:
    from edge.gateway import Gateway
    from edge.jobs import Job

EXIT_CONFIG = 2


@dataclass(frozen=True)
class Command:
    """A subcommand contributed by a plugin through `resayil_commands`; `run` gets a started gateway."""

    name: str
    help: str
    run: Callable[..., Awaitable[int]]
    arguments: Callable[[argparse.ArgumentParser], None] = field(default=lambda parser: None)


def version_locations(config: GatewayConfig) -> list[str]:
    from edge import defaults

    pm = build_manager(config, defaults=defaults.default_plugins(config))
    return [path for path in pm.hook.resayil_migrations() if path]


def plugin_commands(config: GatewayConfig) -> dict[str, Command]:
    from edge import defaults

    pm = build_manager(config, defaults=defaults.default_plugins(config))
    return {c.name: c for group in pm.hook.resayil_commands() for c in group}


def cmd_migrate(config: GatewayConfig, args: argparse.Namespace) -> int:
    from edge import migrate
    from edge.db import redact

    heads = migrate.upgrade(config.database_url, version_locations(config))
    print(f"migrated {redact(config.database_url)} to {', '.join(heads) or 'base'}")
    return 0


def cmd_check_config(config: GatewayConfig, args: argparse.Namespace) -> int:
    from edge import defaults

    plugins = ", ".join(p.name for p in config.plugins if p.enabled) or "none"
    # Builds every plugin from its settings, so bad plugin settings fail here too.
    pm = build_manager(config, defaults=defaults.default_plugins(config))
    print(f"config ok: {len(config.upstreams)} upstreams, {len(config.models)} models, plugins: {plugins}")
    for notes in pm.hook.resayil_config_notes(config=config):
        for note in notes or ():
            print(f"note: {note}")
    return 0


def cmd_serve(config: GatewayConfig, args: argparse.Namespace) -> int:
    from granian.constants import Interfaces
    from granian.server import Server

    from edge import migrate

    workers = args.workers or config.server.workers
    if workers > 1 and not config.redis_url:
        raise ConfigError("--workers: more than one worker needs shared state; set redis_url (RESAYIL_REDIS_URL)")
    missing = migrate.pending(config.database_url, version_locations(config))
    if missing:
        raise ConfigError(
            f"database_url: the database needs migrating ({len(missing)} heads behind); run `python -m edge migrate`"
        )
    version_locations(config)
    server = Server(
        "edge.app:app_from_env",
        address=args.host or config.server.host,
        port=args.port or config.server.port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        backlog=2048,
    )
    server.serve()
    return 0


def cmd_jobs(config: GatewayConfig, args: argparse.Namespace) -> int:
    from edge.gateway import Gateway

    gateway = Gateway(config)
    if args.jobs_command == "list":
        rows = [(job.name, job.describe(gateway.tz), "single" if job.single else "per-worker") for job in gateway.jobs]
        widths = [max((len(row[i]) for row in rows), default=0) for i in range(2)]
        for name, schedule, runner in rows:
            print(f"{name:<{widths[0]}}  {schedule:<{widths[1]}}  {runner}")
        if not rows:
            print("no jobs: no enabled plugin contributes one")
        return 0
    job = next((job for job in gateway.jobs if job.name == args.name), None)
    if job is None:
        known = ", ".join(job.name for job in gateway.jobs) or "none"
        print(f"jobs run: no job named {args.name!r} (jobs: {known})", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(run_job(gateway, job))


async def run_job(gateway: Gateway, job: Job) -> int:
    """Run one job now in a gateway of its own (no schedules). A single job takes its lock first, so it never
    runs beside a worker's run of it: exit 1 when another holds it, or when the run fails."""
    from edge.jobs import JobRunner

    await gateway.start(run_jobs=False)
    try:
        runner = JobRunner((job,), gateway=gateway, redis=gateway.redis if job.single else None, tz=gateway.tz)
        if runner.lock is not None and not await runner.lock.take(job):
            holder = await runner.lock.holder(job)
            print(f"job {job.name}: not run, it is running elsewhere now (lock held by {holder})", file=sys.stderr)
            return 1
        ok = await runner.run(job, locked=runner.lock is not None)
        print(f"job {job.name}: {'ok' if ok else 'failed (see the log)'}")
        return 0 if ok else 1
    finally:
        await gateway.stop()


async def run_plugin_command(config: GatewayConfig, command: Command, args: argparse.Namespace) -> int:
    from edge.gateway import Gateway

    gateway = Gateway(config)
    await gateway.start(run_jobs=False)
    try:
        # The started gateway's own copy of the command, so that a plugin's command runs on the plugin
        # instance that started (its stores open) without looking itself up by name.
        started: dict[str, Command] = {c.name: c for group in gateway.pm.hook.resayil_commands() for c in group}
        return await started[command.name].run(gateway, args)
    finally:
        await gateway.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge", description="Resayil LLM gateway")
    parser.add_argument("--config", help="config file (default: RESAYIL_CONFIG or config/gateway.example.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the gateway and portal with granian")
    serve.add_argument("--workers", type=int, default=None)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    sub.add_parser("migrate", help="apply the core's and every enabled plugin's migrations")
    sub.add_parser("check-config", help="check the config and exit (2 when it is bad)")
    jobs = sub.add_parser("jobs", help="the scheduled jobs of the enabled plugins").add_subparsers(
        dest="jobs_command", required=True
    )
    jobs.add_parser("list", help="each job's name, schedule, and whether one worker or every worker runs it")
    jobs.add_parser("run", help="run one job once now (for cron); exit 1 when it fails").add_argument("name")
    argv = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in argv if not a.startswith("-")), None)
    try:
        config_path = _config_arg(argv)
        if config_path:
            os.environ["RESAYIL_CONFIG"] = config_path
        config = config_module.load(config_path)
        logs.setup(config.server.log_level)
        commands = plugin_commands(config)
        for command in commands.values():
            command.arguments(sub.add_parser(command.name, help=command.help))
        args = parser.parse_args(argv)
        if args.command in commands:
            return asyncio.run(run_plugin_command(config, commands[args.command], args))
        handlers = {"serve": cmd_serve, "migrate": cmd_migrate, "check-config": cmd_check_config, "jobs": cmd_jobs}
        return handlers[args.command](config, args)
    except ConfigError as exc:
        if wanted in ("-h", "--help"):
            parser.print_help()
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None
