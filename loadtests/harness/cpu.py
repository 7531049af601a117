"""Where the machine's CPU went during a measurement: cores used per group of processes.

Every process's CPU time (user + system, from psutil) is read at two moments; the
difference over the wall time between them is the cores it used. Processes are grouped:
the ones a benchmark names by pid (its servers, its load clients, the Redis under test),
PostgreSQL backends by the database in their process title (or by pid, named from
``pg_stat_activity``: ``backend_groups``), other Redis servers, this process, and the rest
as "other: <name>".
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import psutil

from loadtests.harness.results import load_average

CLIENT = "client (this process)"
OTHER = "other: "


class CpuMeter:
    """CPU seconds per group of processes (servers, PostgreSQL, Redis, clients, other).

    PostgreSQL is shared with whatever else uses the embedded services: its backends are
    told apart by the database in their process title, and within the benchmark's
    database by ``groups`` (pids named from pg_stat_activity, see ``backend_groups``).
    """

    def __init__(self, groups: Mapping[int, str], database: str, redis: str = "redis") -> None:
        self.database = database
        self.redis = redis  # the group of Redis servers not named in ``groups``
        self.groups = dict(groups)
        self.groups[os.getpid()] = CLIENT
        self.mark = self._sample()
        self.wall = time.monotonic()
        psutil.cpu_percent(None)

    def _group(self, pid: int, name: str, cmdline: Sequence[str]) -> str:
        if pid in self.groups:
            return self.groups[pid]
        if name.startswith("postgres"):  # "postgres: user database host state"
            title = (cmdline[0] if cmdline else "").split()
            if len(title) < 4 or not title[3].endswith((")", "[local]")):  # io worker 1, ...
                return "postgres (background)"
            if title[2] == self.database:
                return "postgres (bench database)"
            return f"{OTHER}postgres backends of other databases"
        if name.startswith("redis"):
            return self.redis
        if "-m" in cmdline[:-1]:  # python -m loadtests, -m pytest ...
            return f"{OTHER}{name} -m {cmdline[cmdline.index('-m') + 1]}"
        return f"{OTHER}{name}"

    def _sample(self) -> dict[int, tuple[str, float]]:
        sample = {}
        for process in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
            info = process.info
            if info["cpu_times"] is not None:
                group = self._group(info["pid"], info["name"] or "?", info["cmdline"] or [])
                sample[info["pid"]] = (group, info["cpu_times"].user + info["cpu_times"].system)
        return sample

    def read(self, top: int = 8) -> dict[str, Any]:
        """Cores used per group since the last read (the ``top`` busiest groups)."""
        now, wall = self._sample(), time.monotonic()
        span = max(1e-9, wall - self.wall)
        used: dict[str, float] = {}
        for pid, (group, seconds) in now.items():
            # A process not seen last time started since: all its CPU time is in the span.
            used[group] = used.get(group, 0.0) + seconds - self.mark.get(pid, (group, 0.0))[1]
        self.mark, self.wall = now, wall
        busiest = sorted(used.items(), key=lambda item: -item[1])[:top]
        cores = {group: round(s / span, 3) for group, s in busiest if s / span >= 0.005}
        busy = psutil.cpu_percent(None)
        # Processes that ended in between (CI set-ups, short commands) show only here.
        unseen = busy / 100 * (os.cpu_count() or 1) - sum(used.values()) / span
        others = sum(v for group, v in used.items() if group.startswith(OTHER)) / span
        return {
            "machine_cpu_percent": busy,
            "cores_used": cores,
            "cores_used_by_processes_gone": round(max(0.0, unseen), 3),
            "cores_used_by_others": round(others + max(0.0, unseen), 3),
            "load_average": load_average(),
        }


def listening_pid(port: int) -> int | None:
    """The pid of the local process listening on TCP ``port`` (None: none, or not ours to
    see)."""
    try:
        found = psutil.net_connections("tcp")
    except psutil.AccessDenied:
        return None
    for conn in found:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return None if conn.pid is None else int(conn.pid)
    return None


async def backend_groups(
    conn: asyncpg.Connection, names: Mapping[str, str], otherwise: str
) -> dict[int, str]:
    """The pids of the current database's backends, each named by the first entry of
    ``names`` (an application_name prefix -> group) its application_name starts with,
    else ``otherwise``."""
    rows = await conn.fetch(
        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()"
    )
    groups = {}
    for row in rows:
        application = row["application_name"] or ""
        prefix = next((p for p in names if application.startswith(p)), None)
        groups[int(row["pid"])] = otherwise if prefix is None else names[prefix]
    return groups
