"""Shared test helpers: the one test authenticator (`auth`), the one recorder (`recorder`), a clock tests
advance (`clock`), request bodies, portal users, real processes (`servers`) and per-plugin helpers."""
