"""The plan rules: which tier applies to a caller, which models a tier may use, and the refusal that says so."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from edge.config import GatewayConfig, TierSettings
from edge.context import Model, Principal
from edge.errors import Forbidden


def effective(principal: Principal, *, config: GatewayConfig, now: float) -> Principal:
    """The principal under the rules that apply now: an expired plan, or a tier the config no longer
    knows, falls back to `fallback_tier` until renewed."""
    expired = principal.plan_expires_at is not None and principal.plan_expires_at <= now
    if not expired and principal.tier in config.tiers:
        return principal
    return dataclasses.replace(principal, tier=config.fallback_tier)


def may_use(tier: TierSettings, model: Model) -> bool:
    return model.settings.model_class in tier.model_classes


def plans_with(model: Model, tiers: dict[str, TierSettings]) -> list[tuple[str, TierSettings]]:
    return [(name, tier) for name, tier in tiers.items() if may_use(tier, model)]


def _join_en(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _join_ar(words: list[str]) -> str:
    return words[0] if len(words) == 1 else "، ".join(words[:-1]) + " و" + words[-1]


def not_in_plan(
    model: Model,
    *,
    tier: TierSettings,
    tiers: dict[str, TierSettings],
    locale: str,
    expired: TierSettings | None = None,
) -> Forbidden:
    """403 `model_not_in_plan`: the message, in the caller's locale, names the plans that include the
    model; `plans` gives them with both languages' labels for a portal to show."""
    plans = plans_with(model, tiers)
    name = model.name
    if locale == "ar":
        message = f"النموذج `{name}` غير مشمول في باقتك ({tier.label_ar})."
        if plans:
            labels = _join_ar([t.label_ar for _, t in plans])
            message += f" وهو متاح في {'باقات' if len(plans) > 1 else 'باقة'} {labels}."
        if expired is not None:
            message += f" انتهت باقتك {expired.label_ar}؛ جدّدها لتستعيد نماذجها."
    else:
        message = f"The model `{name}` is not included in your {tier.label_en} plan."
        if plans:
            labels = _join_en([t.label_en for _, t in plans])
            message += f" It is available on the {labels} {'plans' if len(plans) > 1 else 'plan'}."
        if expired is not None:
            message += f" Your {expired.label_en} plan has expired; renew it to use its models again."
    return Forbidden(
        message, code="model_not_in_plan", param="model", extra={"plans": [plan_label(n, t) for n, t in plans]}
    )


def plan_label(name: str, tier: TierSettings) -> dict[str, str]:
    return {"id": name, "label_ar": tier.label_ar, "label_en": tier.label_en}


def visible(models: Iterable[Model], tier: TierSettings) -> list[Model]:
    return [m for m in models if may_use(tier, m)]
