"""The caller's address, seen through the reverse proxies jangteo is told to trust."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from aiohttp import web

from server.errors import BadRequest

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


# What a Host may look like: a name or address, an optional port; nothing that breaks a URL.
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")


def _nearest(header: str | None) -> str:
    """The value the nearest proxy added: the last entry of a comma-separated header."""
    return (header or "").rsplit(",", 1)[-1].strip()


def request_origin(request: web.Request, trusted: Sequence[Network]) -> str:
    """``scheme://host`` as the client reached us, for absolute URLs handed back to it.

    Behind a trusted proxy its ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` win (TLS often
    ends at the proxy); from anyone else those headers are ignored.
    """
    scheme, host = request.scheme, request.host
    peer = request.remote or ""
    if trusted and _trusted(peer, trusted):
        proto = _nearest(request.headers.get("X-Forwarded-Proto")).lower()
        if proto in ("http", "https"):
            scheme = proto
        forwarded_host = _nearest(request.headers.get("X-Forwarded-Host"))
        if forwarded_host and _HOST.match(forwarded_host):
            host = forwarded_host
    if not _HOST.match(host):
        raise BadRequest("the Host header is not a host name")
    return f"{scheme}://{host}"
