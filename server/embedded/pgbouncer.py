"""Debian's pgbouncer in session pool mode on loopback, in front of a given PostgreSQL.

It proves that jangteo works through a connection pooler (tests/system/test_pgbouncer.py).
Any database name is passed through to PostgreSQL (the ``*`` entry), so per-run test
databases need no configuration. pgbouncer refuses to run as root: as root it runs as
the unprivileged user the embedded PostgreSQL uses.
"""

from __future__ import annotations

import os
import pwd
import signal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from server.embedded.debian import ensure_binary
from server.embedded.postgres import SYSTEM_USER, _alive, _make_traversable, _run
from server.embedded.process import EmbeddedServiceError, port_accepts, wait_until

# Server connections per database and user: session mode pins one to every client
# connection, so this bounds the clients that run at once (the rest queue).
POOL_SIZE = 100
MAX_CLIENTS = 2000


class EmbeddedPgbouncer:
    """One pgbouncer with its configuration, auth, pid and log files in ``directory``."""

    def __init__(self, directory: Path, port: int, postgres_url: str) -> None:
        self.directory = directory.resolve()
        self.port = port
        self.postgres = urlsplit(postgres_url)
        self.config_path = self.directory / "pgbouncer.ini"
        self.auth_path = self.directory / "userlist.txt"
        self.pid_path = self.directory / "pgbouncer.pid"
        self.log_path = self.directory / "pgbouncer.log"

    @property
    def user(self) -> str:
        return self.postgres.username or "postgres"

    @property
    def url(self) -> str:
        """``postgres_url`` through pgbouncer: same user and database, no password."""
        return urlunsplit(self.postgres._replace(netloc=f"{self.user}@127.0.0.1:{self.port}"))

    def running_pid(self) -> int | None:
        """pgbouncer's pid when it is alive and accepting TCP connections."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) and port_accepts(self.port) else None

    def ensure_running(self) -> None:
        """Write the configuration and start pgbouncer as a daemon, unless it runs."""
        if self.running_pid() is not None:
            return
        binary = ensure_binary(["pgbouncer"], "pgbouncer")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pid_path.unlink(missing_ok=True)
        self._write_files()
        user = _system_user()
        if user is not None:
            _make_traversable(self.directory)
            entry = pwd.getpwnam(user)
            for path in (self.directory, self.config_path, self.auth_path):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        # Every client and server connection is a descriptor: the usual soft limit of
        # 1024 would cap the clients, so it is raised to the hard limit first.
        raise_limit = 'ulimit -n "$(ulimit -H -n)" && exec "$0" "$@"'
        _run(["/bin/sh", "-c", raise_limit, binary, "-d", str(self.config_path)], user)
        if not wait_until(lambda: self.running_pid() is not None, timeout=10):
            raise EmbeddedServiceError(f"pgbouncer did not start; see {self.log_path}")

    def stop(self) -> None:
        """Stop at once (SIGTERM), closing every client; a no-op when it is not running."""
        pid = self.running_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not _alive(pid), timeout=10):
            os.kill(pid, signal.SIGKILL)

    def _write_files(self) -> None:
        host, port = self.postgres.hostname or "127.0.0.1", self.postgres.port or 5432
        # Clients on loopback are trusted; the server login uses the URL's password, if any.
        self.auth_path.write_text(f'"{self.user}" "{self.postgres.password or ""}"\n')
        self.auth_path.chmod(0o600)
        self.config_path.write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            "pool_mode = session\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.auth_path}\n"
            f"admin_users = {self.user}\n"
            f"default_pool_size = {POOL_SIZE}\n"
            f"max_client_conn = {MAX_CLIENTS}\n"
            f"logfile = {self.log_path}\n"
            f"pidfile = {self.pid_path}\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )


def _system_user() -> str | None:
    """As root, the embedded PostgreSQL's unprivileged user (created when missing)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", SYSTEM_USER], None)
    return SYSTEM_USER
