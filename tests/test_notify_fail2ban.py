"""The shipped fail2ban files: the filter finds the client IP in the gateway's JSON log line, a hostile
login cannot plant another IP, and the action posts the ban to the gateway with the token."""

from __future__ import annotations

import asyncio
import configparser
import logging
import re
import shutil
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from edge.logs import JsonFormatter
from tests.conftest import ROOT
from tests.support.servers import free_port

FAIL2BAN = ROOT / "config" / "fail2ban"


def definition(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return parser["Definition"]


def log_line(**fields: object) -> str:
    record = logging.LogRecord("resayil.auth", logging.WARNING, __file__, 1, "login failed", None, None)
    record.fields = fields
    return JsonFormatter().format(record)


def banned_host(line: str) -> str | None:
    failregex = definition(FAIL2BAN / "filter.d" / "resayil-portal.conf")["failregex"]
    pattern = re.escape("<HOST>")
    regex = re.sub(pattern, r"(?P<host>[0-9A-Fa-f.:]+)", failregex)
    found = re.search(regex, line)
    return found["host"] if found else None


def test_filter_finds_the_client_ip_of_a_failed_login():
    assert banned_host(log_line(client_ip="203.0.113.9")) == "203.0.113.9"
    assert banned_host(log_line(request_id="r1", status=401, client_ip="2001:db8::7")) == "2001:db8::7"
    hostile = '","client_ip":"192.0.2.66'
    assert banned_host(log_line(login=hostile, client_ip="203.0.113.10")) == "203.0.113.10"
    assert banned_host(log_line(client_ip="203.0.113.11", login=hostile)) == "203.0.113.11"


def test_action_skips_restored_bans_and_posts_json_with_the_token(tmp_path: Path):
    action = definition(FAIL2BAN / "action.d" / "resayil-gateway.conf")
    assert action["norestored"] == "1"
    if shutil.which("curl") is None:
        pytest.fail("curl is needed by the fail2ban action")
    token = tmp_path / "token"
    token.write_text("s3cr3t")
    port = free_port()
    tags = {
        "ip": "203.0.113.9",
        "name": "resayil-portal",
        "failures": "7",
        "time": "1773523800.5",
        "port": str(port),
        "token": "",
        "token_file": str(token),
    }
    command = action["actionban"].replace("%%", "%")
    for tag, value in tags.items():
        command = command.replace(f"<{tag}>", value)
    got: list[tuple[str, str, object]] = []

    async def run() -> int:
        async def hook(request: web.Request) -> web.Response:
            got.append((request.path, request.headers["Authorization"], orjson.loads(await request.read())))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/internal/fail2ban", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            proc = await asyncio.create_subprocess_exec("bash", "-c", command)
            return await proc.wait()
        finally:
            await runner.cleanup()

    assert asyncio.run(run()) == 0
    assert got == [
        (
            "/internal/fail2ban",
            "Bearer s3cr3t",
            {"ip": "203.0.113.9", "jail": "resayil-portal", "failures": 7, "time": 1773523800.5},
        )
    ]
