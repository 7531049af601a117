"""Listing reads: cached ones against bare aiohttp, uncached ones against references.

jangteo (``serve --workers 2``, pools of 8 per process) on a database of its own with
2,000 seeded listings, loaded by wrk: cached detail and feed reads against a bare aiohttp
app sending the same bytes (``references/app.py``); uncached detail reads (random ids) in
alternating rounds against bare aiohttp + asyncpg (``references/pg.py``) and FastAPI +
uvicorn + asyncpg (``references/fastapi.py``) running the same SELECT; the uncached feed;
then pgbench running the very SELECTs jangteo sends (the database's ceiling). The uncached
comparisons are judged on the median over rounds of each round's ratio, which one lucky
round cannot move as it moves the best round's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.queries.listings import LISTING_SELECT, FeedFilter, feed_sql
from loadtests.harness.processes import Server, as_line, background
from loadtests.harness.report import (
    BARE_PG,
    COLOURS,
    FASTAPI,
    UNCACHED_TARGETS,
    RoundRatios,
    bars,
    finish,
    uncached_round_ratios,
)
from loadtests.harness.results import Machine, Result, versions
from loadtests.harness.stack import (
    bare_app,
    execute,
    fetch,
    fresh_database,
    instances,
    serve_settings,
    services,
)
from loadtests.harness.tools import (
    WRK_REPORT_LUA,
    Measurement,
    Target,
    alternate,
    best,
    pgbench,
    wrk,
    wrk_table,
)
from server.embedded.process import free_port
from server.seed import seed
from server.settings import Settings

WORKERS = 2
POOL_MAX = 8  # per worker: pgbench gets WORKERS * POOL_MAX connections
LISTINGS = 2000
REGION = "seoul-mapo"
DATABASE = "jangteo_bench_listings"
DETAIL, FEED = f"/api/v1/listings/{LISTINGS // 2}", f"/api/v1/listings?region={REGION}"
SHOWN = {"baseline": "bare aiohttp, same bytes"}
COMPARED = {"rps_vs_bare": "req/s vs bare", "rps_vs_fastapi": "req/s vs FastAPI",
            "p99_vs_bare": "p99 vs bare"}  # fmt: skip
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
    # jangteo over each reference round by round, with the median and range: the targets.
    round_ratios: dict[str, dict[str, Any] | None]

    def table(self) -> str:
        lines = [wrk_table(self.results, self.shares)]
        lines += [f"{name}: pgbench {run['tps']:,.0f} tx/s" for name, run in self.pgbench.items()]
        lines.append("best rounds: " + ", ".join(f"{k} {v}" for k, v in self.uncached.items()))
        lines.append("uncached detail, jangteo / reference round by round: " + self.spread_text())
        return "\n".join(lines)

    def spread_text(self) -> str:
        return "; ".join(
            f"{COMPARED[key]} {'not measured' if spread is None else spread.text()}"
            for key, spread in self.spreads().items()
        )

    def spreads(self) -> dict[str, RoundRatios | None]:
        return uncached_round_ratios(
            [[dataclasses.asdict(m) for m in runs] for runs in self.uncached_rounds]
        )

    def draw_rounds(self, axes: Any) -> None:
        """jangteo over each reference, one dot per round, the median as a line and the
        target dashed: how far the rounds spread, and on which side of the target."""
        for x, (key, spread) in enumerate(self.spreads().items()):
            first = x == 0
            axes.hlines(UNCACHED_TARGETS[key], x - 0.35, x + 0.35, colors="#999999",
                        linestyles="dashed", label="target" if first else None)  # fmt: skip
            if spread is None:
                continue
            axes.plot([x] * len(spread.ratios), spread.ratios, "o", color="black",
                      markersize=4, label="each round" if first else None)  # fmt: skip
            axes.hlines(spread.median, x - 0.25, x + 0.25, colors=COLOURS["jangteo"],
                        label="median" if first else None)  # fmt: skip
            axes.annotate(f"{spread.median:.2f}x", (x + 0.27, spread.median), fontsize=7,
                          va="center")  # fmt: skip
        axes.set_xticks(
            range(len(COMPARED)),
            [c.replace(" vs ", "\nvs ") for c in COMPARED.values()],
            fontsize=7,
        )
        axes.set_xlim(-0.5, len(COMPARED) - 0.3)
        axes.set_ylabel("jangteo / reference, same round", fontsize=8)
        axes.set_title(f"uncached detail, {self.load.get('rounds')} rounds", fontsize=9)
        axes.grid(True, axis="y", alpha=0.3)
        axes.legend(fontsize=7)

    def plot(self, plt: Any, path: Path) -> None:
        """Requests/s per endpoint, one bar per server (its best round), pgbench beside the
        uncached ones, and beside them the uncached rounds' ratios; and one latency CDF per
        endpoint, every server of it on the same axes."""
        endpoints = list(self.shares)
        groups: dict[str, list[tuple[str, float]]] = {endpoint: [] for endpoint in endpoints}
        for m in self.results:
            groups[m.endpoint].append((m.server, m.requests_per_second))
        for endpoint, run in self.pgbench.items():
            groups[endpoint].append(("pgbench (tx/s)", run["tps"]))
        colours = {**COLOURS, BARE_PG: "#5b7c99", FASTAPI: "#009688", "pgbench (tx/s)": "#c8c8c8"}
        figure, (axes, ratios) = plt.subplots(
            1, 2, figsize=(11, 4.6), dpi=120, gridspec_kw={"width_ratios": (5, 2)}
        )
        labelled: set[str] = set()
        for x, endpoint in enumerate(endpoints):
            for offset, (server, value) in enumerate(groups[endpoint]):
                position = x + (offset - (len(groups[endpoint]) - 1) / 2) * 0.2
                label = None if server in labelled else SHOWN.get(server, server)
                labelled.add(server)
                share = f"{self.shares[endpoint]:.0%}" if server == "jangteo" else "{:,.0f}"
                bars(
                    axes, [position], [value], share, width=0.2, color=colours[server], label=label
                )
        axes.set_xticks(range(len(endpoints)), endpoints)
        axes.set_yscale("log")
        axes.set_ylabel("requests (or transactions) / s, log")
        title = f"listing reads, {WORKERS} processes each; jangteo's share of its first reference"
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=7)
        self.draw_rounds(ratios)
        finish(plt, figure, f"{self.date}, {self.machine.cores} cores", path)

        from matplotlib import ticker  # type: ignore[import-not-found, unused-ignore]

        figure, grid = plt.subplots(2, 2, figsize=(9, 6.4), dpi=120, squeeze=False)
        for axes, endpoint in zip(grid.flat, endpoints, strict=False):
            for m in self.results:
                if m.endpoint == endpoint and m.cdf_ms:
                    points = sorted(m.cdf_ms)
                    label = f"{SHOWN.get(m.server, m.server)} (p99 {m.latency_ms['p99']:.1f} ms)"
                    axes.plot([ms for _, ms in points], [p for p, _ in points], ".-", label=label)
            axes.set_xscale("log")
            axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            axes.xaxis.set_minor_formatter(ticker.NullFormatter())
            axes.set_title(endpoint, fontsize=10)
            axes.set_xlabel("latency, ms (log)", fontsize=8)
            axes.set_ylabel("percentile", fontsize=8)
            axes.grid(True, which="both", alpha=0.3)
            axes.legend(fontsize=7, loc="lower right")
        connections = self.load["connections"]
        title = f"listing read latency, {WORKERS} processes each, wrk -t2 -c{connections}"
        figure.suptitle(title, fontsize=10)
        cdf_path = path.with_name(f"{path.stem}-cdf.png")
        finish(plt, figure, f"{self.date}, {self.machine.cores} cores", cdf_path)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--connections", type=int, default=4 * WORKERS * POOL_MAX, help="four per pooled one"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating uncached rounds (the targets: medians)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="seconds before each uncached run")


def pgbench_script(sql: str, params: list[object]) -> str:
    """``sql`` with $n replaced by pgbench literals; $1 of a detail query is a random id."""
    text = " ".join(sql.split())
    for index in range(len(params), 0, -1):
        value = params[index - 1]
        literal = ":id" if value is None else str(value) if isinstance(value, int) else f"'{value}'"
        text = text.replace(f"${index}", literal)
    return f"\\set id random(1, {LISTINGS})\n{text};\n"


async def run(args: argparse.Namespace) -> ListingsResult:
    machine = Machine()
    stack = services()
    async with fresh_database(stack.admin_url, DATABASE, keep=args.keep_database) as url:
        await seed(Settings(database_url=url), users=60, listings=LISTINGS, if_empty=False)
        await execute(url, "VACUUM ANALYZE")
        commands: dict[str, str] = {}
        measurements, rounds = measure(args, stack.redis_url, url, commands)
        feed_query, feed_params = feed_sql(FeedFilter(region=REGION), 20 + 1)
        scripts = {
            "uncached detail": pgbench_script(LISTING_SELECT + " WHERE l.id = $1", [None]),
            "uncached feed": pgbench_script(feed_query, feed_params),
        }
        runs: dict[str, dict[str, Any]] = {}
        for name, text in scripts.items():
            script = args.scratch / f"{name.replace(' ', '-')}.sql"
            script.write_text(text)
            script.chmod(0o644)
            commands[f"pgbench {name}"], runs[name] = pgbench(
                url, script, clients=WORKERS * POOL_MAX, seconds=args.seconds, threads=WORKERS
            )
    best_of = {m.server: m for m in measurements if m.endpoint == "uncached detail"}
    ours, bare, fastapi = best_of["jangteo"], best_of[BARE_PG], best_of[FASTAPI]
    result = ListingsResult(
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
        pgbench=runs,
        shares=shares(measurements, runs),
        uncached={
            "rps_vs_bare": round(ours.requests_per_second / bare.requests_per_second, 3),
            "rps_vs_fastapi": round(ours.requests_per_second / fastapi.requests_per_second, 3),
            "p99_vs_bare": round(ours.latency_ms["p99"] / bare.latency_ms["p99"], 3),
            "p99_ms": ours.latency_ms["p99"],
            "bare_p99_ms": bare.latency_ms["p99"],
            "fastapi_p99_ms": fastapi.latency_ms["p99"],
        },
        uncached_rounds=rounds,
        round_ratios={},
    )
    result.round_ratios = {
        key: None if spread is None else dataclasses.asdict(spread)
        for key, spread in result.spreads().items()
    }
    return result


def shares(
    measurements: list[Measurement], pgbench_runs: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """jangteo's requests/s over its endpoint's first reference: the same bytes from the bare
    app, else the bare handler's same SELECT, else pgbench's transactions/s."""
    rps = {(m.endpoint, m.server): m.requests_per_second for m in measurements}
    return {
        endpoint: round(ours / (rps.get((endpoint, "baseline")) or rps.get((endpoint, BARE_PG))
                                or pgbench_runs[endpoint]["tps"]), 3)
        for (endpoint, server), ours in rps.items()
        if server == "jangteo"
    }  # fmt: skip


def measure(
    args: argparse.Namespace, redis_url: str, database_url: str, commands: dict[str, str]
) -> tuple[list[Measurement], list[list[Measurement]]]:
    """Cached reads against the bare app; uncached detail reads on jangteo, the bare handler
    and FastAPI in alternating rounds (all three serve at once: idle ones cost nothing), and
    the uncached feed. The measurements (best round each) and every uncached round."""
    scratch: Path = args.scratch
    report_lua, random_lua = scratch / "report.lua", scratch / "random.lua"
    report_lua.write_text(WRK_REPORT_LUA)
    random_lua.write_text(RANDOM_ID_LUA % LISTINGS + WRK_REPORT_LUA)
    load = {"seconds": args.seconds, "threads": 2, "connections": args.connections}

    def jangteo(name: str, cache: str) -> AbstractContextManager[list[Server]]:
        settings = serve_settings(database_url, redis_url, PG_POOL_MAX=str(POOL_MAX), CACHE=cache)
        return instances([name], settings, scratch, commands, workers=WORKERS)

    with jangteo("jangteo cached", "on") as (cached,):
        bodies = {"/detail": fetch(cached.port, DETAIL), "/feed": fetch(cached.port, FEED)}
        with bare_app(bodies, scratch, commands, WORKERS) as baseline:
            targets = [
                Target("cached detail", "jangteo", cached.url + DETAIL),
                Target("cached detail", "baseline", f"{baseline.url}/detail"),
                Target("cached feed", "jangteo", cached.url + FEED),
                Target("cached feed", "baseline", f"{baseline.url}/feed"),
            ]
            measurements = best(alternate(targets, report_lua, rounds=1, warmup=0, **load))
    ports = {BARE_PG: free_port(), FASTAPI: free_port()}
    bare = [
        sys.executable, "-m", "loadtests.references.pg", "--port", str(ports[BARE_PG]),
        "--processes", str(WORKERS), "--pool", str(POOL_MAX), "--database", database_url,
    ]  # fmt: skip
    fastapi = [
        sys.executable, "-m", "uvicorn", "loadtests.references.fastapi:app", "--host", "127.0.0.1",
        "--port", str(ports[FASTAPI]), "--workers", str(WORKERS), "--loop", "uvloop",
        "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    fastapi_env = {**os.environ, "BENCH_DATABASE_URL": database_url, "BENCH_POOL": str(POOL_MAX)}
    commands[BARE_PG] = as_line(bare).replace(database_url, "<url>")
    commands[FASTAPI] = f"BENCH_POOL={POOL_MAX} " + as_line(fastapi)
    with (
        jangteo("jangteo", "off") as (uncached,),
        background(bare, os.environ, ports[BARE_PG], scratch / "bare-pg.log"),
        background(fastapi, fastapi_env, ports[FASTAPI], scratch / "fastapi.log"),
    ):
        targets = [Target("uncached detail", "jangteo", f"{uncached.url}/")]
        targets += [
            Target("uncached detail", k, f"http://127.0.0.1:{p}/") for k, p in ports.items()
        ]
        rounds = alternate(targets, random_lua, rounds=args.rounds, warmup=args.warmup, **load)
        measurements += best(rounds)
        feed = Target("uncached feed", "jangteo", uncached.url + FEED)
        measurements.append(wrk(feed, report_lua, **load))
    return measurements, rounds
