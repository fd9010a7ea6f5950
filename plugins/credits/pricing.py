"""The money rules as pure integer functions: worst-case holds, affordable budgets, charges.

1 credit = 1000 milli-credits buys 1000 tokens at 1x, so a token at multiplier m costs m milli-credits.
Nothing here touches a float.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Bill:
    """What a settled request is charged for: its token counts, their cost, and whether the counts the
    upstream reported were out of bounds (then these are what is left of them)."""

    prompt_tokens: int
    completion_tokens: int
    milli: int
    out_of_bounds: bool = False


def bill(usage: Usage, *, prompt_bound: int, completion_budget: int, multiplier: int) -> Bill:
    """Every counted token at the route's multiplier, never more than the request could use: at most
    `prompt_bound` prompt and `completion_budget` completion tokens (what its hold was taken for). A count
    that is not a non-negative integer is its bound (as edge/usage.py bounds the upstream's); nothing is
    charged when nothing was counted.
    """
    if usage.source == "none":
        return Bill(0, 0, 0)
    prompt = _bounded(usage.prompt_tokens, prompt_bound)
    completion = _bounded(usage.completion_tokens, completion_budget)
    out = (prompt, completion) != (usage.prompt_tokens, usage.completion_tokens) or not (
        type(usage.prompt_tokens) is int and type(usage.completion_tokens) is int
    )
    return Bill(prompt, completion, (prompt + completion) * max(multiplier, 0), out)


def _bounded(count: object, bound: int) -> int:
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return min(count, bound)
    return bound


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
