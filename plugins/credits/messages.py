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
