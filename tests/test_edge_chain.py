"""The hook chain: order, first result, vetoes, startup checks, and settle exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pluggy
import pytest

from edge import config as config_module
from edge import hookspecs
from edge.app import create_app
from edge.chain import check_order
from edge.context import Principal, RequestContext
from edge.defaults import DefaultRoute
from edge.errors import Forbidden, GatewayError
from edge.hookspecs import hookimpl
from edge.settings import ConfigError
from tests.conftest import base_config
from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import CHAT
from tests.support.recorder import Recorder


@pytest.fixture
def cfg(ollama: Any, sqlite_url: str) -> dict[str, Any]:
    return base_config(ollama_url=ollama.url, database_url=sqlite_url)


class Named:
    def __init__(self, name: str, log: list[str], *, veto: bool = False) -> None:
        self.name, self.log, self.veto = name, log, veto

    @hookimpl
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        self.log.append(self.name)
        if self.veto:
            raise Forbidden(f"{self.name} says no", code="vetoed")


class LastAuthorize:
    name = "last"

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(trylast=True)
    async def resayil_authorize(self, ctx: RequestContext) -> None:
        self.log.append("last")


async def test_authorize_runs_in_order_and_stops_at_the_first_veto(serve: Any, cfg: dict[str, Any]) -> None:
    log: list[str] = []
    # Extras registered later run first, as configured plugins listed first do; trylast runs after all.
    plugins = [TokenAuth(), LastAuthorize(log), Named("second", log, veto=True), Named("first", log)]
    async with serve(cfg, plugins=plugins) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "vetoed"
    assert log == ["first", "second"]
    log.clear()
    async with serve(cfg, plugins=[TokenAuth(), LastAuthorize(log), Named("b", log), Named("a", log)]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 200
    assert log == ["a", "b", "last"]


async def test_configured_plugins_run_in_the_order_listed(cfg: dict[str, Any]) -> None:
    cfg["plugins"] = [
        {"name": "one", "module": "tests.support.sample_plugin"},
        {"name": "two", "module": "tests.support.sample_plugin"},
        {"name": "off", "module": "tests.support.sample_plugin", "enabled": False},
    ]
    app = create_app(config_module.parse(cfg, env={}))
    assert app.gateway.chain.implementations("resayil_authorize") == ("one", "two")
    assert "off" not in app.gateway.plugin_names()


def test_trylast_runs_in_the_reverse_of_the_config_order_and_the_defaults_after_everything(
    cfg: dict[str, Any],
) -> None:
    """pluggy's real order, as `edge/hookspecs.py` states it: plain implementations in the config's order,
    `trylast` ones in its reverse, the built-in defaults last even after a plugin's `trylast`."""

    class LateRoute:
        name = "late_route"

        @hookimpl(trylast=True)
        async def resayil_route(self, ctx: RequestContext) -> None: ...

    cfg["plugins"] = [
        {"name": "one", "module": "tests.support.sample_plugin"},
        {"name": "late_a", "module": "tests.support.late_refusal"},
        {"name": "late_b", "module": "tests.support.late_refusal"},
        {"name": "two", "module": "tests.support.sample_plugin"},
    ]
    chain = create_app(config_module.parse(cfg, env={}), plugins=[LateRoute()]).gateway.chain
    assert chain.implementations("resayil_authorize") == ("one", "two", "late_b", "late_a")
    assert chain.implementations("resayil_route") == ("late_route", "default.DefaultRoute")


def test_startup_refuses_a_second_admit_naming_both(cfg: dict[str, Any]) -> None:
    """Admit runs other plugins' Redis claims; a second admit refusing after one ran would leak the claim."""
    cfg["plugins"] = [{"name": "ratelimit"}, {"name": "ratelimit_again", "module": "plugins.ratelimit"}]
    with pytest.raises(ConfigError, match="plugins 'ratelimit', 'ratelimit_again': only one plugin may implement"):
        create_app(config_module.parse(cfg, env={}))


def test_startup_refuses_a_default_that_would_run_before_a_plugin() -> None:
    """The defaults are registered last so that this cannot happen; the check names both plugins if it does."""

    class LateRoute:
        @hookimpl(trylast=True)
        async def resayil_route(self, ctx: RequestContext) -> None: ...

    pm = pluggy.PluginManager("resayil")
    pm.add_hookspecs(hookspecs)
    pm.register(DefaultRoute(), name="default.DefaultRoute")
    pm.register(LateRoute(), name="late_route")
    with pytest.raises(ConfigError, match="plugin 'late_route': its resayil_route would run after the built-in "):
        check_order(pm)


async def test_first_authentication_result_wins(serve: Any, cfg: dict[str, Any]) -> None:
    class Declines:
        name = "declines"
        calls = 0

        @hookimpl
        async def resayil_authenticate(self, ctx: RequestContext) -> None:
            Declines.calls += 1

    class Never:
        name = "never"

        @hookimpl(trylast=True)
        async def resayil_authenticate(self, ctx: RequestContext) -> Principal:
            raise AssertionError("a later implementation ran after a result")

    async with serve(cfg, plugins=[Never(), TokenAuth(), Declines()]) as gw:
        async with gw.request("GET", "/v1/models", headers=bearer(1, "pro")) as r:
            assert r.status == 200
    assert Declines.calls == 1


def test_unknown_hook_names_are_refused(cfg: dict[str, Any]) -> None:
    class Typo:
        @hookimpl
        async def resayil_authorise(self, ctx: RequestContext) -> None: ...

    with pytest.raises(ConfigError, match="resayil_authorise"):
        create_app(config_module.parse(cfg, env={}), plugins=[Typo()])


def test_request_path_hooks_must_be_coroutines(cfg: dict[str, Any]) -> None:
    class Sync:
        @hookimpl
        def resayil_reserve(self, ctx: RequestContext) -> None: ...

    with pytest.raises(ConfigError, match="resayil_reserve must be an async def"):
        create_app(config_module.parse(cfg, env={}), plugins=[Sync()])


class Raises:
    name = "raises"

    def __init__(self, where: str) -> None:
        self.where = where

    @hookimpl
    async def resayil_route(self, ctx: RequestContext) -> None:
        if self.where == "route":
            raise GatewayError("no route", status=503, code="no_route")


async def test_settle_runs_once_when_a_later_reserve_refuses(serve: Any, cfg: dict[str, Any], ollama: Any) -> None:
    recorder = Recorder(Recorder.Settings(refuse_reserve=True))
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 402
            assert r.headers["x-should-retry"] == "false"
    assert list(recorder.settle_counts().values()) == [1]
    assert recorder.settled[0].outcome == "refused"
    assert ollama.served == []


async def test_settle_runs_once_when_routing_refuses(serve: Any, cfg: dict[str, Any]) -> None:
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder, Raises("route")]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 503
    assert list(recorder.settle_counts().values()) == [1]


async def test_settle_runs_once_per_request_under_concurrency(serve: Any, cfg: dict[str, Any]) -> None:
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:

        async def one(i: int) -> int:
            body = {**CHAT, "stream": i % 2 == 0}
            async with gw.request("POST", "/v1/chat/completions", json=body, headers=bearer(1, "pro")) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(40)))
    assert statuses == [200] * 40
    counts = recorder.settle_counts()
    assert len(counts) == 40 and set(counts.values()) == {1}
    assert sorted(recorder.reserved) == sorted(counts)


async def test_settle_finishes_even_when_the_request_task_is_cancelled(
    serve: Any, cfg: dict[str, Any], ollama: Any
) -> None:
    """A slow settle is shielded: cancelling the request (server shutdown) does not cut it short."""
    finished: list[str] = []

    class SlowSettle:
        name = "slow_settle"

        @hookimpl
        async def resayil_reserve(self, ctx: RequestContext) -> None:
            return None

        @hookimpl
        async def resayil_settle(self, ctx: RequestContext) -> None:
            await asyncio.sleep(0.3)
            finished.append(ctx.request_id)

    ollama.settings.chunks = 100
    ollama.settings.chunk_interval = 0.02
    async with serve(cfg, plugins=[TokenAuth(), SlowSettle()]) as gw:
        r = await gw.http.post(
            gw.url + "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={**bearer(1, "pro"), **{"X-Request-Id": "cancel-me"}},
        )
        await r.content.readany()
        r.close()
        await asyncio.sleep(0.05)
    # Leaving `serve` shut the server down; the settle that was running completed first.
    assert finished == ["cancel-me"]


async def test_settle_does_not_run_when_reserve_never_started(serve: Any, cfg: dict[str, Any]) -> None:
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 401
        async with gw.request(
            "POST",
            "/v1/chat/completions",
            json={"model": "nope", "messages": CHAT["messages"]},
            headers=bearer(1, "pro"),
        ) as r:
            assert r.status == 404
    assert recorder.reserved == [] and recorder.settled == []


async def test_settle_failures_are_collected_and_the_others_still_run(
    serve: Any, cfg: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        name = "broken"

        @hookimpl
        async def resayil_settle(self, ctx: RequestContext) -> None:
            raise RuntimeError("settle exploded")

    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder, Broken()]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 200
    assert len(recorder.settled) == 1
    assert any("broken" in r.getMessage() for r in caplog.records)


async def test_an_unexpected_plugin_error_is_a_json_500_without_a_traceback(serve: Any, cfg: dict[str, Any]) -> None:
    class Buggy:
        name = "buggy"

        @hookimpl
        async def resayil_authorize(self, ctx: RequestContext) -> None:
            raise KeyError("internal detail")

    async with serve(cfg, plugins=[TokenAuth(), Buggy()]) as gw:
        async with gw.request("POST", "/v1/chat/completions", json=CHAT, headers=bearer(1, "pro")) as r:
            assert r.status == 500
            text = await r.text()
    assert '"type":"server_error"' in text
    assert "Traceback" not in text and "internal detail" not in text
