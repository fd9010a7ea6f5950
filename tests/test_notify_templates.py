"""The notification templates: loading refuses bad files by name; every text renders in both languages."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge.settings import ConfigError
from plugins.notify import formats
from plugins.notify.formats import Kwd
from plugins.notify.templates import DIRECTORY, EVENTS, LRM, RLM, Templates, load

URL = "https://portal.example/pay?plan=pro&x=1"
SAMPLES: dict[str, dict[str, formats.Value]] = {
    "user.registered": {"name": "Fatima", "quickstart_url": URL},
    "subscription.activated": {
        "plan": "Pro",
        "credits": 5000,
        "price": Kwd(7500),
        "expires_on": date(2026, 4, 14),
        "receipt_url": URL,
    },
    "credits.low": {"percent": 20, "balance": 1000, "topup_url": URL},
    "credits.exhausted": {"topup_url": URL},
    "topup.paid": {"credits": 15000, "price": Kwd(12000), "balance": 16250, "receipt_url": URL},
    "subscription.renewal_due": {"plan": "Basic", "days": 3, "expires_on": date(2026, 4, 14), "renew_url": URL},
    "cloud.budget_80": {"used": 400, "cap": 500},
    "cloud.budget_100": {"used": 500, "cap": 500},
    "ip.banned": {
        "ip": "203.0.113.9",
        "jail": "resayil-portal",
        "failures": 5,
        "banned_at": datetime(2026, 3, 14, 21, 30, tzinfo=UTC),
    },
    "enterprise.registered": {
        "customer": "شركة الخليج",
        "email": "ops@gulf.example",
        "phone": "+96512345678",
        "plan": "Enterprise",
        "price": Kwd(25000),
    },
    "provider.alert": {"code": "190"},
}
# What each sample value looks like in each language.
SHOWN = {
    "en": {5000: "5,000", Kwd(7500): "7.500 KWD", date(2026, 4, 14): "14 April 2026", 15000: "15,000", 16250: "16,250"},
    "ar": {5000: "٥٬٠٠٠", Kwd(7500): "٧٫٥٠٠ د.ك", date(2026, 4, 14): "١٤ أبريل ٢٠٢٦", 15000: "١٥٬٠٠٠", 16250: "١٦٬٢٥٠"},
}


@pytest.fixture(scope="module")
def templates() -> Templates:
    return load()


@pytest.fixture
def editable(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(DIRECTORY, target)
    return target


def test_samples_cover_every_event():
    assert set(SAMPLES) == set(EVENTS)
    # The ten events, and the sender's own alert to the admins.
    assert len(EVENTS) == 11


@pytest.mark.parametrize("event", list(EVENTS))
@pytest.mark.parametrize("language", ["ar", "en"])
def test_every_template_renders_every_value(templates: Templates, event: str, language: formats.Language):
    text = templates.render(event, language, SAMPLES[event])
    assert "{" not in text and "}" not in text
    for value in SAMPLES[event].values():
        shown = SHOWN[language].get(value) if not isinstance(value, str) else value  # type: ignore[call-overload]
        if shown is not None:
            assert shown in text
    lines = [ln for ln in text.split("\n") if ln]
    if language == "ar":
        for line in lines:
            # Each Arabic line is fixed right-to-left, except a line that is only a link.
            assert line.startswith(RLM) or line == URL
            # Arabic punctuation in the Arabic text (a link keeps its own `?`).
            assert not any(f"{p} " in line for p in ",;?")
        assert not any(c in text for c in "0123456789" if c not in URL and c not in "".join(_latin_values(event)))
    else:
        assert RLM not in text


def _latin_values(event: str) -> list[str]:
    return [v for v in SAMPLES[event].values() if isinstance(v, str)]


def test_arabic_block_marks_latin_values_and_leaves_links_alone(templates: Templates):
    text = templates.render("enterprise.registered", "ar", SAMPLES["enterprise.registered"])
    assert f"{LRM}+96512345678{LRM}" in text
    assert f"{LRM}ops@gulf.example{LRM}" in text
    assert f"{LRM}شركة الخليج" not in text  # Arabic values need no mark
    link = templates.render("credits.exhausted", "ar", SAMPLES["credits.exhausted"])
    assert f"\n{URL}" in link and f"{URL}{LRM}" not in link and f"{LRM}{URL}" not in link
    english = templates.render("enterprise.registered", "en", SAMPLES["enterprise.registered"])
    assert f"شركة الخليج{LRM}." in english


def test_a_users_text_is_their_language_first(templates: Templates):
    values = SAMPLES["topup.paid"]
    arabic = templates.render("topup.paid", "ar", values)
    english = templates.render("topup.paid", "en", values)
    assert templates.user_text("topup.paid", "ar", values) == f"{arabic}\n\n{english}"
    assert templates.user_text("topup.paid", "en", values) == f"{english}\n\n{arabic}"
    # Arabic unless English was chosen.
    assert templates.user_text("topup.paid", "fr", values) == f"{arabic}\n\n{english}"


def test_cloud_parameters_follow_the_events_order(templates: Templates):
    assert templates.params("credits.low", "ar", SAMPLES["credits.low"]) == ("٢٠", "١٬٠٠٠", URL)
    assert templates.params("credits.low", "en", SAMPLES["credits.low"]) == ("20", "1,000", URL)


def test_values_must_be_exactly_the_events(templates: Templates):
    with pytest.raises(ValueError, match="missing"):
        templates.render("credits.low", "en", {"percent": 20, "balance": 1})
    with pytest.raises(ValueError, match="extra"):
        templates.render("credits.exhausted", "en", {"topup_url": URL, "token": "x"})


# ---------------------------------------------------------------------------- formats


def test_money_is_three_decimals_from_integer_fils():
    assert formats.kwd(Kwd(2500), "en") == "2.500 KWD"
    assert formats.kwd(Kwd(1), "en") == "0.001 KWD"
    assert formats.kwd(Kwd(1_234_567_890), "en") == "1,234,567.890 KWD"
    assert formats.kwd(Kwd(-1500), "en") == "-1.500 KWD"
    assert formats.kwd(Kwd(35000), "ar") == "٣٥٫٠٠٠ د.ك"
    assert formats.kwd(Kwd(1_234_500), "ar") == "١٬٢٣٤٫٥٠٠ د.ك"


def test_numbers_and_times_per_language():
    assert formats.number(1234567, "en") == "1,234,567"
    assert formats.number(1234567, "ar") == "١٬٢٣٤٬٥٦٧"
    # 21:30 UTC is already the next day in Kuwait (UTC+3).
    late = datetime(2026, 3, 14, 21, 30, tzinfo=UTC)
    assert formats.moment(late, "en") == "15 March 2026, 00:30"
    assert formats.moment(late, "ar") == "١٥ مارس ٢٠٢٦، ٠٠:٣٠"
    assert formats.moment(late.astimezone(timezone(timedelta(hours=-5))), "en") == "15 March 2026, 00:30"
    with pytest.raises(ValueError, match="zone"):
        formats.moment(datetime(2026, 3, 14, 21, 30), "en")
    with pytest.raises(TypeError):
        formats.value_text(True, "en")


# ---------------------------------------------------------------------------- the loader refuses


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "Top up {topup_url} {secret}",
            "credits.exhausted.en.txt: unknown placeholder {secret}; credits.exhausted has {topup_url}",
        ),
        ("Top up now.", "credits.exhausted.en.txt: placeholder {topup_url} is missing"),
        ("{topup_url.__class__}", "credits.exhausted.en.txt: placeholder {topup_url.__class__} must be a plain name"),
        ("{topup_url[0]}", "credits.exhausted.en.txt: placeholder {topup_url[0]} must be a plain name"),
        ("{topup_url!r}", "credits.exhausted.en.txt: placeholder {topup_url!r} must be a plain name"),
        ("{topup_url:>99999}", "credits.exhausted.en.txt: placeholder {topup_url:>99999} must be a plain name"),
        ("{} {topup_url}", "credits.exhausted.en.txt: placeholder {} must be a plain name"),
        ("{topup_url", "credits.exhausted.en.txt: expected '}'"),
        ("", "credits.exhausted.en.txt: is empty"),
    ],
)
def test_loader_names_the_file_and_the_placeholder(editable: Path, text: str, message: str):
    write(editable, "credits.exhausted.en.txt", text)
    with pytest.raises(ConfigError) as caught:
        load(editable)
    assert str(caught.value).startswith("templates/" + message)


def test_loader_refuses_a_missing_or_stray_file(editable: Path):
    (editable / "ip.banned.ar.txt").unlink()
    with pytest.raises(ConfigError, match=r"templates/ip\.banned\.ar\.txt: missing"):
        load(editable)
    write(editable, "ip.banned.ar.txt", "{ip} {jail} {failures} {banned_at}")
    write(editable, "ip.baned.en.txt", "{ip}")
    with pytest.raises(ConfigError, match=r"templates/ip\.baned\.en\.txt: no such event"):
        load(editable)


def test_an_operators_edit_is_used_with_arabic_punctuation(editable: Path):
    write(editable, "credits.exhausted.ar.txt", "\ufeffهل نفد رصيدك? اشحن الآن, أو اكتب لنا; شكراً.\n{topup_url}\n")
    write(editable, "credits.exhausted.en.txt", "Out of credits? 1,000 is a number and ?x=1 stays.\n{topup_url}")
    templates = load(editable)
    arabic = templates.render("credits.exhausted", "ar", {"topup_url": URL})
    assert arabic == f"{RLM}هل نفد رصيدك؟ اشحن الآن، أو اكتب لنا؛ شكراً.\n{URL}"
    english = templates.render("credits.exhausted", "en", {"topup_url": URL})
    assert english == f"Out of credits? 1,000 is a number and ?x=1 stays.\n{URL}"
