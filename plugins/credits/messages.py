"""What a caller reads when credit runs out, in their language."""

from __future__ import annotations

from plugins.credits.pricing import credits_text


def insufficient(*, locale: str, needed_milli: int, available_milli: int, top_up_url: str) -> str:
    needed, available = credits_text(needed_milli), credits_text(max(available_milli, 0))
    if locale == "ar":
        return (
            f"رصيدك غير كافٍ لهذا الطلب: يحتاج إلى {needed} رصيد على الأقل والمتاح {available}. "
            f"اشحن رصيدك من {top_up_url}"
        )
    return (
        f"You do not have enough credits for this request: it needs at least {needed} credits and "
        f"{available} are available. Top up at {top_up_url}"
    )


_PERIODS = {
    "en": {"day": "daily", "month": "monthly", "total": "total"},
    "ar": {"day": "اليومي", "month": "الشهري", "total": "الإجمالي"},
}
_WHO = {
    "en": {"key": "This API key", "member": "Your team membership"},
    "ar": {"key": "مفتاح API هذا", "member": "عضويتك في الفريق"},
}


def limit_reached(*, locale: str, kind: str, period: str, limit_milli: int, resets_at: str | None) -> str:
    """A limit (`kind` key or member) refused a request: the limit, its period, and when it resets."""
    lang = "ar" if locale == "ar" else "en"
    limit, who, which = credits_text(limit_milli), _WHO[lang].get(kind, kind), _PERIODS[lang][period]
    if lang == "ar":
        reset = f"يتجدد الحد في {resets_at}." if resets_at else "هذا الحد لا يتجدد؛ يمكن رفعه من البوابة."
        return f"بلغ {who} حده {which} للإنفاق وهو {limit} رصيد. {reset}"
    reset = f"It resets at {resets_at}." if resets_at else "It does not reset; it can be raised in the portal."
    return f"{who} has reached its {which} spend limit of {limit} credits. {reset}"
