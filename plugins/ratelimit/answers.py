"""What a client sees of the limiter: OpenAI's `x-ratelimit-*` headers and the 429 refusal."""

from __future__ import annotations

import math

from edge.config import TierSettings
from edge.errors import TooManyRequests
from plugins.ratelimit.windows import Decision, Window


def duration(seconds: float) -> str:
    """A duration the way OpenAI writes it (Go's style): `250ms`, `12s`, `8.64s`, `1m0s`."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def headers(decision: Decision) -> dict[str, str]:
    out = _window_headers("requests", decision.requests)
    if decision.tokens is not None:
        out.update(_window_headers("tokens", decision.tokens))
    return out


def _window_headers(kind: str, window: Window) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(window.limit),
        f"x-ratelimit-remaining-{kind}": str(window.remaining),
        f"x-ratelimit-reset-{kind}": duration(window.reset_after),
    }


def retry_after(decision: Decision, *, cost: int) -> int:
    """Whole seconds until the window that refused the request next frees room; at least 1."""
    short = [decision.requests] if decision.requests.remaining < 1 else []
    if decision.tokens is not None and decision.tokens.remaining < cost:
        short.append(decision.tokens)
    return max(1, math.ceil(max((w.reset_after for w in short), default=decision.requests.reset_after)))


def refusal(decision: Decision, *, tier: TierSettings, locale: str, cost: int, window_seconds: int) -> TooManyRequests:
    wait = retry_after(decision, cost=cost)
    per_ar, per_en = (
        ("في الدقيقة", "per minute")
        if window_seconds == 60
        else (f"كل {window_seconds} ثانية", f"per {window_seconds}s")
    )
    tokens = decision.tokens
    if tokens is not None and decision.requests.remaining > 0 and cost > tokens.limit:
        # No wait would help: this one request asks for more tokens than the plan allows in a window.
        message = (
            f"هذا الطلب قد يستهلك حتى {cost} رمز، وهذا أكثر مما تسمح به باقة {tier.label_ar} {per_ar} "
            f"({tokens.limit}). خفّض max_tokens أو اختصر الرسائل."
            if locale == "ar"
            else f"This request may use up to {cost} tokens, more than your {tier.label_en} plan allows {per_en} "
            f"({tokens.limit}). Lower max_tokens or shorten the messages."
        )
    else:
        by_requests = decision.requests.remaining < 1 or tokens is None
        limit = decision.requests.limit if by_requests or tokens is None else tokens.limit
        kind_ar, kind_en = ("الطلبات", "requests") if by_requests else ("الرموز", "tokens")
        message = (
            f"بلغت حد {kind_ar} في باقة {tier.label_ar}: {limit} {per_ar}. حاول مجددًا بعد {wait} ثانية."
            if locale == "ar"
            else f"Rate limit reached for {kind_en} on your {tier.label_en} plan: {limit} {kind_en} {per_en}. "
            f"Try again in {wait}s."
        )
    return TooManyRequests(message, headers={"retry-after": str(wait)})
