"""Sessions that hold a leadership lock (an advisory lock on a connection of its own).

The session must end, and the lock with it, when its holder stays silent or unreachable
for ``timeout``: the server ends it when it stays idle that long, or when TCP keepalives
or ``tcp_user_timeout`` find the peer gone; the holder's own socket gets the same
keepalives, so a holder waiting on a dead server notices too.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import asyncpg

IN_LINE_POLL_S = 0.1  # how often a session in line asks for the lock
# Sessions in line for a lock: others holding its shared "in line" lock.
IN_LINE = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = 2 AND granted
  AND mode = 'ShareLock' AND pid <> pg_backend_pid()
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def lock_session_settings(application_name: str, timeout: float) -> dict[str, str]:
    """Server-side settings of a lock session (its application name says whose it is)."""
    timeout_ms = int(timeout * 1000)
    idle, interval, count = _keepalive(timeout)
    return {
        "application_name": application_name,
        "statement_timeout": "0",  # its holder times each statement itself
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


async def take_when_free(
    conn: asyncpg.Connection,
    lock: tuple[int, int],
    *,
    keep_waiting: Callable[[], bool],
    in_line: tuple[int, int] | None = None,
    poll_s: float = IN_LINE_POLL_S,
    statement_timeout: float | None = None,
) -> bool:
    """Take the session advisory lock ``lock`` on ``conn`` once it is free; False if
    ``keep_waiting()`` turns false first.

    It asks with ``pg_try_advisory_lock`` every ``poll_s`` instead of waiting inside
    ``pg_advisory_lock``: a statement keeps its snapshot while it waits for a lock, and a
    snapshot kept for as long as a leader lives holds the xmin horizon of the whole
    database back. Then no dead row version anywhere is cleaned up, not even marked dead
    in its index, and a hot row's versions pile up for every reader to walk through.
    Meanwhile it holds ``in_line`` (a shared advisory lock): how a holder sees who waits
    (``waiting_in_line``).
    """
    if in_line is not None:
        await conn.execute(
            "SELECT pg_advisory_lock_shared($1, $2)", *in_line, timeout=statement_timeout
        )
    try:
        while keep_waiting():
            if await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", *lock, timeout=statement_timeout
            ):
                return True
            await asyncio.sleep(poll_s)
        return False
    finally:
        if in_line is not None and not conn.is_closed():
            await conn.execute(
                "SELECT pg_advisory_unlock_shared($1, $2)", *in_line, timeout=statement_timeout
            )


async def waiting_in_line(
    conn: asyncpg.Connection, in_line: tuple[int, int], statement_timeout: float | None = None
) -> int:
    """Sessions other than this one that wait (``take_when_free``) with ``in_line``."""
    count: int = await conn.fetchval(IN_LINE, *in_line, timeout=statement_timeout)
    return count
