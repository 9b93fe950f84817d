"""The visitor's IP: the socket peer, or X-Forwarded-For when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=32)
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in trusted)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(request: Request, trusted_proxies: list[str]) -> str | None:
    """Walk X-Forwarded-For from the right, skipping trusted proxies; stop at the first other."""
    peer = request.client.host if request.client else None
    return client_ip_of(
        peer, lambda: request.headers.get("x-forwarded-for", ""), tuple(trusted_proxies)
    )


def client_ip_of(
    peer: str | None, forwarded_for: Callable[[], str], trusted_proxies: tuple[str, ...]
) -> str | None:
    """`client_ip` from the socket peer and X-Forwarded-For (read only when the peer is a
    trusted proxy)."""
    networks = _networks(trusted_proxies)
    if peer is None or not networks or not _trusted(peer, networks):
        return peer
    forwarded = forwarded_for()
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return hops[0] if hops else peer


def came_over_https(request: Request, trusted_proxies: list[str]) -> bool:
    """HTTPS to us, or to a trusted proxy that says so in X-Forwarded-Proto."""
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client else None
    networks = _networks(tuple(trusted_proxies))
    if peer is None or not networks or not _trusted(peer, networks):
        return False
    proto = request.headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
    return proto == "https"
