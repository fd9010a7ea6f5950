"""A plugin with a required secret, for the config tests."""

from __future__ import annotations

from dataclasses import dataclass


class Plugin:
    """Needs `api_token`, given in YAML as `${SOME_ENV}`."""

    @dataclass
    class Settings:
        api_token: str

    def __init__(self, settings: Plugin.Settings) -> None:
        self.settings = settings
