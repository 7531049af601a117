"""Benchmark report: the benchmark targets against the latest results, and the helpers
every benchmark draws its own table and plot with.

Run as ``python -m loadtests report`` (the last step of ``make bench``). It reads
``loadtests/results/*.json``, writes ``loadtests/results/bench-latest.json`` and rewrites the
table between the ``bench-table`` markers in ``BENCHMARKS.md`` and ``README.md``. It runs
nothing: a target whose figure or same-run reference is missing from the results is "not
measured".
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.harness.processes import RESULTS, ROOT

DOCS = (ROOT / "BENCHMARKS.md", ROOT / "README.md")  # each holds the table between markers
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
SOURCES = (
    "http", "listings", "purchase", "purchase-spread", "realtime", "realtime-20k", "crowd",
    "chat", "scaling", "storm", "tracing",
    "loadtest-latest",
)  # fmt: skip
BENCHMARKS_MD, README_MD = "BENCHMARKS.md", "README.md"
BOTH = (BENCHMARKS_MD, README_MD)
# BENCHMARKS.md's generated details of a benchmark, between these markers.
DETAILS = {
    "scaling": ("<!-- scaling-details:start -->", "<!-- scaling-details:end -->"),
    "purchase": ("<!-- purchase-sweep:start -->", "<!-- purchase-sweep:end -->"),
}
Row = dict[str, Any]
CPU_KINDS = ("postgresql", "redis", "jangteo", "load", "others")
COLOURS = {
    "jangteo": "#d9534f", "baseline": "#7f8c8d", "bare": "#7f8c8d", "socketio": "#2a7ab9",
    "sse": "#e39b2d",
}  # fmt: skip
# The uncached listing read's references (bench listings), and what jangteo is compared on.
BARE_PG, FASTAPI = "aiohttp + asyncpg", "FastAPI + uvicorn + asyncpg"
UNCACHED_COMPARISONS = {
    "rps_vs_bare": (BARE_PG, "requests_per_second"),
    "rps_vs_fastapi": (FASTAPI, "requests_per_second"),
    "p99_vs_bare": (BARE_PG, "latency_ms", "p99"),
}
# Their targets on the median of the per-round ratios: requests/s at least, p99 at most.
UNCACHED_TARGETS = {"rps_vs_bare": 1.0, "rps_vs_fastapi": 1.3, "p99_vs_bare": 1.5}
# bench tracing's reads and the sampling ratios of its traced variants.
TRACING_CACHED, TRACING_FEED = "cached /listings/{id}", "feed first page"
TRACING_RATIOS = (0.01, 1.0)


def traced_variant(ratio: float) -> str:
    """bench tracing's name of the variant traced at ``ratio``: on-1%, on-100%."""
    return f"on-{ratio * 100:g}%"


def dig(obj: Any, *keys: str | int) -> Any:
    for key in keys:
        in_dict = isinstance(obj, dict) and key in obj
        if in_dict or (
            isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj)
        ):
            obj = obj[key]
        else:
            return None
    return obj


def num(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def shown(template: str, *values: Any) -> str | None:
    """``template`` filled in with ``values``; None (the cell says "not measured") when one
    of them is missing."""
    return None if any(value is None for value in values) else template.format(*values)


def load(name: str) -> dict[str, Any]:
    try:
        data = json.loads((RESULTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def row(
    target: str,
    goal: str,
    src: str,
    data: dict[str, Any],
    *,
    figure: Any = None,
    reference: Any = None,
    text: str | None = None,
    ref_text: str | None = None,
    ok: bool | None = None,
    least: float | None = None,
    ratio: Any = None,
    status: str | None = None,
    note: str = "",
    docs: tuple[str, ...] = BOTH,
) -> Row:
    """One target: ratio = figure / reference unless given, met when it is at ``least``
    (or as ``ok`` says; None: not measured). No ``data``: no source either. ``docs``: the
    documents whose table shows it."""
    figure, reference = num(figure), num(reference)
    if ratio is None and figure is not None and reference:
        ratio = round(figure / reference, 3)
    if least is not None:
        ok = None if ratio is None else ratio >= least
    return {
        "target": target,
        "goal": goal,
        "figure": figure,
        "figure_text": text or "not measured",
        "reference": reference,
        "reference_text": ref_text or "",
        "ratio": ratio,
        "status": status or ("not measured" if ok is None else "met" if ok else "missed"),
        "note": note,
        "source": f"loadtests/results/{src}.json" if data else None,
        "measured_at": data.get("date") or data.get("started"),
        "docs": list(docs),
    }


def measured(data: dict[str, Any], endpoint: str, server: str, *keys: str) -> float | None:
    """A figure (requests/s unless ``keys`` say) of one wrk measurement of the results."""
    for item in dig(data, "results") or []:
        if dig(item, "endpoint") == endpoint and dig(item, "server") == server:
            return num(dig(item, *(keys or ("requests_per_second",))))
    return None


def req_s(value: float | None) -> str | None:
    return shown("{:,.0f} req/s", value)


@dataclass(frozen=True, slots=True)
class RoundRatios:
    """Each round's figure over the same round's reference, their median and range: one
    lucky or unlucky round moves the best-round ratio, not the median."""

    ratios: tuple[float, ...]
    median: float
    low: float
    high: float

    def text(self) -> str:
        return (
            f"{self.median:.2f}x median ({self.low:.2f}-{self.high:.2f}x over"
            f" {len(self.ratios)} rounds)"
        )


def round_ratios(
    ours: Sequence[float | None], theirs: Sequence[float | None]
) -> RoundRatios | None:
    """``ours[i] / theirs[i]`` for every round ``i`` measured on both sides, with their median
    and range; None when no round has both."""
    ratios = tuple(
        round(mine / other, 3)
        for mine, other in zip(ours, theirs, strict=False)
        if mine is not None and other
    )
    if not ratios:
        return None
    return RoundRatios(ratios, round(statistics.median(ratios), 3), min(ratios), max(ratios))


def uncached_round_ratios(rounds: Any) -> dict[str, RoundRatios | None]:
    """jangteo against each reference round by round (``UNCACHED_COMPARISONS``), from the
    stored uncached rounds: one list of wrk runs per server, in round order. Results saved
    before the rounds were stored give None for each."""
    by_server = {
        dig(runs, 0, "server"): runs for runs in rounds or [] if isinstance(runs, list) and runs
    }

    def figures(server: str, keys: Sequence[str]) -> list[float | None]:
        return [num(dig(run, *keys)) for run in by_server.get(server) or []]

    return {
        name: round_ratios(figures("jangteo", keys), figures(server, keys))
        for name, (server, *keys) in UNCACHED_COMPARISONS.items()
    }


def with_rounds(r: Row, spread: RoundRatios | None, best_round: float | None) -> Row:
    """``r`` (its ratio the median over rounds) with the rounds' spread and the best-round
    ratio in its ratio cell; "median: not measured" for results without rounds."""
    best_text = None if best_round is None else f"best rounds {best_round:.2f}x"
    r["ratio"] = None if spread is None else spread.median
    r["best_round_ratio"] = best_round
    r["round_ratios"] = None if spread is None else list(spread.ratios)
    median_text = "median: not measured" if spread is None else spread.text()
    shown_any = spread is not None or best_text is not None
    r["ratio_text"] = "; ".join(t for t in (median_text, best_text) if t) if shown_any else "-"
    return r


def listing_rows(data: dict[str, Any]) -> list[Row]:
    """Cached reads against the bare app; uncached ones against the bare handler and FastAPI,
    judged on the median of the per-round ratios (the best round of each server is shown
    beside it), and against pgbench."""
    fig, ref = (
        measured(data, "cached detail", "jangteo"),
        measured(data, "cached detail", "baseline"),
    )
    rows = [
        row("cached GET /listings/{id} vs bare aiohttp, same bytes", ">= 80% of requests/s",
            "listings", data, figure=fig, reference=ref, least=0.8, text=req_s(fig),
            ref_text=req_s(ref))
    ]  # fmt: skip
    spreads = uncached_round_ratios(dig(data, "uncached_rounds"))
    ours = measured(data, "uncached detail", "jangteo")
    for server, key in ((BARE_PG, "rps_vs_bare"), (FASTAPI, "rps_vs_fastapi")):
        theirs, spread, least = (
            measured(data, "uncached detail", server),
            spreads[key],
            UNCACHED_TARGETS[key],
        )
        goal = f">= {least:.1f}x requests/s, median of rounds"
        name = f"bare {server}" if server == BARE_PG else server
        best_round = None if ours is None or not theirs else round(ours / theirs, 3)
        rows.append(with_rounds(
            row(f"uncached GET /listings/{{id}} vs {name}", goal, "listings",
                data if ours is not None and theirs else {}, figure=ours, reference=theirs,
                ratio=None if spread is None else spread.median, least=least,
                status=None if spread else "not measured", text=in_best_round(req_s(ours)),
                ref_text=in_best_round(req_s(theirs))),
            spread, best_round)
        )  # fmt: skip
    ours_p99 = measured(data, "uncached detail", "jangteo", "latency_ms", "p99")
    bare_p99 = measured(data, "uncached detail", BARE_PG, "latency_ms", "p99")
    spread, most = spreads["p99_vs_bare"], UNCACHED_TARGETS["p99_vs_bare"]
    rows.append(with_rounds(
        row("uncached GET /listings/{id} p99, 4x client connections per pooled one",
            f"<= {most:.1f}x the bare aiohttp + asyncpg handler's p99, median of rounds",
            "listings",
            data if ours_p99 is not None else {}, figure=ours_p99, reference=bare_p99,
            ratio=None if spread is None else spread.median,
            ok=None if spread is None else spread.median <= most,
            text=in_best_round(shown("{:.1f} ms at {} connections", ours_p99,
                            dig(data, "load", "connections"))),
            ref_text=in_best_round(shown("{:.1f} ms, same {:.0f} pooled connections", bare_p99,
                                num(dig(data, "load", "pgbench_clients"))))),
        spread, num(dig(data, "uncached", "p99_vs_bare")))
    )  # fmt: skip
    pg = num(dig(data, "pgbench", "uncached detail", "tps"))
    clients = dig(data, "load", "pgbench_clients")
    rows.append(
        row("uncached GET /listings/{id} vs pgbench, same SELECT (ceiling)",
            "shown as the database's ceiling", "listings", data, figure=ours, reference=pg,
            status="shown" if ours is not None and pg is not None else "not measured",
            text=req_s(ours), ref_text=shown("{:,.0f} tx/s, {} connections", pg, clients))
    )  # fmt: skip
    return rows


def in_best_round(text: str | None) -> str | None:
    """A figure of the best round (by requests/s) of its server."""
    return None if text is None else f"{text}, best round"


# Per strategy: paid orders/s at least this share of pgbench running the purchase
# transaction as it was before the one-call purchase, frozen (None: shown, no target).
BEFORE_TARGETS = {"atomic": 1.0, "redis_lock": 1.0, "queue": 3.0}
LOCK_BASED = ("atomic", "pessimistic", "optimistic", "redis_lock")
GOAL_CALL = ">= 50% of pgbench making jangteo's own call, same connections"


def purchase_rows(data: dict[str, Any], spread: dict[str, Any]) -> list[Row]:
    """Hot listing: each strategy against the frozen transaction (and, lock-based ones,
    against pgbench making the same call); many listings: against the same call."""
    rows = []
    for item in dig(data, "strategies") or []:
        name, conns = dig(item, "strategy"), _pool_clients(data)
        least = BEFORE_TARGETS.get(name)
        buyers = num(dig(data, "load", "buyers")) or 500
        title = f"{buyers:.0f} buyers on one listing, {name}"
        goal = (
            f">= {least:.1f}x pgbench running the transaction before the one-call purchase,"
            " same connections; no oversell, no lost money"
            if least is not None
            else "shown beside the transaction before the one-call purchase"
        )
        rows.append(_purchase_row(data, item, conns, "baseline", title, goal, least))
        if name in LOCK_BASED:
            rows.append(_purchase_row(
                data, item, conns, "call_baseline", f"{title}, vs its own call", GOAL_CALL, 0.5
            ))  # fmt: skip
    for item in dig(spread, "strategies") or []:
        many, listings = num(dig(spread, "load", "buyers")), num(dig(spread, "load", "listings"))
        title = f"{many or 0:.0f} buyers over {listings or 0:.0f} listings, {item['strategy']}"
        rows.append(_purchase_row(
            spread, item, _pool_clients(spread), "call_baseline", title, GOAL_CALL, 0.5,
            source="purchase-spread",
        ))  # fmt: skip
    return rows or [row("500 buyers on one listing", GOAL_CALL, "purchase", data)]


def _pool_clients(data: dict[str, Any]) -> str | None:
    """pgbench clients as many as jangteo's pooled connections ("the same connections")."""
    workers = num(dig(data, "load", "server_workers"))
    pool = num(dig(data, "load", "pg_pool_max_per_worker"))
    return str(int(workers * pool)) if workers and pool else None


def _purchase_row(
    data: dict[str, Any], item: dict[str, Any], conns: str | None, runs: str, title: str,
    goal: str, least: float | None, source: str = "purchase",
) -> Row:  # fmt: skip
    paid = num(dig(item, "http", "paid_per_second"))
    p99 = num(dig(item, "http", "latency_ms_201", "p99"))
    ref = num(dig(item, runs, conns, "paid_per_second")) if conns else None
    checks = dig(item, "invariants", "checks") or {}
    safe = checks.get("no_oversell") is True and checks.get("money_conserved") is True
    script = dig(item, "baseline_script")
    what = f"call_{script}" if runs == "call_baseline" else f"{script} (before one call)"
    ok = None if paid is None or not ref or least is None else safe and paid / ref >= least
    return row(
        title, goal, source, data, figure=paid, reference=ref, ok=ok,
        status=None if least is not None or paid is None else "shown",
        text=shown("{:,.1f} paid/s, p99 {:,.0f} ms, invariants {}", paid or None, p99,
                   "OK" if safe else "FAILED"),
        ref_text=shown("pgbench -c {}, {} script: {:,.1f} tx/s", conns, what, ref or None),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SweepRun:
    """One strategy at one buyer count of the purchase benchmark's buyers sweep."""

    buyers: int
    strategy: str
    paid_per_second: float | None
    p99_ms: float | None  # of paid orders
    invariants_ok: bool


def purchase_sweep(data: dict[str, Any]) -> list[SweepRun]:
    """Every run of the buyers sweep (``buyers_sweep``), by buyers then as the strategies ran.

    The headline buyer count's runs are the table's rows (``strategies``), measured once and
    not stored twice, so they are read from there. Results without a sweep (older ones, or
    runs without ``--buyers-sweep``) give [].
    """
    sweep = dig(data, "buyers_sweep") or {}
    counts, headline = dig(sweep, "buyers") or [], dig(sweep, "headline")
    runs = []
    for buyers in counts:
        items = dig(data, "strategies") if buyers == headline else dig(sweep, "points", str(buyers))
        runs += [
            SweepRun(
                int(buyers),
                str(dig(item, "strategy")),
                num(dig(item, "http", "paid_per_second")),
                num(dig(item, "http", "latency_ms_201", "p99")),
                dig(item, "invariants", "ok") is True,
            )
            for item in items or []
        ]
    return runs


def purchase_details(data: dict[str, Any]) -> str:
    """The buyers sweep as Markdown for BENCHMARKS.md: paid orders/s and p99 per strategy
    at each buyer count, and its figure; a hint when the results have no sweep."""
    runs = purchase_sweep(data)
    if not runs:
        return (
            "Buyers sweep not measured yet: `make bench` (or `python -m loadtests bench"
            " purchase --buyers-sweep 50,200,500`) runs every strategy at 50, 200 and 500"
            " buyers and draws paid orders/s and p99 against them."
        )
    counts = sorted({r.buyers for r in runs})
    by_run = {(r.strategy, r.buyers): r for r in runs}
    lines = [
        "| strategy | " + " | ".join(f"{n:,} buyers: paid/s, p99" for n in counts) + " |",
        "| --- |" + " ---: |" * len(counts),
    ]
    for strategy in dict.fromkeys(r.strategy for r in runs):
        cells = [_sweep_cell(by_run.get((strategy, n))) for n in counts]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    headline = num(dig(data, "buyers_sweep", "headline")) or 0
    listings = num(dig(data, "load", "listings")) or 1
    where = "one listing" if listings == 1 else f"{listings:,.0f} listings"
    return "\n\n".join([
        f"Buyers sweep on {where}, measured {data.get('date')}: paid orders/s and the p99 of"
        f" paid orders at each buyer count; the {headline:,.0f}-buyer column is the table's"
        " run, and pgbench's references (they do not depend on the buyers) are the table's.",
        "\n".join(lines),
        "![purchase: paid orders/s and p99 by buyers](loadtests/results/purchase-buyers.png)",
    ])  # fmt: skip


def _sweep_cell(run: SweepRun | None) -> str:
    if run is None:
        return "-"
    text = shown("{:,.1f}, {:,.0f} ms", run.paid_per_second, run.p99_ms) or "not measured"
    return text if run.invariants_ok else f"{text}, invariants FAILED"


def realtime_rows(data: dict[str, Any], big: dict[str, Any]) -> list[Row]:
    """Relay, fan-out and idle rows; the 20,000-socket fan-out from its own run (``big``)."""
    relay, idle = dig(data, "relay") or {}, dig(data, "idle") or {}
    p99 = num(dig(relay, "paced", "commit_to_publish_metric", "p99_ms"))
    rate = num(dig(relay, "paced", "insert", "rate"))
    sustained = num(dig(relay, "sustained", "received_per_second"))
    kept = dig(relay, "sustained", "kept_up")
    rows = [
        row("relay commit-to-publish p99 at 1,000 events/s", "< 10 ms", "realtime", data,
            figure=p99, ok=None if p99 is None else p99 < 10,
            text=shown("{} ms at {:,.0f} rows/s", p99, rate or None)),
        row("relay sustained events/s, lag not growing", ">= 5,000 events/s, lag flat",
            "realtime", data, figure=sustained,
            ok=None if sustained is None or kept is None else sustained >= 5000 and kept is True,
            text=shown("{:,.0f} events/s published, kept up: {}", sustained, kept)),
    ]  # fmt: skip
    # 2,000 sockets: no worse than the 20 ms of when the target was set (same 1-ms bins).
    for want, bound, inclusive, source, run in (
        (2000, 20.0, True, "realtime", data),
        (20000, 250.0, False, "realtime-20k", big),
    ):
        fan_p99 = num(dig(run, "fanout", "steady", "latency_ms", "p99"))
        hit = num(dig(run, "fanout", "sockets")) == want and fan_p99 is not None
        bare_p99 = num(dig(run, "fanout", "steady_bare", "latency_ms", "p99")) if hit else None
        rows.append(
            row(f"fan-out p99 commit-to-receive, {want:,} sockets on 2 instances",
                f"{'<=' if inclusive else '<'} {bound:.0f} ms", source, run,
                figure=fan_p99 if hit else None, reference=bare_p99,
                ok=(fan_p99 is not None and (fan_p99 <= bound if inclusive else fan_p99 < bound))
                if hit else None,
                text=f"{fan_p99} ms" if hit else None,
                ref_text=shown("bare aiohttp, trigger-to-receive: {} ms", bare_p99),
                note="" if hit else f"no {source}.json run with {want:,} sockets")
        )  # fmt: skip
    best = dig(data, "fanout", "burst", "best") or {}
    jangteo = num(dig(best, "jangteo", "messages_per_second_per_instance"))
    for system, goal, name, limit in (
        ("bare", ">= 200%", "bare aiohttp loop", 2.0),
        ("socketio", ">= 4x", "python-socketio", 4.0),
    ):
        ref = num(dig(best, system, "messages_per_second_per_instance"))
        shown_as = "bare aiohttp" if system == "bare" else name
        rows.append(
            row(f"fan-out delivered msgs/s per instance vs {shown_as}", goal, "realtime", data,
                figure=jangteo, reference=ref,
                ok=None if jangteo is None or not ref else jangteo / ref >= limit,
                text=shown("{:,.0f} msgs/s", jangteo),
                ref_text=shown("{}: {:,.0f} msgs/s", name, ref or None))
        )  # fmt: skip
    rows += sse_rows(data)
    sockets = num(dig(idle, "sockets"))
    kib, bare_kib = (num(dig(idle, side, "kib_per_connection")) for side in ("jangteo", "bare"))
    still_open = num(dig(idle, "jangteo", "sockets_open_at_measurement")) or 0.0
    capped = dig(idle, "capped_by") is not None and sockets is not None and sockets < 20000
    rows += [
        row("idle WebSockets per instance, heartbeats on", ">= 20,000", "realtime", data,
            figure=sockets, ok=None if sockets is None or sockets < 20000 else True,
            text=shown("{:,.0f} opened, {:,.0f} open after a heartbeat", sockets, still_open),
            note=f"open files limit {dig(data, 'machine', 'open_files_limit')}: at most 19,800"
            " sockets on this machine",
            status="capped by this machine's open files limit" if capped else None),
        row(f"idle memory per connection vs bare aiohttp ({sockets or 0:,.0f} sockets)",
            "<= 1.25x", "realtime", data, figure=kib, reference=bare_kib,
            ok=None if kib is None or not bare_kib else kib / bare_kib <= 1.25,
            text=shown("{} KiB", kib), ref_text=shown("bare aiohttp: {} KiB", bare_kib)),
    ]  # fmt: skip
    return rows


def sse_rows(data: dict[str, Any]) -> list[Row]:
    """The SSE fan-out beside the WebSocket fan-out of the same run: shown, no target."""
    sse = dig(data, "sse") or {}
    # The WebSocket figures only as the same run's reference of a measured SSE phase.
    fanout = dig(data, "fanout") if sse else None
    streams = num(dig(sse, "streams"))
    name = f"SSE fan-out, {streams or 2000:,.0f} event streams on 2 instances"
    rate, ws_rate = (
        num(dig(phase, "burst", "best", system, "messages_per_second_per_instance"))
        for phase, system in ((sse, "sse"), (fanout, "jangteo"))
    )
    p99, ws_p99 = (num(dig(phase, "steady", "latency_ms", "p99")) for phase in (sse, fanout))
    goal = "shown beside the WebSocket fan-out of the same run"
    return [
        row(f"{name}: delivered msgs/s per instance", goal, "realtime",
            data if rate is not None else {}, figure=rate, reference=ws_rate,
            status="shown" if rate is not None else None, text=shown("{:,.0f} msgs/s", rate),
            ref_text=shown("WebSocket: {:,.0f} msgs/s", ws_rate), docs=(BENCHMARKS_MD,)),
        row(f"{name}: p99 commit-to-receive", goal, "realtime",
            data if p99 is not None else {}, figure=p99, reference=ws_p99,
            status="shown" if p99 is not None else None, text=shown("{} ms", p99),
            ref_text=shown("WebSocket: {} ms", ws_p99), docs=(BENCHMARKS_MD,)),
    ]  # fmt: skip


def storm_rows(data: dict[str, Any]) -> list[Row]:
    """The reconnect storm: how soon every app was live on the survivor with nothing lost or
    doubled, and how many PostgreSQL replay queries its resumes cost."""
    storm = dig(data, "storm") or {}
    sockets, channels = num(dig(data, "load", "sockets")), num(dig(data, "load", "channels"))
    goal_s = num(dig(data, "targets", "all_live_s")) or 15.0
    all_live, most = (num(dig(storm, "recovery", f"seconds_to_{p}pct")) for p in (100, 99))
    resume = dig(storm, "recovery", "resume_ms") or {}
    audit_ok = dig(storm, "audit", "ok")
    measured = data if storm else {}
    title = shown("reconnect storm: {:,.0f} sockets x {:.0f} channels leave a killed instance",
                  sockets, num(dig(data, "load", "per_socket")))  # fmt: skip
    log = num(dig(storm, "resumes", "log_reads"))
    by = dig(storm, "resumes", "by_source") or {}
    return [
        row(title or "reconnect storm", f"100% live again within {goal_s:g} s of the kill;"
            " nothing lost, nothing doubled", "storm", measured, figure=all_live,
            ok=None if audit_ok is None else audit_ok is True and all_live is not None
            and all_live <= goal_s,
            text=shown("100% live again in {:.1f} s (99% in {:.1f} s), resume p50 {:,.0f} / p99"
                       " {:,.0f} ms, audit {}", all_live, most, resume.get("p50"),
                       resume.get("p99"), "OK" if audit_ok else "FAILED"),
            docs=(BENCHMARKS_MD,)),
        row("reconnect storm: PostgreSQL replay queries of the survivor's resumes",
            "<= one per distinct channel", "storm", measured if log is not None else {},
            figure=log, reference=channels, ok=None if log is None or not channels
            else log <= channels,
            text=shown("{:,.0f} log reads; {:,.0f} resumes from memory, {:,.0f} shared",
                       log, num(by.get("memory")), num(by.get("shared"))),
            ref_text=shown("{:,.0f} distinct channels", channels), docs=(BENCHMARKS_MD,)),
    ]  # fmt: skip


def sustained_rate(count: Any) -> float | None:
    return num(dig(count, "sustained", "committed"))


def scaling_rows(data: dict[str, Any]) -> list[Row]:
    """Relay partitions against one partition, and Redis Cluster against one Redis: the
    headline rows in both documents, the details in BENCHMARKS.md, and one summary row of
    the cluster's cost in README.md."""
    counts = dig(data, "partitions", "counts") or []
    one = num(dig(data, "partitions", "one_partition_rate"))
    ref = shown("1 partition: {:,.0f} events/s", one)
    rated = [c for c in counts if sustained_rate(c) is not None and dig(c, "partitions") != 1]
    best = max(rated, key=lambda c: sustained_rate(c) or 0.0) if rated else None
    rate = sustained_rate(best)
    rows = [
        row("relay events/s sustained (lag flat), best partition count vs 1, 2 instances",
            ">= 2x the single leader", "scaling", data if best else {}, figure=rate,
            reference=one, least=2.0, ref_text=ref,
            text=shown("{:,.0f} events/s with {} partitions", rate, dig(best, "partitions")))
    ]  # fmt: skip
    for count in counts:
        n = dig(count, "partitions")
        if n == 1:
            continue
        rate = sustained_rate(count)
        rows.append(
            row(f"relay events/s sustained (lag flat), {n} partitions vs 1, 2 instances",
                "shown", "scaling", data, figure=rate, reference=one,
                status="shown" if rate is not None and one else "not measured",
                text=shown("{:,.0f} events/s", rate), ref_text=ref, docs=(BENCHMARKS_MD,))
        )  # fmt: skip
    by_n = {dig(c, "partitions"): c for c in counts}
    paced_n = 4 if 4 in by_n else max((n for n in by_n if n != 1), default=4)
    p99, one_p99 = (num(dig(by_n.get(n), "paced", "publish_p99_ms")) for n in (paced_n, 1))
    at, one_at = (num(dig(by_n.get(n), "paced", "committed")) for n in (paced_n, 1))
    paced_rate = num(dig(data, "load", "paced_rate")) or 1000.0
    rows.append(
        row(f"relay commit-to-publish p99 at {paced_rate:,.0f} events/s, {paced_n} partitions"
            " on 2 instances", "< 10 ms", "scaling", data if p99 is not None else {},
            figure=p99, reference=one_p99, ok=None if p99 is None else p99 < 10,
            text=shown("{} ms at {:,.0f} rows/s", p99, at),
            ref_text=shown("1 partition: {} ms at {:,.0f} rows/s", one_p99, one_at),
            docs=(BENCHMARKS_MD,))
    )  # fmt: skip
    summary = dig(data, "cluster", "summary") or {}
    costs = []
    for kind, name, unit in cluster_kinds(data):
        single, cluster = dig(summary, kind, "single") or {}, dig(summary, kind, "cluster") or {}
        tput = (num(dig(cluster, "msgs_per_second")), num(dig(single, "msgs_per_second")))
        lat = (num(dig(cluster, "p99_ms")), num(dig(single, "p99_ms")))
        costs += [num(dig(summary, kind, "throughput_cost_pct")),
                  num(dig(summary, kind, "p99_cost_pct"))]  # fmt: skip
        rows += [
            row(f"{name}: Redis Cluster vs one Redis, {unit}", ">= 90% of one Redis's",
                "scaling", data if tput[0] is not None else {}, figure=tput[0],
                reference=tput[1], least=0.9, text=shown("{:,.0f} " + unit, tput[0]),
                ref_text=shown("one Redis: {:,.0f}", tput[1]), docs=(BENCHMARKS_MD,)),
            row(f"{name}: Redis Cluster vs one Redis, p99", "<= 1.1x one Redis's",
                "scaling", data if lat[0] is not None else {}, figure=lat[0],
                reference=lat[1], ok=None if not lat[0] or not lat[1] else lat[0] / lat[1] <= 1.1,
                text=shown("{} ms", lat[0]), ref_text=shown("one Redis: {} ms", lat[1]),
                docs=(BENCHMARKS_MD,)),
        ]  # fmt: skip
    measured_all = all(cost is not None for cost in costs)
    worst = max((c for c in costs if c is not None), default=None)
    cost_text = None
    if measured_all:
        # As changes on the cluster: throughput's sign turned (a cost is throughput lost).
        changes = [-(cost or 0.0) if n % 2 == 0 else cost or 0.0 for n, cost in enumerate(costs)]
        cost_text = "on the cluster: fan-out msgs/s {:+.0f}%, p99 {:+.0f}%; chat msgs/s {:+.0f}%,"
        cost_text = (cost_text + " p99 {:+.0f}%").format(*changes)
    rows.append(
        row("Redis Cluster (3 masters) vs one Redis: fan-out and chat msgs/s and p99",
            "costs <= 10%", "scaling", data if measured_all else {}, text=cost_text,
            ok=None if worst is None or not measured_all else worst <= 10.0,
            ref_text="one Redis, same run", docs=(README_MD,))
    )  # fmt: skip
    seen = [
        run["redis_connections"]
        for kind in ("fanout", "chat")
        for run in dig(data, "cluster", "sessions", kind, "cluster") or []
        if run.get("redis_connections")
    ]
    pools = sorted(
        {int(i["command_pool"]) for c in seen for i in (dig(c, "per_instance") or {}).values()}
    )
    rows.append(
        row("Redis Cluster: connections per instance", "one event subscription per master,"
            " plus the command pool", "scaling", data if seen else {},
            ok=None if not seen else all(c.get("as_intended") for c in seen),
            text=shown("events: 1 per master (of {}), near-cache 1, command pool {}",
                       len(dig(seen[0], "masters") or []) if seen else None,
                       "-".join(str(p) for p in (pools[0], pools[-1])) if pools else None),
            docs=(BENCHMARKS_MD,))
    )  # fmt: skip
    return rows


def cluster_kinds(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The cluster comparison's sessions: kind, how they are named, their throughput unit."""
    sockets = num(dig(data, "cluster", "fanout_options", "sockets")) or 2000
    rooms = num(dig(data, "cluster", "chat_options", "rooms")) or 500
    return [
        ("fanout", f"fan-out, {sockets:,.0f} sockets on 2 instances", "msgs/s per instance"),
        ("chat", f"chat, {rooms:,.0f} rooms on 2 instances", "msgs/s"),
    ]


def scaling_details(data: dict[str, Any]) -> str:
    """The partition sweep, the cluster comparison and the connections as Markdown."""
    if not data:
        return "Not measured yet: `python -m loadtests bench scaling`."
    parts = [f"Measured {data.get('date')}; every figure in"
             " [loadtests/results/scaling.json](loadtests/results/scaling.json)."]  # fmt: skip
    counts = dig(data, "partitions", "counts") or []
    if counts:
        paced = num(dig(data, "load", "paced_rate")) or 1000.0
        lines = [
            f"| partitions | led by | publish p50 / p99 at {paced:,.0f}/s offered (committed)"
            " | sustained events/s"
            " | x 1 partition | publish p50 / p99 there | cores: PostgreSQL / Redis / jangteo"
            " / load / others | the sweep stopped |",
            "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        times = dig(data, "partitions", "times_one_partition") or {}
        for count in counts:
            n, best = count["partitions"], count.get("sustained") or {}
            led = "; ".join(f"{name}: {ours}" for name, ours in
                            (dig(count, "leadership", "leading") or {}).items())  # fmt: skip
            split = best.get("cpu_split") or {}
            lines.append(
                f"| {n} | {led} | {dig(count, 'paced', 'publish_p50_ms')} /"
                f" {dig(count, 'paced', 'publish_p99_ms')} ms"
                f" ({dig(count, 'paced', 'committed') or 0:,.0f}/s)"
                f" | {best.get('committed', 0):,.0f} | {times.get(str(n)) or '-'}x"
                f" | {best.get('publish_p50_ms')} / {best.get('publish_p99_ms')} ms"
                f" | {' / '.join(str(split.get(k, '-')) for k in CPU_KINDS)}"
                f" | {count.get('stopped')} |"
            )
        parts.append("\n".join(lines))
        lines = [
            "| partitions | offered/s | committed/s | publish p50 / p99 ms | receive p99 ms"
            " | last event after last commit | cores: PostgreSQL (relay / inserts / pools /"
            " background) / Redis / jangteo / load | CPU µs per event: relay's PostgreSQL"
            " sessions / jangteo | kept up |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
        ]
        for count in counts:
            for step in [count["paced"], *count["steps"]]:
                split, cores = step["cpu_split"], step["cpu"]["cores_used"]
                pg = " / ".join(
                    str(cores.get(f"postgres{k}", 0.0))
                    for k in (": relay sessions", ": inserts (load)",
                              ": instance pools and others", " (background)")
                )  # fmt: skip
                verdict = "yes" if step["kept_up"] else "no: " + "; ".join(step["why"])
                us = step.get("cpu_us_per_event") or {}
                lines.append(
                    f"| {count['partitions']} | {step['offered']:,.0f} | {step['committed']:,.0f}"
                    f" | {step['publish_p50_ms']} / {step['publish_p99_ms']}"
                    f" | {dig(step, 'commit_to_receive_ms', 'p99')}"
                    f" | {step['drain_after_last_commit_s']} s"
                    f" | {split['postgresql']} ({pg}) / {split['redis']} / {split['jangteo']}"
                    f" / {split['load']} | {us.get('postgres_relay_sessions')} /"
                    f" {us.get('jangteo')} | {verdict} |"
                )
        parts.append("Every run of the sweep (the first of each count is the paced one):")
        parts.append("\n".join(lines))
    summary = dig(data, "cluster", "summary")
    if summary:
        lines = [
            "| | one Redis | Redis Cluster | the cluster's cost |",
            "| --- | ---: | ---: | ---: |",
        ]
        for kind, name, _ in cluster_kinds(data):
            figures = summary[kind]
            for key, unit, cost in (("msgs_per_second", "msgs/s", "throughput_cost_pct"),
                                    ("p99_ms", "p99 ms", "p99_cost_pct")):  # fmt: skip
                single, cluster = dig(figures, "single", key), dig(figures, "cluster", key)
                lines.append(
                    f"| {name}, {unit} | {single:,} | {cluster:,} | {figures[cost]:+}% |"
                    if single is not None and cluster is not None and figures[cost] is not None
                    else f"| {name}, {unit} | {single} | {cluster} | - |"
                )
        parts.append("\n".join(lines))
        lines = [
            "| session | instance | event links per master | on replicas | near-cache"
            " | command pool | in all | as intended |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for kind in ("fanout", "chat"):
            for mode in ("cluster", "single"):
                runs = dig(data, "cluster", "sessions", kind, mode) or []
                for number, run in enumerate(runs, 1):
                    found = run.get("redis_connections") or {}
                    for owner, c in (found.get("per_instance") or {}).items():
                        links = ", ".join(f"{n}" for n in c["events_per_master"].values())
                        lines.append(
                            f"| {kind} {number}, {mode} Redis | {owner} | {links}"
                            f" | {c['events_on_replicas']}"
                            f" | {c['near_cache']} | {c['command_pool']} | {c['total']}"
                            f" | {'yes' if c['as_intended'] else 'no'} |"
                        )
        parts.append("Redis connections of each instance before it stopped (`CLIENT LIST`):")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def fmt_ratio(ratio: Any, goal: str) -> str:
    value = num(ratio)
    if value is None:
        return "-"
    return f"{value:.0%}" if "%" in goal or "ceiling" in goal else f"{value:.2f}x"


def table(rows: list[Row]) -> str:
    lines = [
        "| benchmark | figure | reference (same run) | ratio | target | status |",
        "| --- | ---: | --- | ---: | --- | --- |",
    ]
    for r in rows:
        status = f"**{r['status']}**" if r["status"] in ("met", "missed") else r["status"]
        cells = (
            r["target"],
            r["figure_text"],
            r["reference_text"] or "-",
            r.get("ratio_text") or fmt_ratio(r["ratio"], r["goal"]),
        )
        lines.append("| " + " | ".join((*cells, r["goal"], status)) + " |")
    return "\n".join(lines)


def crowd_rows(data: dict[str, Any]) -> list[Row]:
    """50,000 sockets on one instance of several workers (bench crowd)."""
    crowd = dig(data, "crowd") or {}
    sockets, workers = num(dig(crowd, "sockets")), num(dig(crowd, "workers"))
    held = num(dig(crowd, "jangteo", "sockets_open_at_measurement"))
    p99, bare_p99 = (num(dig(crowd, *side, "latency_ms", "p99")) for side in ((), ("bare",)))
    kib, bare_kib = (num(dig(crowd, side, "kib_per_socket")) for side in ("jangteo", "bare"))
    name = f"{sockets or 50000:,.0f} sockets on one instance ({workers or 0:.0f} workers)"
    return [
        row(f"{name}, heartbeats on, held", ">= 50,000", "crowd", data, figure=held,
            ok=None if held is None else held >= 50000,
            text=shown("{:,.0f} open after a heartbeat", held)),
        row(f"one event to {name}, p99 commit-to-receive", "< 500 ms", "crowd", data,
            figure=p99, reference=bare_p99, ok=None if p99 is None else p99 < 500,
            text=shown("{} ms", p99),
            ref_text=shown("bare aiohttp, trigger-to-receive: {} ms", bare_p99)),
        row(f"memory per socket, {name}, vs bare aiohttp", "<= 1.25x", "crowd", data,
            figure=kib, reference=bare_kib,
            ok=None if kib is None or not bare_kib else kib / bare_kib <= 1.25,
            text=shown("{} KiB", kib), ref_text=shown("bare aiohttp: {} KiB", bare_kib)),
    ]  # fmt: skip


def tracing_rows(data: dict[str, Any]) -> list[Row]:
    """bench tracing: tracing off against the code before it on the cached read (no
    measurable difference: the per-round ratios of CPU per request straddle 1), and the
    feed read's CPU per request traced at each ratio beside off, both round by round."""
    runs = {
        (dig(each, 0, "endpoint"), dig(each, 0, "server")): each
        for each in dig(data, "rounds") or []
        if isinstance(each, list) and each
    }

    def cpu(endpoint: str, server: str) -> list[float | None]:
        return [num(dig(run, "cpu_us_per_request")) for run in runs.get((endpoint, server)) or []]

    def compared(r: Row, spread: RoundRatios | None) -> Row:
        r["ratio"] = None if spread is None else spread.median
        r["round_ratios"] = None if spread is None else list(spread.ratios)
        r["ratio_text"] = "-" if spread is None else spread.text()
        return r

    def us(value: float | None, name: str = "") -> str | None:
        return shown(f"{name}{{:.0f}} µs/request", value)

    off, before = (
        measured(data, TRACING_CACHED, s, "cpu_us_per_request") for s in ("off", "before")
    )
    spread = round_ratios(cpu(TRACING_CACHED, "off"), cpu(TRACING_CACHED, "before"))
    rows = [compared(
        row("cached GET /listings/{id} CPU per request, tracing off vs the code before it",
            "no measurable difference: 1.00x inside the rounds' range", "tracing",
            data if spread else {}, figure=off, reference=before,
            ok=None if spread is None else spread.low <= 1.0 <= spread.high,
            text=us(off), ref_text=us(before, "before tracing: "),
            note="a difference smaller than the range of the per-round ratios is noise",
            docs=(BENCHMARKS_MD,)),
        spread)]  # fmt: skip
    off = measured(data, TRACING_FEED, "off", "cpu_us_per_request")
    ratios = [num(ratio) for ratio in dig(data, "load", "ratios") or TRACING_RATIOS]
    for ratio in [ratio for ratio in ratios if ratio is not None]:
        variant = traced_variant(ratio)
        on = measured(data, TRACING_FEED, variant, "cpu_us_per_request")
        spread = round_ratios(cpu(TRACING_FEED, variant), cpu(TRACING_FEED, "off"))
        rows.append(compared(
            row(f"feed first page CPU per request, tracing on ({ratio * 100:g}% sampled) vs off",
                "shown beside tracing off, median of the rounds", "tracing",
                data if spread else {}, figure=on, reference=off,
                status="shown" if spread else None, text=us(on), ref_text=us(off, "off: "),
                docs=(BENCHMARKS_MD,)),
            spread))  # fmt: skip
    return rows


def main() -> None:
    data = {name: load(name) for name in SOURCES}
    rows = listing_rows(data["listings"]) + purchase_rows(data["purchase"], data["purchase-spread"])
    rows += realtime_rows(data["realtime"], data["realtime-20k"]) + crowd_rows(data["crowd"])
    rows += scaling_rows(data["scaling"])
    rows += storm_rows(data["storm"])
    rows += tracing_rows(data["tracing"])
    counted = [r for r in rows if BENCHMARKS_MD in r["docs"]]
    report = {
        "targets": rows,
        "summary": {
            s: sum(r["status"] == s for r in counted) for s in ("met", "missed", "not measured")
        },
        "sources": {
            f"loadtests/results/{name}.json": {
                "present": bool(d),
                "measured_at": d.get("date") or d.get("started"),
                "machine": d.get("machine"),
                "versions": d.get("versions"),
            }
            for name, d in data.items()
        },
    }
    (RESULTS / "bench-latest.json").write_text(json.dumps(report, indent=2) + "\n")
    details = {
        "scaling": scaling_details(data["scaling"]),
        "purchase": purchase_details(data["purchase"]),
    }
    for path in DOCS:
        text = between(
            path.read_text(), START, END, table([r for r in rows if path.name in r["docs"]])
        )
        if path.name == BENCHMARKS_MD:
            for name, (start, end) in DETAILS.items():
                if start in text:
                    text = between(text, start, end, details[name])
        path.write_text(text)
    print(table(counted))


def between(text: str, start: str, end: str, inside: str) -> str:
    """``text`` with what stands between the markers replaced by ``inside``."""
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{inside}\n{end}{tail}"


# ----------------------------------------------------------------------------- helpers


def text_table(head: Sequence[str], rows: Iterable[Sequence[Any]], align: str) -> str:
    """Fixed-width columns, ``align`` one ``l`` (left) or ``r`` (right) per column; a row
    may stop short."""
    cells = [list(head), *([str(cell) for cell in line] for line in rows)]
    widths = [max(len(line[i]) for line in cells if i < len(line)) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(line, widths, align, strict=False)
        ).rstrip()
        for line in cells
    )


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    return plt


def bars(axes: Any, xs: Sequence[Any], values: Sequence[float], fmt: str, **style: Any) -> None:
    """Bars at ``xs`` (positions or labels), each labelled with its value as ``fmt`` says."""
    drawn = axes.bar(xs, values, **style)
    axes.bar_label(drawn, labels=[fmt.format(value) for value in values], fontsize=8, padding=2)


def finish(plt: Any, figure: Any, caption: str, path: Path) -> None:
    """Caption bottom right, tight layout, save, close."""
    figure.text(0.99, 0.01, caption, ha="right", va="bottom", fontsize=7, color="#555555")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path)
    plt.close(figure)
