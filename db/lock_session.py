"""Sessions that hold a leadership lock (an advisory lock on a connection of its own).

The session must end, and the lock with it, when its holder stays silent or unreachable
for ``timeout``: the server ends it when it stays idle that long, or when TCP keepalives
or ``tcp_user_timeout`` find the peer gone; the holder's own socket gets the same
keepalives, so a holder waiting on a dead server notices too.
"""

from __future__ import annotations

import socket
from typing import Any

import asyncpg


def lock_session_settings(application_name: str, timeout: float) -> dict[str, str]:
    """Server-side settings of a lock session (its application name says whose it is)."""
    timeout_ms = int(timeout * 1000)
    idle, interval, count = _keepalive(timeout)
    return {
        "application_name": application_name,
        "statement_timeout": "0",  # the wait for the lock may last
        "idle_session_timeout": str(timeout_ms),
        "tcp_keepalives_idle": str(idle),
        "tcp_keepalives_interval": str(interval),
        "tcp_keepalives_count": str(count),
        "tcp_user_timeout": str(timeout_ms),
    }


def _keepalive(timeout: float) -> tuple[int, int, int]:
    """Keepalive idle, interval and count (whole seconds) that give up within ``timeout``."""
    interval = max(1, int(timeout // 4))
    return interval, interval, max(1, int(timeout // interval) - 1)


def set_socket_keepalive(conn: asyncpg.Connection, timeout: float) -> None:
    """The client's side of the same rules, on the lock connection's socket."""
    transport: Any = getattr(conn, "_transport", None)  # asyncpg exposes no socket options
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket has no peer to lose
    idle, interval, count = _keepalive(timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeout * 1000))
