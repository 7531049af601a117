"""``make loadtest``: a whole market under locust, then the invariant audit.

Run as ``python -m loadtests.run_loadtest [--duration 60s] [--users N] [--spawn-rate R]``.

By default it brings up its own stack: the embedded PostgreSQL and Redis (started only if
they are not running, and then stopped at the end), a fresh database
(``JANGTEO_LOAD_DATABASE``, default ``jangteo_loadtest``, migrated, dropped at the end), an
empty Redis database, and two ``jangteo serve`` instances on free ports with rate limits
off. Locust runs headless with the users of ``loadtests/scenarios`` spread over both
instances, every user writing its records to a directory of this run. Then
``loadtests/audit.py`` checks the invariants, and the results go to
``loadtests/results/loadtest-latest.json``.

With ``JANGTEO_LOAD_HOST`` (or ``JANGTEO_LOAD_HOSTS``) set it starts nothing and loads that
server instead; the audit then reads the database only if ``JANGTEO_DATABASE_URL`` is given.
``--serve`` runs the instances with another command than ``jangteo serve`` (the suite's
proof that the audit notices lost events serves a hub that drops some on purpose).

Exit status: 0 when every invariant holds and every threshold (failure ratio, p95 per
request type, minimum requests/s) is met; 1 otherwise, naming what broke; 2 when the run
itself could not be made; 130 on Ctrl-C. Everything it started is stopped in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from loadtests import audit
from loadtests.config import LoadConfig, parse_duration
from loadtests.harness.processes import (
    BenchError,
    background,
    jangteo_command,
    run_guarded,
    stop_group,
)
from loadtests.harness.stack import create_database, execute, wait_ready, with_database
from loadtests.harness.stats import percentile
from server.embedded.process import free_port
from server.embedded.stack import EmbeddedStack
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results" / "loadtest-latest.json"
INSTANCES = 2
STOP_MARGIN = 30.0  # seconds beyond the drain that locust waits for users to finish


# -- the stack -------------------------------------------------------------------------


def start_services(cleanup: ExitStack) -> tuple[str, str, bool]:
    """PostgreSQL and Redis URLs: given ones, else the embedded stack's.

    Returns (admin database URL, Redis URL, whether Redis is the embedded one). Embedded
    services that were not running are started, and stopped when ``cleanup`` closes.
    """
    settings = Settings.from_env()
    if settings.database_url and settings.redis_url:
        return settings.database_url, settings.redis_url, False
    urls, stops = EmbeddedStack(settings.data_dir).start_owned()
    for stop in stops:
        print("started an embedded service (stopped at the end)", flush=True)
        cleanup.callback(stop)
    return (
        settings.database_url or urls.database_url,
        settings.redis_url or urls.redis_url,
        settings.redis_url is None,
    )


def fresh_database(cleanup: ExitStack, admin_url: str, name: str) -> str:
    """Create ``name`` afresh, migrate it, and drop it when ``cleanup`` closes."""
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    cleanup.callback(lambda: asyncio.run(execute(admin_url, drop)))
    return asyncio.run(create_database(admin_url, name))


def empty_redis_database(cleanup: ExitStack, redis_url: str) -> str:
    """An empty Redis database number on the embedded server (15 down to 1), flushed at the end.

    ``make run`` uses 0 and test runs pick one of 1-15; an empty one disturbs nobody.
    """
    for number in range(15, 0, -1):
        url = with_database(redis_url, str(number))
        with redis.Redis.from_url(url) as client:
            if client.dbsize() == 0:
                cleanup.callback(flush_redis, url)
                return url
    raise BenchError("no empty Redis database (1-15) on the embedded Redis")


def flush_redis(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushdb()


def start_servers(
    cleanup: ExitStack, serve: Sequence[str], database_url: str, redis_url: str, logs: Path
) -> list[str]:
    """Start the instances: ``serve`` and ``--port N`` each; the URL of each."""
    env = {
        **os.environ,
        "JANGTEO_DATABASE_URL": database_url,
        "JANGTEO_REDIS_URL": redis_url,
        "JANGTEO_JWT_SECRET": secrets.token_urlsafe(32),
        "JANGTEO_RATE_LIMITS": "off",
        "JANGTEO_ACCESS_LOG": "off",
        "JANGTEO_SHUTDOWN_TIMEOUT": "5",
    }
    ports = [free_port() for _ in range(INSTANCES)]
    for port in ports:
        command = [*serve, "--port", str(port)]
        cleanup.enter_context(background(command, env, port, logs / f"server-{port}.log"))
    for port in ports:
        wait_ready(port)
    hosts = [f"http://127.0.0.1:{port}" for port in ports]
    print(f"{shlex.join(serve)} x{INSTANCES}: {', '.join(hosts)}", flush=True)
    return hosts


# -- locust ----------------------------------------------------------------------------


def run_locust(config: LoadConfig, hosts: Sequence[str], records: Path, out: Path) -> Path:
    """Run locust headless for the configured duration; the path prefix of its stats.

    With ``config.workers`` it runs locust's distributed mode on this machine: a master
    (statistics, no users of its own) and that many worker processes running the users.
    """
    prefix = out / "locust"
    stop_timeout = config.drain + STOP_MARGIN
    locust = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py")]
    command = [
        *locust,
        "--headless", "--only-summary",
        "-u", str(config.users), "-r", str(config.spawn_rate),
        "-t", f"{config.duration:g}s",
        "--stop-timeout", f"{stop_timeout:g}",
        "--host", hosts[0],
        "--csv", str(prefix), "--json-file", str(prefix),
        "--exit-code-on-error", "0",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    workers: list[list[str]] = []
    if config.workers:
        port = free_port()
        command += [
            "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
            "--expect-workers", str(config.workers), "--expect-workers-max-wait", "60",
        ]  # fmt: skip
        # Each worker stops its own users: it needs the stop timeout as much as the master.
        worker = [
            *locust, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
            "--stop-timeout", f"{stop_timeout:g}", "--loglevel", "WARNING",
        ]  # fmt: skip
        workers = [worker] * config.workers
    env = {
        **os.environ,
        "JANGTEO_LOAD_HOST": hosts[0],
        "JANGTEO_LOAD_HOSTS": ",".join(hosts),
        "JANGTEO_LOAD_RECORDS_DIR": str(records),
        "JANGTEO_LOAD_DRAIN": f"{config.drain:g}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log = out / "locust.log"
    mode = f", {config.workers} workers under a master" if config.workers else ""
    print(
        f"locust: {config.users} users ({config.spawn_rate:g}/s) for {config.duration:g} s "
        f"over {len(hosts)} instance(s){mode}",
        flush=True,
    )
    processes: list[subprocess.Popen[bytes]] = []
    with log.open("wb") as output:
        for argv in [command, *workers]:
            processes.append(
                subprocess.Popen(  # noqa: S603 - our own command, no shell
                    argv,
                    env=env,
                    cwd=ROOT,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        code = processes[0].wait(config.duration + stop_timeout + 120)
        for worker_process in processes[1:]:  # they write their records as their users stop
            worker_process.wait(stop_timeout + 30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"locust did not finish; see {log}") from None
    finally:
        for process in processes:
            stop_group(process, timeout=10)
    if code != 0 or not Path(f"{prefix}.json").exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise BenchError(f"locust exited with {code}:\n{tail}")
    return prefix


def summarize(
    histogram: Mapping[int, int], requests: int, failures: int, seconds: float
) -> dict[str, Any]:
    return {
        "requests": requests,
        "failures": failures,
        "rps": round(requests / seconds, 2) if seconds else None,
        "p50_ms": percentile(histogram, 0.50),
        "p95_ms": percentile(histogram, 0.95),
        "p99_ms": percentile(histogram, 0.99),
    }


def read_stats(prefix: Path, seconds: float) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """Per request type and total, from locust's JSON; the most frequent errors (CSV)."""
    entries = json.loads(Path(f"{prefix}.json").read_text())
    per_type: dict[str, Any] = {}
    total: dict[int, int] = {}
    requests = failures = 0
    for entry in sorted(entries, key=lambda e: (e["method"], e["name"])):
        histogram = {int(ms): int(n) for ms, n in entry["response_times"].items()}
        for ms, n in histogram.items():
            total[ms] = total.get(ms, 0) + n
        requests += entry["num_requests"]
        failures += entry["num_failures"]
        per_type[f"{entry['method']} {entry['name']}"] = summarize(
            histogram, entry["num_requests"], entry["num_failures"], seconds
        )
    errors: list[dict[str, Any]] = []
    failures_csv = Path(f"{prefix}_failures.csv")
    if failures_csv.exists():
        with failures_csv.open() as handle:
            rows = sorted(csv.DictReader(handle), key=lambda r: -int(r.get("Occurrences", 0)))
        errors = [
            {
                "request": f"{row['Method']} {row['Name']}",
                "error": row["Error"][:300],
                "occurrences": int(row["Occurrences"]),
            }
            for row in rows[:20]
        ]
    return per_type, summarize(total, requests, failures, seconds), errors


# -- verdict ---------------------------------------------------------------------------


def threshold_failures(
    config: LoadConfig, per_type: Mapping[str, Any], total: Mapping[str, Any]
) -> list[str]:
    broken = []
    ratio = total["failures"] / total["requests"] if total["requests"] else 1.0
    if ratio > config.max_failure_ratio:
        broken.append(
            f"failure ratio {ratio:.2%} > {config.max_failure_ratio:.2%} "
            f"({total['failures']} of {total['requests']})"
        )
    for name, stats in per_type.items():
        limit = config.p95_limits.get(name, config.max_p95_ms)
        if stats["p95_ms"] is not None and stats["p95_ms"] > limit:
            broken.append(f"p95 of {name}: {stats['p95_ms']:g} ms > {limit:g} ms")
    if (total["rps"] or 0) < config.min_rps:
        broken.append(f"total {total['rps']} requests/s < {config.min_rps:g}")
    return broken


def run(config: LoadConfig, output: Path, cleanup: ExitStack, serve: Sequence[str]) -> int:
    started = dt.datetime.now(dt.UTC)
    external = bool(
        os.environ.get("JANGTEO_LOAD_HOST", "").strip()
        or os.environ.get("JANGTEO_LOAD_HOSTS", "").strip()
    )
    keep = bool(config.records_dir)
    scratch = Path(config.records_dir or tempfile.mkdtemp(prefix="jangteo-loadtest-"))
    scratch.mkdir(parents=True, exist_ok=True)
    records_dir = scratch / "records"
    records_dir.mkdir(exist_ok=True)
    database_url: str | None
    if external:
        hosts = list(config.all_hosts)
        database_url = os.environ.get("JANGTEO_DATABASE_URL", "").strip() or None
        print(f"loading {', '.join(hosts)}; database audit: {'yes' if database_url else 'no'}")
    else:
        admin_url, redis_url, embedded_redis = start_services(cleanup)
        database_url = fresh_database(cleanup, admin_url, config.database)
        if embedded_redis:
            redis_url = empty_redis_database(cleanup, redis_url)
        hosts = start_servers(cleanup, serve, database_url, redis_url, scratch)

    prefix = run_locust(config, hosts, records_dir, scratch)
    per_type, total, errors = read_stats(prefix, config.duration)
    records = audit.Records.read(records_dir)
    result = asyncio.run(audit.audit(records, database_url))
    thresholds = threshold_failures(config, per_type, total)

    report = {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": config.duration,
        "users": config.users,
        "spawn_rate": config.spawn_rate,
        "weights": config.weights,
        "locust_workers": config.workers,
        "hosts": hosts,
        "stack": "external" if external else f"own ({INSTANCES} instances, fresh database)",
        "serve": None if external else shlex.join(serve),
        "total": total,
        "per_type": per_type,
        "errors": errors,
        "ws_deliveries": records.ws_deliveries,
        "audit": {
            "database": result.database,
            "checked": result.checked,
            "invariants": list(audit.INVARIANTS),
            "broken": result.broken,
            "records": records.other,
        },
        "violations": [violation.as_json() for violation in result.violations[:200]],
        "violation_count": len(result.violations),
        "thresholds": {
            "max_failure_ratio": config.max_failure_ratio,
            "max_p95_ms": config.max_p95_ms,
            "p95_limits": config.p95_limits,
            "min_rps": config.min_rps,
            "broken": thresholds,
        },
        "passed": not result.violations and not thresholds,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    print_summary(per_type, total, records.ws_deliveries, result)
    print(f"results: {output}")
    for violation in result.violations[:50]:
        print(f"INVARIANT BROKEN {violation.invariant}: {violation.detail}")
    for broken in thresholds:
        print(f"THRESHOLD MISSED: {broken}")
    if report["passed"]:
        print("load test passed: every invariant holds, every threshold met")
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
        return 0
    names = ", ".join(result.broken + (["thresholds"] if thresholds else []))
    print(f"LOAD TEST FAILED: {names} (records and logs kept in {scratch})")
    return 1


def print_summary(
    per_type: Mapping[str, Any],
    total: Mapping[str, Any],
    deliveries: int,
    result: audit.AuditResult,
) -> None:
    print(f"\n{'request':<58} {'reqs':>7} {'fails':>6} {'rps':>7} {'p50':>6} {'p95':>6} {'p99':>6}")
    for name, stats in [*per_type.items(), ("total", total)]:

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:g}"

        print(
            f"{name[:58]:<58} {stats['requests']:>7} {stats['failures']:>6} "
            f"{stats['rps'] or 0:>7} {ms(stats['p50_ms']):>6} {ms(stats['p95_ms']):>6} "
            f"{ms(stats['p99_ms']):>6}"
        )
    checked = ", ".join(f"{key} {value}" for key, value in result.checked.items())
    print(f"\nWebSocket deliveries {deliveries}; audited {checked}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", help="e.g. 60s, 2m (default JANGTEO_LOAD_DURATION, 60s)")
    parser.add_argument("--users", type=int, help="default JANGTEO_LOAD_USERS (50)")
    parser.add_argument("--spawn-rate", type=float, help="default JANGTEO_LOAD_SPAWN_RATE (10)")
    parser.add_argument(
        "--workers",
        type=int,
        help="locust workers under a master (default JANGTEO_LOAD_WORKERS, 0)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument(
        "--serve",
        type=shlex.split,
        default=jangteo_command("serve"),
        help="the command that serves one instance, given --port N (default: jangteo serve)",
    )
    args = parser.parse_args(argv)
    try:
        config = LoadConfig.from_env()
        changes: dict[str, Any] = {}
        if args.duration:
            changes["duration"] = parse_duration(args.duration)
        if args.users:
            changes["users"] = args.users
        if args.spawn_rate:
            changes["spawn_rate"] = args.spawn_rate
        if args.workers is not None:
            changes["workers"] = args.workers
        config = replace(config, **changes)
        config.check()
    except ValueError as error:
        print(f"load test: {error}", file=sys.stderr)
        return 2
    cleanup = ExitStack()
    return run_guarded(
        "load test", lambda: run(config, args.output, cleanup, args.serve), cleanup.close,
        (BenchError,),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
