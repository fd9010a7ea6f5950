"""The Resayil gateway core: app factory, hook chain, config, data layer, proxy and CLI."""
