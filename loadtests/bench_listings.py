"""Benchmark of listing reads: cached against a bare aiohttp handler, uncached against pgbench.

Run as ``python -m loadtests.bench_listings``. In one run, on one machine:

- cached ``GET /listings/{id}`` and ``GET /listings?region=...`` (first page) against a bare
  aiohttp app sending the same bytes, both with 2 processes, loaded by wrk;
- uncached ones (``JANGTEO_CACHE=off``, random ids) against pgbench running the same SELECT
  with as many connections as jangteo's two pools hold.

Results go to ``loadtests/results/listings.json`` and ``listings.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from db.migrate import migrate
from db.queries.listings import LISTING_SELECT, FeedFilter, feed_sql
from loadtests.bench_http import (
    RESULTS,
    WRK_REPORT_LUA,
    BenchError,
    Measurement,
    Target,
    background,
    fetch,
    jangteo_command,
    machine,
    run_checked,
    wrk,
)
from server.embedded.postgres import POSTGRES_BIN_PATH
from server.embedded.process import free_port
from server.seed import seed
from server.settings import Settings

WORKERS = 2
POOL_MAX = 8  # per worker: pgbench gets WORKERS * POOL_MAX connections
LISTINGS = 2000
REGION = "seoul-mapo"
DATABASE = "jangteo_bench_listings"

RANDOM_ID_LUA = """
request = function()
  return wrk.format("GET", "/api/v1/listings/" .. math.random(1, %d))
end
"""


def _database_url(admin_url: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{DATABASE}", "", ""))


async def _fresh_database(admin_url: str) -> str:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    url = _database_url(admin_url)
    await migrate(url)
    await seed(Settings(database_url=url), users=60, listings=LISTINGS, if_empty=False)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return url


def _pgbench(database_url: str, script: str, seconds: int, clients: int) -> dict[str, float]:
    """pgbench with prepared statements (as asyncpg uses them); its transactions per second."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script)
        path = handle.name
    os.chmod(path, 0o644)
    command = [
        str(POSTGRES_BIN_PATH / "pgbench"), "-n", "-M", "prepared", "-c", str(clients),
        "-j", str(WORKERS), "-T", str(seconds), "-f", path, database_url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    os.unlink(path)
    tps = re.search(r"tps = ([\d.]+)", done.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    if done.returncode != 0 or tps is None:
        raise BenchError(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
    return {
        "tps": round(float(tps.group(1)), 1),
        "latency_avg_ms": float(latency.group(1)) if latency else -1.0,
    }


def _pgbench_script(sql: str, params: list[object]) -> str:
    """``sql`` with $n replaced by pgbench literals; $1 of a detail query is a random id."""
    text = " ".join(sql.split())
    for index in range(len(params), 0, -1):
        value = params[index - 1]
        literal = (
            ":id" if value is None else repr(value) if isinstance(value, int) else f"'{value}'"
        )
        text = text.replace(f"${index}", str(literal))
    return f"\\set id random(1, {LISTINGS})\n{text};\n"


def _serve_env(base: Mapping[str, str], database_url: str, cache: bool) -> dict[str, str]:
    return {
        **base,
        "JANGTEO_DATABASE_URL": database_url,
        "JANGTEO_RATE_LIMITS": "off",
        "JANGTEO_ACCESS_LOG": "off",
        "JANGTEO_LOG_LEVEL": "WARNING",
        "JANGTEO_PG_POOL_MAX": str(POOL_MAX),
        "JANGTEO_CACHE": "on" if cache else "off",
    }


def run(args: argparse.Namespace) -> int:
    load_before = [round(value, 2) for value in os.getloadavg()]
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        print("bench_listings: wrk is not on PATH (apt-get install -y wrk)", file=sys.stderr)
        return 2
    env = {key: value for key, value in os.environ.items() if not key.startswith("JANGTEO_")}
    env["JANGTEO_DATA_DIR"] = os.environ.get("JANGTEO_DATA_DIR", ".data")
    exports = run_checked(jangteo_command("services", "start"), env)
    urls = dict(re.findall(r"export (JANGTEO_\w+)=(\S+)", exports))
    env.update(urls)
    database_url = asyncio.run(_fresh_database(urls["JANGTEO_DATABASE_URL"]))
    work = Path(tempfile.mkdtemp(prefix="bench-listings-"))
    report_lua = work / "report.lua"
    report_lua.write_text(WRK_REPORT_LUA)
    random_lua = work / "random.lua"
    random_lua.write_text(RANDOM_ID_LUA % LISTINGS + WRK_REPORT_LUA)
    hot_id = LISTINGS // 2
    detail_path = f"/api/v1/listings/{hot_id}"
    feed_path = f"/api/v1/listings?region={REGION}"
    load = {"seconds": args.seconds, "threads": 2, "connections": args.connections}
    measurements: list[Measurement] = []
    pgbench: dict[str, dict[str, float]] = {}
    commands: dict[str, str] = {}

    cached_port, baseline_port, uncached_port = free_port(), free_port(), free_port()
    serve = jangteo_command("serve", "--workers", str(WORKERS), "--port")
    with background(
        [*serve, str(cached_port)], _serve_env(env, database_url, True), cached_port,
        work / "cached.log",
    ):  # fmt: skip
        detail_body = fetch(cached_port, detail_path)
        feed_body = fetch(cached_port, feed_path)
        (work / "detail.json").write_bytes(detail_body)
        (work / "feed.json").write_bytes(feed_body)
        baseline = [
            sys.executable, "-m", "loadtests.baseline_app", "--port", str(baseline_port),
            "--processes", str(WORKERS), "--route", f"/detail={work / 'detail.json'}",
            "--route", f"/feed={work / 'feed.json'}",
        ]  # fmt: skip
        commands["baseline"] = " ".join(baseline)
        with background(baseline, env, baseline_port, work / "baseline.log"):
            for endpoint, server, port, path in (
                ("cached detail", "jangteo", cached_port, detail_path),
                ("cached detail", "baseline", baseline_port, "/detail"),
                ("cached feed", "jangteo", cached_port, feed_path),
                ("cached feed", "baseline", baseline_port, "/feed"),
            ):
                fetch(port, path)  # warms the cache
                target = Target(endpoint, server, f"http://127.0.0.1:{port}{path}")
                measurements.append(wrk(wrk_path, target, report_lua, **load))
    with background(
        [*serve, str(uncached_port)], _serve_env(env, database_url, False), uncached_port,
        work / "uncached.log",
    ):  # fmt: skip
        measurements.append(
            wrk(
                wrk_path,
                Target("uncached detail", "jangteo", f"http://127.0.0.1:{uncached_port}/"),
                random_lua,
                **load,
            )
        )
        measurements.append(
            wrk(
                wrk_path,
                Target("uncached feed", "jangteo", f"http://127.0.0.1:{uncached_port}{feed_path}"),
                report_lua,
                **load,
            )
        )
    clients = WORKERS * POOL_MAX
    detail_script = _pgbench_script(LISTING_SELECT + " WHERE l.id = $1", [None])
    feed_query, feed_params = feed_sql(FeedFilter(region=REGION), 20 + 1)
    feed_script = _pgbench_script(feed_query, feed_params)
    pgbench["uncached detail"] = _pgbench(database_url, detail_script, args.seconds, clients)
    pgbench["uncached feed"] = _pgbench(database_url, feed_script, args.seconds, clients)
    commands["pgbench"] = f"pgbench -n -M prepared -c {clients} -j {WORKERS} -T {args.seconds}"
    commands["jangteo"] = " ".join([*serve, "<port>"]) + f" (JANGTEO_PG_POOL_MAX={POOL_MAX})"

    shares = _shares(measurements, pgbench)
    print(_table(measurements, pgbench, shares))
    results = {
        "benchmark": "listings",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(load_before),
        "load": {**load, "processes_per_server": WORKERS, "pgbench_clients": clients},
        "commands": commands,
        "results": [asdict(m) for m in measurements],
        "pgbench": pgbench,
        "shares": shares,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "listings.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(measurements, pgbench, shares, RESULTS / "listings.png")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _shares(
    measurements: list[Measurement], pgbench: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    rps = {(m.endpoint, m.server): m.requests_per_second for m in measurements}
    shares = {}
    for endpoint in dict.fromkeys(m.endpoint for m in measurements):
        ours = rps[(endpoint, "jangteo")]
        reference = rps.get((endpoint, "baseline")) or pgbench[endpoint]["tps"]
        shares[endpoint] = round(ours / reference, 3)
    return shares


def _table(
    measurements: list[Measurement],
    pgbench: Mapping[str, Mapping[str, float]],
    shares: Mapping[str, float],
) -> str:
    lines = [f"{'endpoint':<17}{'server':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'share':>8}"]
    for m in measurements:
        share = f"{shares[m.endpoint]:.0%}" if m.server == "jangteo" else ""
        lines.append(
            f"{m.endpoint:<17}{m.server:<10}{m.requests_per_second:>10,.0f}"
            f"{m.latency_ms['p50']:>9.2f}{m.latency_ms['p99']:>9.2f}{share:>8}"
        )
    for endpoint, result in pgbench.items():
        lines.append(f"{endpoint:<17}{'pgbench':<10}{result['tps']:>10,.0f}")
    return "\n".join(lines)


def _plot(
    measurements: list[Measurement],
    pgbench: Mapping[str, Mapping[str, float]],
    shares: Mapping[str, float],
    path: Path,
) -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    endpoints = list(dict.fromkeys(m.endpoint for m in measurements))
    ours = {m.endpoint: m.requests_per_second for m in measurements if m.server == "jangteo"}
    reference = {m.endpoint: m.requests_per_second for m in measurements if m.server != "jangteo"}
    reference.update({endpoint: result["tps"] for endpoint, result in pgbench.items()})
    figure, axes = plt.subplots(figsize=(8, 4.4), dpi=120)
    width = 0.38
    xs = range(len(endpoints))
    bars = axes.bar([x - width / 2 for x in xs], [ours[e] for e in endpoints], width,
                    label="jangteo", color="#d9534f")  # fmt: skip
    base = axes.bar([x + width / 2 for x in xs], [reference[e] for e in endpoints], width,
                    label="baseline (bare aiohttp / pgbench)", color="#7f8c8d")  # fmt: skip
    axes.bar_label(bars, labels=[f"{shares[e]:.0%}" for e in endpoints], fontsize=9, padding=2)
    axes.bar_label(base, labels=[f"{reference[e]:,.0f}" for e in endpoints], fontsize=8)
    axes.set_xticks(list(xs), endpoints)
    axes.set_ylabel("requests (or transactions) / s")
    axes.set_title(
        f"listing reads, {WORKERS} processes; cached vs bare aiohttp, uncached vs pgbench",
        fontsize=10,
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    started = time.monotonic()
    code = run(parser.parse_args(argv))
    print(f"done in {time.monotonic() - started:.0f} s")
    sys.exit(code)


if __name__ == "__main__":
    main()
