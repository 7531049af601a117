"""Benchmark of listing reads against their references, all in one run on one machine.

Run as ``python -m loadtests.bench_listings``:

- cached ``GET /listings/{id}`` and ``GET /listings?region=...`` (first page) against a bare
  aiohttp app sending the same bytes, both with 2 processes, loaded by wrk;
- uncached ``GET /listings/{id}`` (``JANGTEO_CACHE=off``, random ids) against a bare
  aiohttp + asyncpg handler and FastAPI + uvicorn + asyncpg running the same SELECT, each
  with 2 processes and pools of 8, loaded with four client connections per pooled one, in
  alternating rounds; the uncached feed page; pgbench running both SELECTs as the ceiling.

Results go to ``loadtests/results/listings.json``, ``listings.png`` (throughput) and
``listings-cdf.png`` (a latency CDF per read benchmark).
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
    versions,
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
    uncached_rounds = _uncached_rounds(
        args, env, database_url, work, wrk_path, random_lua, load, commands
    )
    measurements += [max(runs, key=lambda m: m.requests_per_second) for runs in uncached_rounds]
    with background(
        [*serve, str(uncached_port)], _serve_env(env, database_url, False), uncached_port,
        work / "uncached.log",
    ):  # fmt: skip
        target = Target("uncached feed", "jangteo", f"http://127.0.0.1:{uncached_port}{feed_path}")
        measurements.append(wrk(wrk_path, target, report_lua, **load))
    clients = WORKERS * POOL_MAX
    detail_script = _pgbench_script(LISTING_SELECT + " WHERE l.id = $1", [None])
    feed_query, feed_params = feed_sql(FeedFilter(region=REGION), 20 + 1)
    feed_script = _pgbench_script(feed_query, feed_params)
    pgbench["uncached detail"] = _pgbench(database_url, detail_script, args.seconds, clients)
    pgbench["uncached feed"] = _pgbench(database_url, feed_script, args.seconds, clients)
    commands["pgbench"] = f"pgbench -n -M prepared -c {clients} -j {WORKERS} -T {args.seconds}"
    commands["jangteo"] = " ".join([*serve, "<port>"]) + f" (JANGTEO_PG_POOL_MAX={POOL_MAX})"

    shares = _shares(measurements, pgbench)
    uncached = _uncached_ratios(measurements)
    print(_table(measurements, pgbench, shares))
    print(", ".join(f"{name} {value}" for name, value in uncached.items()))
    results = {
        "benchmark": "listings",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(load_before),
        "versions": versions(),
        "load": {
            **load,
            "processes_per_server": WORKERS,
            "pool_per_process": POOL_MAX,
            "pgbench_clients": clients,
            "rounds": args.rounds,
        },
        "commands": commands,
        "results": [asdict(m) for m in measurements],
        "pgbench": pgbench,
        "shares": shares,
        "uncached": uncached,
        "uncached_rounds": [[asdict(m) for m in runs] for runs in uncached_rounds],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "listings.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(measurements, pgbench, shares, RESULTS / "listings.png")
    _plot_cdf(measurements, args.connections, RESULTS / "listings-cdf.png")
    shutil.rmtree(work, ignore_errors=True)
    return 0


BARE_PG = "aiohttp + asyncpg"
FASTAPI = "FastAPI + uvicorn + asyncpg"
SHOWN = {"baseline": "bare aiohttp, same bytes"}


def _uncached_rounds(
    args: argparse.Namespace,
    env: Mapping[str, str],
    database_url: str,
    work: Path,
    wrk_path: str,
    random_lua: Path,
    load: Mapping[str, int],
    commands: dict[str, str],
) -> list[list[Measurement]]:
    """Uncached detail reads on jangteo, the bare handler and FastAPI, in alternating rounds.

    All three serve at once (idle ones cost nothing) so each round loads them back to back;
    every other round runs in reverse order, so no server always goes first.
    """
    ports = {"jangteo": free_port(), BARE_PG: free_port(), FASTAPI: free_port()}
    serve = jangteo_command("serve", "--workers", str(WORKERS), "--port", str(ports["jangteo"]))
    bare = [
        sys.executable, "-m", "loadtests.baseline_pg", "--port", str(ports[BARE_PG]),
        "--processes", str(WORKERS), "--pool", str(POOL_MAX), "--database", database_url,
    ]  # fmt: skip
    fastapi = [
        sys.executable, "-m", "uvicorn", "loadtests.baseline_fastapi:app", "--host", "127.0.0.1",
        "--port", str(ports[FASTAPI]), "--workers", str(WORKERS), "--loop", "uvloop",
        "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    fastapi_env = {**env, "BENCH_DATABASE_URL": database_url, "BENCH_POOL": str(POOL_MAX)}
    commands[BARE_PG] = " ".join(bare).replace(database_url, "<url>")
    commands[FASTAPI] = f"BENCH_POOL={POOL_MAX} " + " ".join(fastapi)
    servers = list(ports)
    rounds: list[list[Measurement]] = [[] for _ in servers]
    with (
        background(serve, _serve_env(env, database_url, False), ports["jangteo"],
                   work / "uncached.log"),
        background(bare, env, ports[BARE_PG], work / "bare-pg.log"),
        background(fastapi, fastapi_env, ports[FASTAPI], work / "fastapi.log"),
    ):  # fmt: skip
        for number in range(args.rounds):
            order = range(len(servers)) if number % 2 == 0 else reversed(range(len(servers)))
            for index in order:
                target = Target(
                    "uncached detail", servers[index], f"http://127.0.0.1:{ports[servers[index]]}/"
                )
                print(f"round {number + 1}: {target.server}", flush=True)
                if args.warmup > 0:
                    wrk(wrk_path, target, random_lua, **{**load, "seconds": args.warmup})
                rounds[index].append(wrk(wrk_path, target, random_lua, **load))
    return rounds


def _uncached_ratios(measurements: list[Measurement]) -> dict[str, float]:
    """The benchmark table's uncached ratios from the best round of each server."""
    best = {m.server: m for m in measurements if m.endpoint == "uncached detail"}
    ours, bare, fastapi = best["jangteo"], best[BARE_PG], best[FASTAPI]
    return {
        "rps_vs_bare": round(ours.requests_per_second / bare.requests_per_second, 3),
        "rps_vs_fastapi": round(ours.requests_per_second / fastapi.requests_per_second, 3),
        "p99_vs_bare": round(ours.latency_ms["p99"] / bare.latency_ms["p99"], 3),
        "p99_ms": ours.latency_ms["p99"],
        "bare_p99_ms": bare.latency_ms["p99"],
        "fastapi_p99_ms": fastapi.latency_ms["p99"],
    }


def _shares(
    measurements: list[Measurement], pgbench: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    rps = {(m.endpoint, m.server): m.requests_per_second for m in measurements}
    shares = {}
    for endpoint in dict.fromkeys(m.endpoint for m in measurements):
        ours = rps[(endpoint, "jangteo")]
        reference = (
            rps.get((endpoint, "baseline"))
            or rps.get((endpoint, BARE_PG))
            or pgbench[endpoint]["tps"]
        )
        shares[endpoint] = round(ours / reference, 3)
    return shares


def _table(
    measurements: list[Measurement],
    pgbench: Mapping[str, Mapping[str, float]],
    shares: Mapping[str, float],
) -> str:
    lines = [f"{'endpoint':<17}{'server':<29}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'share':>8}"]
    for m in measurements:
        share = f"{shares[m.endpoint]:.0%}" if m.server == "jangteo" else ""
        lines.append(
            f"{m.endpoint:<17}{m.server:<29}{m.requests_per_second:>10,.0f}"
            f"{m.latency_ms['p50']:>9.2f}{m.latency_ms['p99']:>9.2f}{share:>8}"
        )
    for endpoint, result in pgbench.items():
        lines.append(f"{endpoint:<17}{'pgbench':<29}{result['tps']:>10,.0f}")
    return "\n".join(lines)


def _plot(
    measurements: list[Measurement],
    pgbench: Mapping[str, Mapping[str, float]],
    shares: Mapping[str, float],
    path: Path,
) -> None:
    """Requests/s per endpoint, one bar per server, pgbench beside the uncached ones."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    endpoints = list(dict.fromkeys(m.endpoint for m in measurements))
    bars: dict[str, list[tuple[str, float]]] = {e: [] for e in endpoints}
    for m in measurements:
        bars[m.endpoint].append((m.server, m.requests_per_second))
    for endpoint, result in pgbench.items():
        bars.setdefault(endpoint, []).append(("pgbench (tx/s)", result["tps"]))
    colours = {"jangteo": "#d9534f", "baseline": "#7f8c8d", BARE_PG: "#5b7c99",
               FASTAPI: "#009688", "pgbench (tx/s)": "#c8c8c8"}  # fmt: skip
    figure, axes = plt.subplots(figsize=(9, 4.6), dpi=120)
    width = 0.2
    labelled: set[str] = set()
    for x, endpoint in enumerate(endpoints):
        group = bars[endpoint]
        for offset, (server, value) in enumerate(group):
            position = x + (offset - (len(group) - 1) / 2) * width
            label = SHOWN.get(server, server) if server not in labelled else None
            labelled.add(server)
            drawn = axes.bar(position, value, width, color=colours.get(server), label=label)
            text = f"{shares[endpoint]:.0%}" if server == "jangteo" else f"{value:,.0f}"
            axes.bar_label(drawn, labels=[text], fontsize=7, padding=2)
    axes.set_xticks(range(len(endpoints)), endpoints)
    axes.set_yscale("log")
    axes.set_ylabel("requests (or transactions) / s, log")
    axes.set_title(
        f"listing reads, {WORKERS} processes each; jangteo's share of its first reference",
        fontsize=10,
    )
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _plot_cdf(measurements: list[Measurement], connections: int, path: Path) -> None:
    """One latency CDF per read benchmark, every server of it on the same axes."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    from matplotlib import ticker  # type: ignore[import-not-found, unused-ignore]

    endpoints = list(dict.fromkeys(m.endpoint for m in measurements))
    figure, grid = plt.subplots(2, 2, figsize=(9, 6.4), dpi=120, squeeze=False)
    for axes, endpoint in zip(grid.flat, endpoints, strict=False):
        for m in measurements:
            if m.endpoint == endpoint and m.cdf_ms:
                points = sorted(m.cdf_ms, key=lambda point: point[0])
                axes.plot([ms for _, ms in points], [p for p, _ in points], marker=".",
                          label=f"{SHOWN.get(m.server, m.server)} "
                                f"(p99 {m.latency_ms['p99']:.1f} ms)")  # fmt: skip
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axes.xaxis.set_minor_formatter(ticker.NullFormatter())
        axes.set_title(endpoint, fontsize=10)
        axes.set_xlabel("latency, ms (log)", fontsize=8)
        axes.set_ylabel("percentile", fontsize=8)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    figure.suptitle(
        f"listing read latency, {WORKERS} processes each, wrk -t2 -c{connections}", fontsize=10
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--connections", type=int, default=4 * WORKERS * POOL_MAX, help="four per pooled one"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating uncached rounds")
    parser.add_argument("--warmup", type=int, default=2, help="seconds before each uncached run")
    started = time.monotonic()
    code = run(parser.parse_args(argv))
    print(f"done in {time.monotonic() - started:.0f} s")
    sys.exit(code)


if __name__ == "__main__":
    main()
