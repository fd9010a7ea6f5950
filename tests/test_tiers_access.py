"""Plans decide models: what each tier lists and may call, hidden models, expired plans, /api/plans."""

from __future__ import annotations

import time
from typing import Any

import pytest

from edge.context import RequestContext
from edge.hookspecs import hookimpl
from tests.conftest import base_config
from tests.support.auth import TokenAuth, bearer

# These tests read the English answers: their callers are English-speaking unless a test says otherwise.
ENGLISH = TokenAuth.Settings(locale="en")

BASIC_MODELS = ["llama3.2:3b", "qwen2.5-coder:14b", "qwen3-embedding:0.6b"]
ALL_MODELS = ["llama3.2:3b", "qwen2.5-coder:14b", "qwen3:30b", "deepseek-v3.1:671b-cloud", "qwen3-embedding:0.6b"]
HIDDEN = ["glm-4.7-flash", "bge-m3", "nomic-embed-text"]


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


@pytest.fixture
def cfg(ollama: Any, cloud: Any, sqlite_url: str) -> dict[str, Any]:
    config = base_config(
        ollama_url=ollama.url,
        cloud_url=cloud.url,
        database_url=sqlite_url,
        plugins=[{"name": "tiers"}, {"name": "ratelimit"}],
    )
    # The operator's Ollama serves the hidden models too; listing them in the catalogue must not expose them.
    config["models"] += [
        {"name": "glm-4.7-flash", "upstream": "ollama", "class": "local-small"},
        {"name": "bge-m3", "upstream": "ollama", "class": "embedding"},
        {"name": "nomic-embed-text", "upstream": "ollama", "class": "embedding"},
    ]
    return config


class TierSeen:
    """Records the tier that the plugins after `authorize` see."""

    name = "tier_seen"

    def __init__(self) -> None:
        self.tiers: list[str] = []

    @hookimpl
    async def resayil_reserve(self, ctx: RequestContext) -> None:
        assert ctx.principal is not None
        self.tiers.append(ctx.principal.tier)


async def model_ids(gw: Any, headers: dict[str, str]) -> list[str]:
    async with gw.request("GET", "/v1/models", headers=headers) as r:
        assert r.status == 200
        body = await r.json()
    assert body["object"] == "list"
    for entry in body["data"]:
        assert entry["object"] == "model" and isinstance(entry["created"], int) and entry["owned_by"]
    return [entry["id"] for entry in body["data"]]


async def post(gw: Any, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    async with gw.request("POST", path, json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_each_plan_lists_only_its_models(serve: Any, cfg: dict[str, Any]) -> None:
    async with serve(cfg, plugins=[TokenAuth(ENGLISH)]) as gw:
        basic = await model_ids(gw, bearer(1, "basic"))
        pro = await model_ids(gw, bearer(2, "pro"))
        enterprise = await model_ids(gw, bearer(3, "enterprise"))
    assert basic == BASIC_MODELS
    assert pro == ALL_MODELS
    assert enterprise == ALL_MODELS


async def test_a_model_outside_the_plan_is_403_naming_the_plans_that_include_it(
    serve: Any, cfg: dict[str, Any], ollama: Any, cloud: Any
) -> None:
    async with serve(cfg, plugins=[TokenAuth(ENGLISH)]) as gw:
        large = await post(gw, "/v1/chat/completions", chat_body("qwen3:30b"), bearer(1))
        in_cloud = await post(gw, "/v1/chat/completions", chat_body("deepseek-v3.1:671b-cloud"), bearer(1))
        arabic = await post(gw, "/v1/chat/completions", chat_body("qwen3:30b"), bearer(1, locale="ar"))
        allowed = await post(gw, "/v1/chat/completions", chat_body("qwen2.5-coder:14b"), bearer(1))
        pro = await post(gw, "/v1/chat/completions", chat_body("qwen3:30b"), bearer(2, "pro"))
    status, body = large
    assert status == 403
    error = body["error"]
    assert error["code"] == "model_not_in_plan" and error["type"] == "permission_error"
    assert error["param"] == "model"
    assert error["message"] == (
        "The model `qwen3:30b` is not included in your Basic plan. It is available on the Pro and Enterprise plans."
    )
    assert error["plans"] == [
        {"id": "pro", "label_ar": "احترافي", "label_en": "Pro"},
        {"id": "enterprise", "label_ar": "مؤسسات", "label_en": "Enterprise"},
    ]
    assert in_cloud[0] == 403 and in_cloud[1]["error"]["code"] == "model_not_in_plan"
    assert arabic[0] == 403
    assert arabic[1]["error"]["message"] == (
        "النموذج `qwen3:30b` غير مشمول في باقتك (أساسي). وهو متاح في باقات احترافي ومؤسسات."
    )
    assert allowed[0] == 200 and pro[0] == 200
    # Refused requests never reached an upstream.
    assert [s["body"]["model"] for s in ollama.served] == ["qwen2.5-coder:14b", "qwen3:30b"]
    assert cloud.served == []


async def test_hidden_models_answer_exactly_like_models_that_do_not_exist(
    serve: Any, cfg: dict[str, Any], ollama: Any
) -> None:
    async with serve(cfg, plugins=[TokenAuth(ENGLISH)]) as gw:
        listed = await model_ids(gw, bearer(3, "enterprise"))
        missing = await post(gw, "/v1/chat/completions", chat_body("no-such-model"), bearer(3, "enterprise"))
        hidden = await post(gw, "/v1/chat/completions", chat_body("glm-4.7-flash"), bearer(3, "enterprise"))
        embed = await post(gw, "/v1/embeddings", {"model": "bge-m3", "input": "x"}, bearer(3, "enterprise"))
        async with gw.request("GET", "/api/plans") as r:
            plans = await r.json()
    assert not set(HIDDEN) & set(listed)
    assert missing[0] == hidden[0] == embed[0] == 404
    assert hidden[1] == {
        "error": {
            **missing[1]["error"],
            "message": missing[1]["error"]["message"].replace("no-such-model", "glm-4.7-flash"),
        }
    }
    assert hidden[1]["error"]["code"] == "model_not_found"
    assert embed[1]["error"]["code"] == "model_not_found"
    assert not {m["id"] for plan in plans["data"] for m in plan["models"]} & set(HIDDEN)
    assert ollama.served == []


async def test_an_expired_plan_falls_back_to_basic_for_every_later_plugin(serve: Any, cfg: dict[str, Any]) -> None:
    seen = TierSeen()
    past = int(time.time()) - 60
    future = int(time.time()) + 3600
    async with serve(cfg, plugins=[TokenAuth(ENGLISH), seen]) as gw:
        lapsed = bearer(2, "pro", plan_expires_at=past)
        listed = await model_ids(gw, lapsed)
        refused = await post(gw, "/v1/chat/completions", chat_body("qwen3:30b"), lapsed)
        async with gw.request("POST", "/v1/chat/completions", json=chat_body("llama3.2:3b"), headers=lapsed) as r:
            assert r.status == 200
            lapsed_limit = r.headers["x-ratelimit-limit-requests"]
        renewed = bearer(4, "pro", plan_expires_at=future)
        async with gw.request("POST", "/v1/chat/completions", json=chat_body("qwen3:30b"), headers=renewed) as r:
            assert r.status == 200
            renewed_limit = r.headers["x-ratelimit-limit-requests"]
    assert listed == BASIC_MODELS
    assert refused[0] == 403
    assert refused[1]["error"]["message"].endswith("Your Pro plan has expired; renew it to use its models again.")
    assert lapsed_limit == "10" and renewed_limit == "30"
    assert seen.tiers == ["basic", "pro"]


async def test_a_tier_the_config_does_not_know_gets_the_fallback(serve: Any, cfg: dict[str, Any]) -> None:
    cfg["fallback_tier"] = "pro"
    async with serve(cfg, plugins=[TokenAuth(ENGLISH)]) as gw:
        listed = await model_ids(gw, bearer(5, "gold"))
    assert listed == ALL_MODELS


async def test_plans_are_public_with_prices_limits_and_models_in_both_languages(
    serve: Any, cfg: dict[str, Any]
) -> None:
    cfg["tiers"]["enterprise"]["tokens_per_minute"] = 200000
    async with serve(cfg) as gw, gw.request("GET", "/api/plans") as r:
        assert r.status == 200
        body = await r.json()
    assert body["object"] == "list" and body["fallback_tier"] == "basic"
    plans = {p["id"]: p for p in body["data"]}
    assert list(plans) == ["basic", "pro", "enterprise"]
    basic = plans["basic"]
    assert basic["label"] == {"ar": "أساسي", "en": "Basic"}
    assert (basic["price_fils"], basic["price_kwd"], basic["currency"]) == (2500, "2.500", "KWD")
    assert basic["monthly_credits"] == 1000 and basic["requests_per_minute"] == 10
    assert basic["tokens_per_minute"] is None and basic["cloud"] is False
    assert [m["id"] for m in basic["models"]] == BASIC_MODELS
    assert basic["models"][0] == {
        "id": "llama3.2:3b",
        "class": "local-small",
        "multiplier": 1,
        "max_completion_tokens": 64,
    }
    assert plans["pro"]["price_kwd"] == "7.500" and plans["pro"]["requests_per_minute"] == 30
    assert [m["id"] for m in plans["pro"]["models"]] == ALL_MODELS
    cloud_model = next(m for m in plans["pro"]["models"] if m["class"] == "cloud")
    assert cloud_model["multiplier"] == 2
    enterprise = plans["enterprise"]
    assert enterprise["price_kwd"] == "25.000" and enterprise["tokens_per_minute"] == 200000
    assert enterprise["label"] == {"ar": "مؤسسات", "en": "Enterprise"} and enterprise["priority"] == 2
