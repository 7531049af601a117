"""What the pgbouncer tests ask of pgbouncer's admin console and of PostgreSQL."""

from __future__ import annotations

import csv
import io
import subprocess

import asyncpg

from server.embedded.pgbouncer import EmbeddedPgbouncer
from server.embedded.postgres import POSTGRES_BIN_PATH


def show(bouncer: EmbeddedPgbouncer, what: str) -> list[dict[str, str]]:
    """The rows of ``SHOW <what>`` on the admin console (which speaks only the simple
    query protocol, that asyncpg does not use for queries with results: psql asks)."""
    psql = str(POSTGRES_BIN_PATH / "psql")
    address = ["-h", "127.0.0.1", "-p", str(bouncer.port), "-U", bouncer.user, "-d", "pgbouncer"]
    command = [psql, "-X", "--csv", *address, "-c", f"SHOW {what}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    return list(csv.DictReader(io.StringIO(done.stdout)))


def server_pids(bouncer: EmbeddedPgbouncer) -> dict[int, str]:
    """PostgreSQL backends that are pgbouncer's server connections: pid to application_name."""
    return {int(row["remote_pid"]): row["application_name"] for row in show(bouncer, "SERVERS")}


async def app_backends(db: asyncpg.Connection) -> dict[int, str]:
    """This database's backends opened by jangteo processes: pid to application_name."""
    rows = await db.fetch(
        "SELECT pid, application_name FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'jangteo%'"
    )
    return {row["pid"]: row["application_name"] for row in rows}
