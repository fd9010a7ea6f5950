"""Request bodies the tests send, and the prompt bound the gateway computes for them."""

from __future__ import annotations

from typing import Any

import orjson

CHAT = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "مرحبا، hello"}]}


def chat_body(model: str = "llama3.2:3b", text: str = "مرحبا، hello", **extra: Any) -> bytes:
    """The exact bytes a test sends, so it can compute the prompt's bound (their length) itself."""
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": text}], **extra})


def estimated_prompt(text: str, messages: int = 1) -> int:
    """The README's rule for a prompt the upstream did not count: ceil(UTF-8 bytes / 4) + 4 per message."""
    return -(-len(text.encode()) // 4) + 4 * messages
