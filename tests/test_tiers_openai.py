"""A Basic key driven by the official `openai` client: its models, its refusals, its rate limit."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import base_config
from tests.support.portal import auth_plugin_entry, create_key, register_user
from tests.test_tiers_access import BASIC_MODELS

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "مرحبا"}]


async def test_a_basic_key_through_the_openai_client(serve: Any, ollama: Any, db_url: str, redis_url: str) -> None:
    cfg = base_config(
        ollama_url=ollama.url,
        database_url=db_url,
        redis_url=redis_url,
        plugins=[auth_plugin_entry(), {"name": "tiers"}, {"name": "ratelimit"}],
    )
    cfg["models"].append({"name": "glm-4.7-flash", "upstream": "ollama", "class": "local-small"})
    async with serve(cfg) as gw:
        user = await register_user(gw, locale="en")
        secret, other_secret = await create_key(gw, user), await create_key(gw, user, name="second")
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0)
        other = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=other_secret, max_retries=0)
        try:
            # 1: the list, only Basic's models.
            listed = [m.id async for m in client.models.list()]
            # 2..10: nine chats, each told how much room is left.
            remaining = []
            for _ in range(9):
                raw = await client.chat.completions.with_raw_response.create(
                    model="llama3.2:3b", messages=HELLO, max_tokens=2
                )
                remaining.append(raw.headers["x-ratelimit-remaining-requests"])
                assert raw.parse().choices[0].message.content
            # 11: over the limit.
            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(model="llama3.2:3b", messages=HELLO)
            # The account's other key shares the window.
            with pytest.raises(openai.RateLimitError):
                await other.chat.completions.create(model="llama3.2:3b", messages=HELLO)
            # Refusals that come before the limiter still say what is wrong.
            with pytest.raises(openai.PermissionDeniedError) as pro_model:
                await client.chat.completions.create(model="qwen3:30b", messages=HELLO)
            with pytest.raises(openai.NotFoundError) as hidden:
                await client.chat.completions.create(model="glm-4.7-flash", messages=HELLO)
        finally:
            await client.close()
            await other.close()
        served = len(ollama.served)
    assert listed == BASIC_MODELS
    assert remaining == [str(n) for n in range(8, -1, -1)]
    assert limited.value.status_code == 429 and limited.value.code == "rate_limit_exceeded"
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert pro_model.value.code == "model_not_in_plan"
    assert "available on the Pro and Enterprise plans" in pro_model.value.message
    assert hidden.value.code == "model_not_found"
    assert served == 9
