"""Bad input never yields a 500 or HTML: every refusal is OpenAI's error shape, with x-request-id."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from edge.context import RequestContext
from edge.hookspecs import hookimpl
from tests.conftest import base_config
from tests.support.auth import TokenAuth, bearer
from tests.support.bodies import CHAT
from tests.support.recorder import Recorder


@pytest.fixture
def cfg(ollama: Any, sqlite_url: str) -> dict[str, Any]:
    return base_config(ollama_url=ollama.url, database_url=sqlite_url, max_body_bytes=4096)


async def call(gw: Any, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    kwargs.setdefault("headers", bearer(1, "pro"))
    async with gw.request(method, path, **kwargs) as r:
        assert r.headers["content-type"].startswith("application/json"), await r.text()
        assert r.headers["x-request-id"]
        return r.status, await r.json(), r.headers


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_json"),
        (b'"just a string"', None, "invalid_json"),
        (
            json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
            "model",
            "missing_required_parameter",
        ),
        (json.dumps({"model": 12, "messages": []}).encode(), "model", "invalid_type"),
        (json.dumps({"model": "llama3.2:3b"}).encode(), "messages", "missing_required_parameter"),
        (json.dumps({"model": "llama3.2:3b", "messages": "hi"}).encode(), "messages", "invalid_type"),
        (json.dumps({"model": "llama3.2:3b", "messages": []}).encode(), "messages", "invalid_type"),
        (json.dumps({"model": "llama3.2:3b", "messages": [1]}).encode(), "messages[0]", "invalid_type"),
        (json.dumps({**CHAT, "stream": "yes"}).encode(), "stream", "invalid_type"),
        (json.dumps({**CHAT, "max_tokens": -5}).encode(), "max_tokens", "invalid_type"),
        (
            json.dumps({**CHAT, "max_completion_tokens": 1.5}).encode(),
            "max_completion_tokens",
            "invalid_type",
        ),
        (json.dumps({**CHAT, "stream_options": 3}).encode(), "stream_options", "invalid_type"),
    ],
)
async def test_bad_chat_bodies_are_400_with_param(
    serve: Any, cfg: dict[str, Any], body: bytes, param: str | None, code: str
) -> None:
    recorder = Recorder()
    async with serve(cfg, plugins=[TokenAuth(), recorder]) as gw:
        status, data, headers = await call(gw, "POST", "/v1/chat/completions", data=body)
    assert status == 400
    assert data["error"]["type"] == "invalid_request_error"
    assert (data["error"]["param"], data["error"]["code"]) == (param, code)
    assert headers["x-should-retry"] == "false"
    assert recorder.reserved == [] and recorder.settled == []


async def test_bad_embeddings_input_is_400(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        status, data, _ = await call(
            gw, "POST", "/v1/embeddings", json={"model": "qwen3-embedding:0.6b", "input": {"x": 1}}
        )
    assert (status, data["error"]["param"]) == (400, "input")


async def test_body_over_the_limit_is_413_announced_or_streamed(serve: Any, cfg: dict[str, Any]) -> None:
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()

    async def chunked() -> Any:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        status, data, _ = await call(gw, "POST", "/v1/chat/completions", data=big)
        assert (status, data["error"]["code"]) == (413, "request_too_large")
        status, data, _ = await call(gw, "POST", "/v1/chat/completions", data=chunked())
        assert (status, data["error"]["code"]) == (413, "request_too_large")


async def test_unknown_path_is_404_and_wrong_method_405(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        status, data, _ = await call(gw, "POST", "/v1/completions-nope", json=CHAT)
        assert (status, data["error"]["code"]) == (404, "unknown_url")
        status, data, headers = await call(gw, "GET", "/v1/chat/completions")
        assert (status, data["error"]["code"]) == (405, "method_not_allowed")
        assert headers["allow"] == "POST"
        status, data, _ = await call(gw, "GET", "/api/nothing-here")
        assert (status, data["error"]["code"]) == (404, "not_found")
        status, data, _ = await call(gw, "DELETE", "/healthz")
        assert status == 405 and data["error"]["type"] == "invalid_request_error"


async def test_no_authentication_plugin_means_401_for_every_v1_request(serve: Any, cfg: dict[str, Any]) -> None:
    recorder = Recorder()
    async with serve(cfg, plugins=[recorder]) as gw:
        for method, path, body in [
            ("POST", "/v1/chat/completions", CHAT),
            ("GET", "/v1/models", None),
            ("POST", "/v1/embeddings", {"model": "x", "input": "y"}),
        ]:
            status, data, _ = await call(gw, method, path, json=body, headers={"Authorization": "Bearer x"})
            assert (status, data["error"]["code"]) == (401, "invalid_api_key")
    assert recorder.reserved == [] and recorder.settled == []


async def test_open_access_serves_without_a_key_and_warns(
    serve: Any, cfg: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    cfg["server"]["open_access"] = True
    with caplog.at_level(logging.WARNING):
        async with serve(cfg) as gw:
            status, data, _ = await call(gw, "GET", "/v1/models", headers={})
    assert status == 200 and data["data"]
    assert any("open_access" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


async def test_wrong_key_is_401_before_the_body_is_judged(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        status, data, _ = await call(
            gw, "POST", "/v1/chat/completions", data=b"{bad", headers={"Authorization": "Bearer wrong"}
        )
    assert (status, data["error"]["code"]) == (401, "invalid_api_key")


async def test_request_id_is_echoed_when_sane_and_generated_otherwise(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg, plugins=[TokenAuth()]) as gw:
        async with gw.request(
            "POST",
            "/v1/chat/completions",
            json=CHAT,
            headers={**bearer(1, "pro"), **{"X-Request-Id": "client-abc.123"}},
        ) as r:
            assert r.status == 200 and r.headers["x-request-id"] == "client-abc.123"
        async with gw.request(
            "POST",
            "/v1/chat/completions",
            json=CHAT,
            headers={**bearer(1, "pro"), **{"X-Request-Id": "bad id\twith<html>"}},
        ) as r:
            assert r.headers["x-request-id"].startswith("req_")
        async with gw.request("GET", "/healthz") as r:
            assert r.status == 200 and r.headers["x-request-id"]
            assert await r.json() == {"status": "ok"}


async def test_one_json_log_line_per_request_without_secrets_or_content(
    serve: Any, cfg: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    secret_text = "my secret prompt text"
    body = {**CHAT, "messages": [{"role": "user", "content": secret_text}]}
    with caplog.at_level(logging.INFO, logger="resayil.access"):
        async with serve(cfg, plugins=[TokenAuth()]) as gw:
            async with gw.request(
                "POST",
                "/v1/chat/completions",
                json=body,
                headers={**bearer(1, "pro"), **{"X-Request-Id": "log-check-1"}},
            ) as r:
                assert r.status == 200
    lines = [r for r in caplog.records if r.name == "resayil.access"]
    assert len(lines) == 1
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["request_id"] == "log-check-1"
    assert (fields["account"], fields["model"], fields["upstream"], fields["status"]) == (
        1,
        "llama3.2:3b",
        "ollama",
        200,
    )
    assert fields["completion_tokens"] == 5 and fields["latency_ms"] > 0
    from edge.logs import JsonFormatter

    rendered = JsonFormatter().format(lines[0])
    assert secret_text not in rendered and "Bearer" not in rendered and "good" not in rendered
    assert json.loads(rendered)["request_id"] == "log-check-1"


async def test_portal_is_served_at_the_root(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg) as gw, gw.request("GET", "/") as r:
        assert r.status == 200
        text = await r.text()
    assert 'dir="rtl"' in text and "/v1" in text


async def test_client_address_comes_from_a_trusted_proxy_only(serve: Any, cfg: dict[str, Any]) -> None:
    seen: list[str] = []

    class Watch:
        name = "watch"

        @hookimpl
        async def resayil_authorize(self, ctx: RequestContext) -> None:
            seen.append(ctx.client_ip)

    spoof = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}
    async with serve(cfg, plugins=[TokenAuth(), Watch()]) as gw:
        await call(gw, "GET", "/v1/models", headers={**bearer(1, "pro"), **spoof})
    cfg["server"]["trusted_proxies"] = ["127.0.0.0/8"]
    async with serve(cfg, plugins=[TokenAuth(), Watch()]) as gw:
        await call(gw, "GET", "/v1/models", headers={**bearer(1, "pro"), **spoof})
        await call(gw, "GET", "/v1/models", headers={**bearer(1, "pro"), **{"X-Forwarded-For": "not-an-ip"}})
    # Untrusted peer: the header is ignored. Trusted: the right-most hop it did not add itself.
    assert seen == ["127.0.0.1", "203.0.113.9", "127.0.0.1"]
