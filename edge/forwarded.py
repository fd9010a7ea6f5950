"""The client's real address behind a trusted reverse proxy (nginx, a load balancer)."""

from __future__ import annotations

import ipaddress

from edge.asgi import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: list[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def real_client(scope: Scope, networks: tuple[Network, ...]) -> None:
    """Rewrite `scope["client"]` from X-Forwarded-For, only when the peer is a trusted proxy.

    The right-most address that is not itself a trusted proxy is the client: anything left of it was
    written by the client and cannot be believed.
    """
    client = scope.get("client")
    if not client or not _trusted(client[0], networks):
        return
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            hops = [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
            for hop in reversed(hops):
                if not _trusted(hop, networks):
                    try:
                        ipaddress.ip_address(hop)
                    except ValueError:
                        return
                    scope["client"] = (hop, client[1])
                    return
            return
