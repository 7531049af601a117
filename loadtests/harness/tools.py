"""The load tools: wrk for HTTP, pgbench for PostgreSQL, each run once and parsed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.harness.processes import BenchError, as_line
from loadtests.harness.report import text_table
from loadtests.harness.stats import summary_ms
from server.embedded.postgres import POSTGRES_BIN_PATH

PGBENCH = POSTGRES_BIN_PATH / "pgbench"

# wrk prints this one line of JSON when a run ends, so nothing is scraped from its text table.
WRK_REPORT_LUA = """
local points = {1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5, 99.9, 99.99}
cdf = function(latency)
  local parts = {}
  for _, p in ipairs(points) do
    parts[#parts + 1] = string.format('[%g,%.1f]', p, latency:percentile(p))
  end
  parts[#parts + 1] = string.format('[100,%.1f]', latency.max)
  return table.concat(parts, ',')
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%.1f,"p50":%.1f,"p90":%.1f,"p99":%.1f},' ..
    '"cdf_us":[%s]}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), cdf(latency)))
end
"""


@dataclass(frozen=True, slots=True)
class Target:
    """One URL to load: which server, which endpoint, and the headers to send."""

    endpoint: str
    server: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one wrk run measured (its own latency percentiles, from its HdrHistogram)."""

    endpoint: str
    server: str
    url: str
    command: str
    requests: int
    seconds: float
    requests_per_second: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    cdf_ms: list[tuple[float, float]] = field(default_factory=list)


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise BenchError(
            "wrk is not on PATH. Install it (Debian/Ubuntu: apt-get install -y wrk) and run again."
        )
    return found


def wrk(target: Target, lua: Path, *, seconds: int, threads: int, connections: int) -> Measurement:
    """One wrk run against ``target``; ``lua`` must end with WRK_REPORT_LUA."""
    command = [wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(lua)]
    shown = list(command)
    for name, value in target.headers.items():
        command += ["-H", f"{name}: {value}"]
        secret = name.lower() == "authorization"
        shown += ["-H", f"{name}: Bearer <access token>" if secret else f"{name}: {value}"]
    command.append(target.url)
    shown.append(target.url)
    done = subprocess.run(  # noqa: S603 - wrk from PATH, no shell
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    match = re.search(r"^WRK_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    report = json.loads(match.group(1))
    elapsed = report["duration_us"] / 1e6
    return Measurement(
        endpoint=target.endpoint,
        server=target.server,
        url=target.url,
        command=as_line(shown),
        requests=report["requests"],
        seconds=round(elapsed, 3),
        requests_per_second=round(report["requests"] / elapsed, 1),
        latency_ms={name: round(value / 1000, 3) for name, value in report["latency_us"].items()},
        errors=dict(report["errors"]),
        cdf_ms=[(point, round(us / 1000, 3)) for point, us in report["cdf_us"]],
    )


def alternate(
    targets: Sequence[Target], lua: Path, *, rounds: int, warmup: int, **load: int
) -> list[list[Measurement]]:
    """Every target ``rounds`` times (each run after ``warmup`` s of unmeasured load); the
    runs of each target. Every other round goes in reverse, so no server always runs first.
    """
    runs: list[list[Measurement]] = [[] for _ in targets]
    order = list(range(len(targets)))
    for number in range(rounds):
        for index in order if number % 2 == 0 else order[::-1]:
            target = targets[index]
            print(f"round {number + 1}: wrk {target.server} GET {target.endpoint}", flush=True)
            if warmup > 0:
                wrk(target, lua, **{**load, "seconds": warmup})
            runs[index].append(wrk(target, lua, **load))
            if any(runs[index][-1].errors.values()):
                print(f"  errors: {runs[index][-1].errors}", flush=True)
    return runs


def best(runs: Sequence[Sequence[Measurement]]) -> list[Measurement]:
    """The run with the most requests/s of each target."""
    return [max(target_runs, key=lambda m: m.requests_per_second) for target_runs in runs]


def wrk_table(measurements: Sequence[Measurement], shares: Mapping[str, float]) -> str:
    """Requests/s, latencies and errors per run; jangteo's share of the endpoint's reference."""
    rows = [
        (m.endpoint, m.server, f"{m.requests_per_second:,.0f}", f"{m.latency_ms['p50']:.2f}",
         f"{m.latency_ms['p99']:.2f}", sum(m.errors.values()),
         f"{shares[m.endpoint]:.0%}" if m.server == "jangteo" else "")
        for m in measurements
    ]  # fmt: skip
    head = ("endpoint", "server", "req/s", "p50 ms", "p99 ms", "errors", "share")
    return text_table(head, rows, "llrrrrr")


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def pgbench(
    url: str, script: Path, *, clients: int, seconds: int, threads: int = 2
) -> tuple[str, dict[str, Any]]:
    """One pgbench run with prepared statements (as asyncpg sends them); its command line
    and what it reported, latencies from its per-transaction log (next to ``script``)."""
    if not PGBENCH.exists():
        raise BenchError(f"pgbench not found at {PGBENCH}")
    log_dir = script.with_suffix(f".c{clients}.log")
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    command = [
        str(PGBENCH), "-n", "-M", "prepared", "-c", str(clients), "-j", str(threads),
        "-T", str(seconds), "-l", "--log-prefix", str(log_dir / "tx"), "-f", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(  # noqa: S603 - pgbench of the embedded PostgreSQL, no shell
        command, capture_output=True, text=True, timeout=seconds + 300, check=False
    )
    output = done.stdout + done.stderr
    processed = _number(r"^number of transactions actually processed: (\d+)", output)
    tps = _number(r"^tps = ([\d.]+) \(without initial connection time\)", output)
    if processed is None or tps is None:
        raise BenchError(f"pgbench failed ({done.returncode}):\n{output[-3000:]}")
    latencies: list[float] = []
    for log in log_dir.glob("tx*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]) / 1e6)
    return shlex.join(command).replace(url, "<url>"), {
        "clients": clients,
        "seconds": seconds,
        "transactions": int(processed),
        "failed": int(_number(r"^number of failed transactions: (\d+)", output) or 0),
        "aborted_clients": len(re.findall(r"client \d+ aborted", output)),
        "tps": round(tps, 1),
        "latency_ms": summary_ms(latencies),
        "latency_avg_ms": _number(r"^latency average = ([\d.]+) ms", output),
        "initial_connection_ms": _number(r"^initial connection time = ([\d.]+) ms", output),
        "exit_code": done.returncode,
        "errors": [line for line in output.splitlines() if "error" in line.lower()][:5],
    }
