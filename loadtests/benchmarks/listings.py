"""Listing reads: cached ones against bare aiohttp, uncached ones against references.

jangteo (``serve --workers 2``, pools of 8 per process) on a database of its own with
2,000 seeded listings, loaded by wrk: cached detail and feed reads against a bare aiohttp
app sending the same bytes (``references/app.py``); uncached detail reads (random ids) in
alternating rounds against bare aiohttp + asyncpg (``references/pg.py``) and FastAPI +
uvicorn + asyncpg (``references/fastapi.py``) running the same SELECT; the uncached feed;
then pgbench running the very SELECTs jangteo sends (the database's ceiling).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from db.queries.listings import LISTING_SELECT, FeedFilter, feed_sql
from loadtests.harness.processes import background, jangteo_command
from loadtests.harness.results import Machine, Result, pyplot, versions
from loadtests.harness.stack import fetch, fresh_database, services
from loadtests.harness.tools import WRK_REPORT_LUA, Measurement, Target, pgbench, wrk
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


@dataclass(kw_only=True, slots=True)
class ListingsResult(Result):
    results: list[Measurement]
    pgbench: dict[str, dict[str, Any]]
    shares: dict[str, float]
    uncached: dict[str, float]
    uncached_rounds: list[list[Measurement]]

    def table(self) -> str:
        ratios = ", ".join(f"{name} {value}" for name, value in self.uncached.items())
        return _table(self.results, self.pgbench, self.shares) + "\n" + ratios

    def plot(self, path: Path) -> bool:
        if not _plot(self.results, self.pgbench, self.shares, path):
            return False
        _plot_cdf(self.results, self.load["connections"], path.with_name("listings-cdf.png"))
        return True


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--connections", type=int, default=4 * WORKERS * POOL_MAX, help="four per pooled one"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating uncached rounds")
    parser.add_argument("--warmup", type=int, default=2, help="seconds before each uncached run")


def pgbench_script(sql: str, params: list[object]) -> str:
    """``sql`` with $n replaced by pgbench literals; $1 of a detail query is a random id."""
    text = " ".join(sql.split())
    for index in range(len(params), 0, -1):
        value = params[index - 1]
        literal = (
            ":id" if value is None else repr(value) if isinstance(value, int) else f"'{value}'"
        )
        text = text.replace(f"${index}", str(literal))
    return f"\\set id random(1, {LISTINGS})\n{text};\n"


def serve_env(base: Mapping[str, str], database_url: str, cache: bool) -> dict[str, str]:
    return {
        **base,
        "JANGTEO_DATABASE_URL": database_url,
        "JANGTEO_RATE_LIMITS": "off",
        "JANGTEO_ACCESS_LOG": "off",
        "JANGTEO_LOG_LEVEL": "WARNING",
        "JANGTEO_PG_POOL_MAX": str(POOL_MAX),
        "JANGTEO_CACHE": "on" if cache else "off",
    }


async def run(args: argparse.Namespace) -> ListingsResult:
    machine = Machine()
    stack = services()
    env = {**os.environ, "JANGTEO_REDIS_URL": stack.redis_url}
    async with fresh_database(stack.admin_url, DATABASE, keep=args.keep_database) as url:
        await seed(Settings(database_url=url), users=60, listings=LISTINGS, if_empty=False)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()
        measurements, rounds, pgbench_runs, commands = measure(args, env, url, args.scratch)
    return ListingsResult(
        benchmark="listings",
        machine=machine,
        versions=await versions(),
        load={
            "seconds": args.seconds,
            "threads": 2,
            "connections": args.connections,
            "processes_per_server": WORKERS,
            "pool_per_process": POOL_MAX,
            "pgbench_clients": WORKERS * POOL_MAX,
            "rounds": args.rounds,
        },
        commands=commands,
        results=measurements,
        pgbench=pgbench_runs,
        shares=_shares(measurements, pgbench_runs),
        uncached=_uncached_ratios(measurements),
        uncached_rounds=rounds,
    )


def measure(
    args: argparse.Namespace, env: Mapping[str, str], database_url: str, work: Path
) -> tuple[list[Measurement], list[list[Measurement]], dict[str, dict[str, Any]], dict[str, str]]:
    report_lua = work / "report.lua"
    report_lua.write_text(WRK_REPORT_LUA)
    random_lua = work / "random.lua"
    random_lua.write_text(RANDOM_ID_LUA % LISTINGS + WRK_REPORT_LUA)
    detail_path = f"/api/v1/listings/{LISTINGS // 2}"
    feed_path = f"/api/v1/listings?region={REGION}"
    load = {"seconds": args.seconds, "threads": 2, "connections": args.connections}
    measurements: list[Measurement] = []
    commands: dict[str, str] = {}
    cached_port, baseline_port, uncached_port = free_port(), free_port(), free_port()
    serve = jangteo_command("serve", "--workers", str(WORKERS), "--port")
    with background(
        [*serve, str(cached_port)], serve_env(env, database_url, True), cached_port,
        work / "cached.log",
    ):  # fmt: skip
        (work / "detail.json").write_bytes(fetch(cached_port, detail_path))
        (work / "feed.json").write_bytes(fetch(cached_port, feed_path))
        baseline = [
            sys.executable, "-m", "loadtests.references.app", "--port", str(baseline_port),
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
                measurements.append(wrk(target, report_lua, **load))
    rounds = _uncached_rounds(args, env, database_url, work, random_lua, load, commands)
    measurements += [max(runs, key=lambda m: m.requests_per_second) for runs in rounds]
    with background(
        [*serve, str(uncached_port)], serve_env(env, database_url, False), uncached_port,
        work / "uncached.log",
    ):  # fmt: skip
        target = Target("uncached feed", "jangteo", f"http://127.0.0.1:{uncached_port}{feed_path}")
        measurements.append(wrk(target, report_lua, **load))
    clients = WORKERS * POOL_MAX
    feed_query, feed_params = feed_sql(FeedFilter(region=REGION), 20 + 1)
    scripts = {
        "uncached detail": pgbench_script(LISTING_SELECT + " WHERE l.id = $1", [None]),
        "uncached feed": pgbench_script(feed_query, feed_params),
    }
    runs: dict[str, dict[str, Any]] = {}
    for name, text in scripts.items():
        script = work / f"{name.replace(' ', '-')}.sql"
        script.write_text(text)
        script.chmod(0o644)
        commands[f"pgbench {name}"], runs[name] = pgbench(
            database_url, script, clients=clients, seconds=args.seconds, threads=WORKERS
        )
    commands["jangteo"] = " ".join([*serve, "<port>"]) + f" (JANGTEO_PG_POOL_MAX={POOL_MAX})"
    return measurements, rounds, runs, commands


BARE_PG = "aiohttp + asyncpg"
FASTAPI = "FastAPI + uvicorn + asyncpg"
SHOWN = {"baseline": "bare aiohttp, same bytes"}


def _uncached_rounds(
    args: argparse.Namespace,
    env: Mapping[str, str],
    database_url: str,
    work: Path,
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
        sys.executable, "-m", "loadtests.references.pg", "--port", str(ports[BARE_PG]),
        "--processes", str(WORKERS), "--pool", str(POOL_MAX), "--database", database_url,
    ]  # fmt: skip
    fastapi = [
        sys.executable, "-m", "uvicorn", "loadtests.references.fastapi:app", "--host", "127.0.0.1",
        "--port", str(ports[FASTAPI]), "--workers", str(WORKERS), "--loop", "uvloop",
        "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    fastapi_env = {**env, "BENCH_DATABASE_URL": database_url, "BENCH_POOL": str(POOL_MAX)}
    commands[BARE_PG] = " ".join(bare).replace(database_url, "<url>")
    commands[FASTAPI] = f"BENCH_POOL={POOL_MAX} " + " ".join(fastapi)
    servers = list(ports)
    rounds: list[list[Measurement]] = [[] for _ in servers]
    with (
        background(serve, serve_env(env, database_url, False), ports["jangteo"],
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
                    wrk(target, random_lua, **{**load, "seconds": args.warmup})
                rounds[index].append(wrk(target, random_lua, **load))
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
    measurements: list[Measurement], pgbench: Mapping[str, Mapping[str, Any]]
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
    pgbench: Mapping[str, Mapping[str, Any]],
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
    pgbench: Mapping[str, Mapping[str, Any]],
    shares: Mapping[str, float],
    path: Path,
) -> bool:
    """Requests/s per endpoint, one bar per server, pgbench beside the uncached ones."""
    plt = pyplot()
    if plt is None:
        return False

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
    return True


def _plot_cdf(measurements: list[Measurement], connections: int, path: Path) -> None:
    """One latency CDF per read benchmark, every server of it on the same axes."""
    plt = pyplot()
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
