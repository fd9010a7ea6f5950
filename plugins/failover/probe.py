"""The probe: one small request of the gateway's own, which no customer's input can make fail.

Requests of several accounts failing look the same whether the upstream is unwell or each request carries
an input that crashes the model runner (several accounts may be one attacker). The probe tells the two
apart: it asks the same model for one token of an ordinary answer. Served, the failures were the requests'
own; failed, refused or not answered in time, the upstream is unwell.
"""

from __future__ import annotations

import aiohttp
import orjson

from edge.context import Model
from edge.proxy import upstream_headers

PROBE_TEXT = "Reply with the word OK."


def probe_call(model: Model) -> tuple[str, bytes]:
    """The path and body of the probe for this model: a one-token chat answer, or one embedding."""
    if model.kind == "embedding":
        return "/embeddings", orjson.dumps({"model": model.upstream_model, "input": PROBE_TEXT})
    body = {
        "model": model.upstream_model,
        "messages": [{"role": "user", "content": PROBE_TEXT}],
        "max_tokens": 1,
        "stream": False,
    }
    return "/chat/completions", orjson.dumps(body)


async def answers(*, session: aiohttp.ClientSession, model: Model, timeout_s: float, request_id: str) -> bool:
    """True when the model's upstream serves the probe with a 2xx JSON answer within `timeout_s`."""
    path, body = probe_call(model)
    upstream = model.upstream
    url = upstream.settings.base_url.rstrip("/") + path
    try:
        async with session.post(
            url,
            data=body,
            headers=upstream_headers(upstream, request_id),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            data = await resp.read()
            if not 200 <= resp.status < 300:
                return False
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return False
