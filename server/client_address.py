"""The caller's address, seen through the reverse proxies jangteo is told to trust."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: Sequence[str]) -> tuple[Network, ...]:
    """``10.0.0.0/8``, ``127.0.0.1`` ... as networks; raises ValueError on a bad one."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(request: web.Request, trusted: Sequence[Network]) -> str:
    """The peer's address, or, when the peer is a trusted proxy, the nearest untrusted hop
    of ``X-Forwarded-For`` (the rightmost entries were added by proxies we trust; anything
    left of the first untrusted one could have been written by the client itself)."""
    peer = request.remote or "unknown"
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
    for hop in reversed([hop for hop in hops if hop]):
        if not _trusted(hop, trusted):
            return hop
    return peer
