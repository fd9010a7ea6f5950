"""The money rules as pure integer functions: worst-case holds, affordable budgets, charges.

1 credit = 1000 milli-credits buys 1000 tokens at 1x, so a token at multiplier m costs m milli-credits.
Nothing here touches a float.
"""

from __future__ import annotations

from edge.context import RequestContext, Usage
from edge.gateway import Gateway


def prompt_bound(ctx: RequestContext) -> int:
    """An upper bound of the prompt's tokens: the UTF-8 bytes of the raw request body.

    Byte-level BPE tokenizers (Llama 3, Qwen, DeepSeek) never make a text token shorter than one byte, and
    the JSON around each message (`{"role":"user","content":""}`, 28 bytes) outweighs the few template
    tokens a chat template adds per message, so the body's length bounds the prompt from above.
    """
    return len(ctx.body)


def worst_multiplier(gateway: Gateway, ctx: RequestContext) -> int:
    """The highest multiplier this request could be billed at: its model's, or its cloud fallback's when
    the caller's tier may spill over to the cloud."""
    model = ctx.model
    if model is None:
        return ctx.multiplier
    worst = model.multiplier
    tier = gateway.config.tiers.get(ctx.principal.tier) if ctx.principal else None
    fallback = gateway.models.get(model.settings.fallback or "") if tier is not None and tier.cloud else None
    if fallback is not None:
        worst = max(worst, fallback.multiplier)
    return worst


def hold_milli(*, prompt: int, completion: int, multiplier: int) -> int:
    return (prompt + completion) * multiplier


def affordable_completion(*, available_milli: int, prompt: int, multiplier: int) -> int:
    """The most completion tokens `available_milli` pays for once the prompt's bound is held (may be < 0)."""
    return available_milli // multiplier - prompt


def charge_milli(usage: Usage, multiplier: int) -> int:
    """What a settled request costs: every counted token at the route's multiplier; nothing when uncounted."""
    if usage.source == "none":
        return 0
    return max(usage.total_tokens, 0) * multiplier


def plan_milli(gateway: Gateway, tier: str | None) -> int:
    settings = gateway.config.tiers.get(tier or "")
    return settings.monthly_credits * 1000 if settings is not None else 0


def credits_text(milli: int) -> str:
    """12345 -> "12.345": milli-credits as a decimal string, without a float."""
    sign = "-" if milli < 0 else ""
    whole, frac = divmod(abs(milli), 1000)
    return f"{sign}{whole:,}.{frac:03d}"


def percent(balance_milli: int, plan_milli: int) -> int:
    """Whole percent of the plan left, 0..100; an account without a plan has 100 while it has credit."""
    if plan_milli <= 0:
        return 100 if balance_milli > 0 else 0
    return max(0, min(100, balance_milli * 100 // plan_milli))
