"""`GET /api/plans`: the plans for the portal's pricing page, in Arabic and English."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from plugins.tiers.rules import visible

if TYPE_CHECKING:
    from edge.gateway import Gateway


def kwd(fils: int) -> str:
    """Integer fils as a KWD amount with its three decimals: 2500 -> "2.500"."""
    sign = "-" if fils < 0 else ""
    whole, part = divmod(abs(fils), 1000)
    return f"{sign}{whole}.{part:03d}"


def catalogue(gateway: Gateway) -> dict[str, Any]:
    """Every plan with its price, credits, limits and the models it includes (never a hidden one)."""
    config = gateway.config
    models = [m for m in gateway.models.values() if m.name not in gateway.hidden_models]
    data = []
    for name, tier in config.tiers.items():
        data.append(
            {
                "id": name,
                "label": {"ar": tier.label_ar, "en": tier.label_en},
                "price_fils": tier.price_fils,
                "price_kwd": kwd(tier.price_fils),
                "currency": "KWD",
                "monthly_credits": tier.monthly_credits,
                "requests_per_minute": tier.requests_per_minute,
                "tokens_per_minute": tier.tokens_per_minute,
                "cloud": tier.cloud,
                "priority": tier.priority,
                "model_classes": list(tier.model_classes),
                "models": [
                    {
                        "id": m.name,
                        "class": m.settings.model_class,
                        "multiplier": m.multiplier,
                        "max_completion_tokens": m.settings.max_completion_tokens,
                    }
                    for m in visible(models, tier)
                ],
            }
        )
    return {"object": "list", "data": data, "fallback_tier": config.fallback_tier}


def plans_route(gateway: Gateway) -> Any:
    async def plans(request: Request) -> Response:
        return JSONResponse(catalogue(gateway))

    return plans
