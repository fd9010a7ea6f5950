"""The official OpenAI client, pointed at the gateway with a key made through the portal API."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.portal import auth_config, create_key, register_user


def client(served: Any, secret: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=secret, max_retries=0)


async def test_the_openai_client_lists_models_and_chats_with_a_portal_key(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        secret = await create_key(served, user)
        async with client(served, secret) as api:
            models = [m.id async for m in api.models.list()]
            assert "llama3.2:3b" in models and "glm-4.7-flash" not in models
            reply = await api.chat.completions.create(
                model="llama3.2:3b", messages=[{"role": "user", "content": "مرحبا"}]
            )
            assert reply.choices[0].message.content
            assert reply.usage is not None and reply.usage.completion_tokens > 0
            stream = await api.chat.completions.create(
                model="llama3.2:3b", messages=[{"role": "user", "content": "hello"}], stream=True
            )
            parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
            assert "".join(parts)


async def test_the_openai_client_raises_for_revoked_and_read_only_keys(ollama: Any, db_url: str, serve: Any) -> None:
    async with serve(auth_config(ollama, db_url)) as served:
        user = await register_user(served)
        revoked = await create_key(served, user, scopes=("read", "write", "delete"))
        read_only = await create_key(served, user, scopes=("read",))
        async with client(served, revoked) as api:
            assert [m.id async for m in api.models.list()]
            await api.with_options().delete("/keys/current", cast_to=object)
            with pytest.raises(openai.AuthenticationError) as refused:
                await api.models.list()
            assert refused.value.code == "invalid_api_key"
        async with client(served, read_only) as api:
            assert [m.id async for m in api.models.list()]
            with pytest.raises(openai.PermissionDeniedError) as denied:
                await api.chat.completions.create(model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}])
            assert denied.value.code == "insufficient_scope"
