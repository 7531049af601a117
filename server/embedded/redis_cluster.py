"""A local Redis Cluster: three masters and three replicas on loopback, from Debian's
``redis-server`` 7 (the wheel's single server stays the default; sharded pub/sub needs 7).

Each node is a daemon with its own directory, pid, log and ``nodes.conf``; the cluster
is created once with ``redis-cli --cluster create`` and comes back by itself after a
restart (the nodes remember it in ``nodes.conf``). ``node-timeout`` is short so that a
killed master's replica takes over within seconds, which is what the failover tests and
a developer's experiments want.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from server.embedded.debian import ensure_binary
from server.embedded.process import EmbeddedServiceError, port_accepts, wait_until

MASTERS = 3
REPLICAS_PER_MASTER = 1
NODES = MASTERS * (1 + REPLICAS_PER_MASTER)
NODE_TIMEOUT_MS = 2000


def redis_cluster_binaries() -> tuple[str, str]:
    """Debian's redis-server and redis-cli (package redis-server, which pulls redis-tools)."""
    server = ensure_binary(["redis-server"], "redis-server")
    cli = ensure_binary(["redis-cli"], "redis-tools")
    return server, cli


class ClusterNode:
    """One redis-server of the cluster."""

    def __init__(self, directory: Path, port: int, bus_port: int) -> None:
        self.directory = directory.resolve()
        self.port = port
        self.bus_port = bus_port  # chosen, not port + 10000, which may be taken or too high
        self.pid_path = self.directory / "redis.pid"
        self.log_path = self.directory / "redis.log"

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid if port_accepts(self.port) else None

    def start(self, server: str) -> None:
        if self.running_pid() is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pid_path.unlink(missing_ok=True)
        command = [
            server,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--daemonize", "yes",
            "--pidfile", str(self.pid_path),
            "--logfile", str(self.log_path),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--maxclients", "20000",
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", str(self.directory / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica may always take over (the tests kill masters on purpose).
            "--cluster-replica-validity-factor", "0",
            # Reads and writes of the healthy masters go on while one shard is down.
            "--cluster-require-full-coverage", "no",
            "--cluster-allow-reads-when-down", "yes",
        ]  # fmt: skip
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, timeout=30)  # noqa: S603

    def stop(self, sig: int = signal.SIGTERM) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        os.kill(pid, sig)
        if not wait_until(lambda: self.running_pid() is None, timeout=10):
            os.kill(pid, signal.SIGKILL)


class EmbeddedRedisCluster:
    """Six nodes under ``directory``, on the (client, bus) ports given."""

    def __init__(self, directory: Path, ports: list[tuple[int, int]]) -> None:
        if len(ports) != NODES:
            raise ValueError(f"a cluster of {MASTERS} masters needs {NODES} pairs of ports")
        self.directory = directory.resolve()
        self.nodes = [
            ClusterNode(self.directory / f"node-{port}", port, bus) for port, bus in ports
        ]

    @property
    def url(self) -> str:
        """Any node will do: clients read the whole topology from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def running_pid(self) -> int | None:
        """The first node's pid while every node runs, else None (as the other services)."""
        pids = [node.running_pid() for node in self.nodes]
        return pids[0] if all(pids) else None

    def ensure_running(self) -> None:
        server, cli = redis_cluster_binaries()
        for node in self.nodes:
            node.start(server)
        if not wait_until(lambda: all(n.running_pid() for n in self.nodes), timeout=10):
            raise EmbeddedServiceError(f"a cluster node did not start; see {self.directory}")
        if not self._created(cli):
            self._create(cli)
        if not wait_until(lambda: self._healthy(cli), timeout=30, interval=0.2):
            raise EmbeddedServiceError(
                f"the Redis cluster did not become healthy; see {self.directory}"
            )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def _cli(self, cli: str, *args: str, port: int | None = None) -> str:
        done = subprocess.run(  # noqa: S603
            [cli, "-h", "127.0.0.1", "-p", str(port or self.nodes[0].port), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout + done.stderr

    def _created(self, cli: str) -> bool:
        return "cluster_slots_assigned:16384" in self._cli(cli, "CLUSTER", "INFO")

    def _create(self, cli: str) -> None:
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        said = self._cli(
            cli,
            "--cluster", "create", *addresses,
            "--cluster-replicas", str(REPLICAS_PER_MASTER),
            "--cluster-yes",
        )  # fmt: skip
        if "[OK] All 16384 slots covered" not in said:
            raise EmbeddedServiceError(f"redis-cli --cluster create failed:\n{said[-2000:]}")

    def _healthy(self, cli: str) -> bool:
        """Every node sees the cluster ok, and knows every master with its replica in sync
        (a restarted node rejoins as a replica; the others must have heard of it)."""
        for node in self.nodes:
            if "cluster_state:ok" not in self._cli(cli, "CLUSTER", "INFO", port=node.port):
                return False
            lines = [
                line.split()
                for line in self._cli(cli, "CLUSTER", "NODES", port=node.port).splitlines()
                if line.strip()
            ]
            masters = [line for line in lines if "master" in line[2] and "fail" not in line[2]]
            replicas = [line for line in lines if "slave" in line[2] and "fail" not in line[2]]
            if not (
                len(masters) == MASTERS
                and len(replicas) == MASTERS * REPLICAS_PER_MASTER
                and {line[3] for line in replicas} == {line[0] for line in masters}
                and all(line[7] == "connected" for line in lines)
            ):
                return False
        return True
