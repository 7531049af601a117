"""Typed result records: what was measured, on which machine, with which versions.

Every benchmark returns a ``Result`` subclass; ``save`` writes it as
``loadtests/results/<name>.json`` (the record's fields, the benchmark's own figures at the
top level) and its plot as ``<name>.png``. ``harness.report`` reads those files back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform as host
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import redis

from loadtests.harness.processes import RESULTS, as_line
from loadtests.harness.report import pyplot
from loadtests.harness.stack import connected

PACKAGES = (
    "aiohttp", "asyncpg", "uvloop", "orjson", "redis", "hiredis", "psutil", "fastapi",
    "uvicorn", "httptools", "python-socketio", "websocket-client", "locust",
)  # fmt: skip


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return host.processor() or "unknown"


@dataclass(slots=True)
class Machine:
    """What a result was measured on, and how busy the machine was before and after."""

    load_average_before: list[float] = field(default_factory=load_average)
    load_average_after: list[float] = field(default_factory=list)
    cores: int | None = field(default_factory=os.cpu_count)
    cpu: str = field(default_factory=cpu_model)
    platform: str = field(default_factory=host.platform)
    python: str = field(default_factory=host.python_version)
    open_files_limit: list[int] | None = None
    other_benchmarks_or_tests_before: list[str] | None = None
    other_benchmarks_or_tests_after: list[str] | None = None


def other_load(watched: tuple[str, ...] = ("loadtests", "pytest")) -> list[str]:
    """Command lines of other benchmarks and test runs on the machine right now."""
    mine = {os.getpid(), *(child.pid for child in psutil.Process().children(recursive=True))}
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if process.info["pid"] not in mine and any(word in line for word in watched):
            found.append(f"{process.info['pid']} {line[:160]}")
    return found


async def versions(database_url: str | None = None, redis_url: str | None = None) -> dict[str, str]:
    """Versions of every package on either side of a comparison, wrk, and the servers."""
    found = {"python": host.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    found["wrk"] = wrk_version()
    if database_url is not None:
        async with connected(database_url) as conn:
            found["postgresql"] = str(await conn.fetchval("SHOW server_version"))
            commit_timestamps = await conn.fetchval("SHOW track_commit_timestamp")
            found["postgresql_track_commit_timestamp"] = str(commit_timestamps)
    if redis_url is not None:
        with redis.Redis.from_url(redis_url) as client:
            found["redis_server"] = str(client.info("server")["redis_version"])
    return found


def wrk_version() -> str:
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        return "absent"
    done = subprocess.run([wrk_path, "-v"], capture_output=True, text=True, check=False)  # noqa: S603
    return (done.stdout + done.stderr).split("\n", 1)[0].strip()


@dataclass(kw_only=True, slots=True)
class Result:
    """The fields every result file has; subclasses add the benchmark's figures."""

    benchmark: str
    machine: Machine
    versions: dict[str, str]
    load: dict[str, Any]
    commands: dict[str, Any]
    date: str = field(default_factory=now)

    def failures(self) -> list[str]:
        """What went wrong (invariants, correctness): the run then exits non-zero."""
        return []

    def table(self) -> str:
        """The figures as printed when the run ends."""
        return ""

    def plot(self, plt: Any, path: Path) -> None:
        """Draw the figure to ``path`` with matplotlib's ``plt``."""

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["machine"] = {k: v for k, v in data["machine"].items() if v is not None}
        return data


def save(result: Result, results: Path = RESULTS, name: str = "") -> int:
    """Print the table, write the JSON and the plot (``results/<name>``, by default the
    benchmark's name); 1 when the result names failures."""
    name = name or result.benchmark
    result.machine.load_average_after = load_average()
    print()
    print(result.table())
    results = results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    json_path = results / f"{name}.json"
    json_path.write_text(json.dumps(result.as_json(), indent=2, default=str) + "\n")
    print(f"\nwrote {as_line(json_path)}")
    plt, png_path = pyplot(), results / f"{name}.png"
    if plt is None:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    else:
        result.plot(plt, png_path)
        print(f"wrote {as_line(png_path)}")
    failed = result.failures()
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
