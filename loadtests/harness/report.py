"""Benchmark report: the benchmark targets against the latest results.

Run as ``python -m loadtests report`` (the last step of ``make bench``). It reads
``loadtests/results/*.json``, writes ``loadtests/results/bench-latest.json`` and rewrites the
table between the ``bench-table`` markers in ``BENCHMARKS.md`` and ``README.md``. It runs
nothing: a target whose figure or same-run reference is missing from the results is "not
measured".
"""

from __future__ import annotations

import json
from typing import Any

from loadtests.harness.processes import RESULTS, ROOT

DOCS = (ROOT / "BENCHMARKS.md", ROOT / "README.md")  # each holds the table between markers
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
SOURCES = ("http", "listings", "purchase", "realtime", "realtime-20k", "chat", "loadtest-latest")
Row = dict[str, Any]
GOAL_BUY = ">= 50% of pgbench, same transaction and connections; no oversell, no lost money"


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


def load(name: str) -> dict[str, Any]:
    try:
        data = json.loads((RESULTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def row(target: str, goal: str, src: str, data: dict[str, Any], **kw: Any) -> Row:
    """One target; status from ``ok`` (None: not measured), ratio = figure / reference."""
    figure, reference, ok = num(kw.get("figure")), num(kw.get("reference")), kw.get("ok")
    ratio = kw.get("ratio")
    if ratio is None and figure is not None and reference:
        ratio = round(figure / reference, 3)
    status = "not measured" if ok is None else ("met" if ok else "missed")
    return {
        "target": target,
        "goal": goal,
        "figure": figure,
        "figure_text": kw.get("text") or "not measured",
        "reference": reference,
        "reference_text": kw.get("ref_text") or "",
        "ratio": ratio,
        "status": kw.get("status", status),
        "note": kw.get("note", ""),
        "source": f"loadtests/results/{src}.json" if data else None,
        "measured_at": data.get("date") or data.get("started"),
    }


def result(data: dict[str, Any], endpoint: str, server: str) -> float | None:
    for item in dig(data, "results") or []:
        if dig(item, "endpoint") == endpoint and dig(item, "server") == server:
            return num(dig(item, "requests_per_second"))
    return None


def listing_rows(data: dict[str, Any]) -> list[Row]:
    fig, ref = result(data, "cached detail", "jangteo"), result(data, "cached detail", "baseline")
    ratio = round(fig / ref, 3) if fig is not None and ref else None
    rows = [
        row(
            "cached GET /listings/{id} vs bare aiohttp, same bytes",
            ">= 70% of requests/s",
            "listings",
            data,
            figure=fig,
            reference=ref,
            ok=None if ratio is None else ratio >= 0.7,
            text=f"{fig:,.0f} req/s" if fig is not None else None,
            ref_text=f"{ref:,.0f} req/s" if ref is not None else None,
        )
    ]
    uncached = dig(data, "uncached") or {}
    best = {
        dig(item, "server"): item
        for item in dig(data, "results") or []
        if dig(item, "endpoint") == "uncached detail"
    }

    def rps(server: str) -> float | None:
        return num(dig(best, server, "requests_per_second"))

    def p99(server: str) -> float | None:
        return num(dig(best, server, "latency_ms", "p99"))

    connections = dig(data, "load", "connections")
    pooled = num(dig(data, "load", "pgbench_clients"))
    for server, goal, least in (
        ("aiohttp + asyncpg", ">= 1.0x requests/s", 1.0),
        ("FastAPI + uvicorn + asyncpg", ">= 1.3x requests/s", 1.3),
    ):
        ours, theirs = rps("jangteo"), rps(server)
        ratio = round(ours / theirs, 3) if ours is not None and theirs else None
        shown = f"bare {server}" if server.startswith("aiohttp") else server
        rows.append(
            row(
                f"uncached GET /listings/{{id}} vs {shown}",
                goal,
                "listings",
                data if ratio is not None else {},
                figure=ours,
                reference=theirs,
                ok=None if ratio is None else ratio >= least,
                text=f"{ours:,.0f} req/s" if ours is not None else None,
                ref_text=f"{theirs:,.0f} req/s" if theirs is not None else None,
            )
        )
    ours_p99, bare_p99 = p99("jangteo"), p99("aiohttp + asyncpg")
    ratio = num(uncached.get("p99_vs_bare"))
    rows.append(
        row(
            "uncached GET /listings/{id} p99, 4x client connections per pooled one",
            "<= 1.5x the bare aiohttp + asyncpg handler's p99",
            "listings",
            data if ratio is not None else {},
            figure=ours_p99,
            reference=bare_p99,
            ratio=ratio,
            ok=None if ratio is None else ratio <= 1.5,
            text=f"{ours_p99:.1f} ms at {connections} connections"
            if ours_p99 is not None
            else None,
            ref_text=f"{bare_p99:.1f} ms, same {pooled:.0f} pooled connections"
            if bare_p99 is not None and pooled is not None
            else None,
        )
    )
    unc, pg = (
        result(data, "uncached detail", "jangteo"),
        num(dig(data, "pgbench", "uncached detail", "tps")),
    )
    clients = dig(data, "load", "pgbench_clients")
    rows.append(
        row(
            "uncached GET /listings/{id} vs pgbench, same SELECT (ceiling)",
            "shown as the database's ceiling",
            "listings",
            data,
            figure=unc,
            reference=pg,
            ok=None,
            status="shown" if unc is not None and pg is not None else "not measured",
            text=f"{unc:,.0f} req/s" if unc is not None else None,
            ref_text=f"{pg:,.0f} tx/s, {clients} connections" if pg is not None else None,
        )
    )
    return rows


def purchase_rows(data: dict[str, Any]) -> list[Row]:
    workers, pool = (
        num(dig(data, "load", "server_workers")),
        num(dig(data, "load", "pg_pool_max_per_worker")),
    )
    conns = str(int(workers * pool)) if workers and pool else None
    rows = []
    for item in dig(data, "strategies") or []:
        name, script = dig(item, "strategy"), dig(item, "baseline_script")
        paid = num(dig(item, "http", "paid_per_second"))
        ref = num(dig(item, "baseline", conns, "paid_per_second")) if conns else None
        checks = dig(item, "invariants", "checks") or {}
        safe = checks.get("no_oversell") is True and checks.get("money_conserved") is True
        ok = None if paid is None or not ref else safe and paid / ref >= 0.5
        rows.append(
            row(
                f"500 buyers on one listing, {name}",
                GOAL_BUY,
                "purchase",
                data,
                figure=paid,
                reference=ref,
                ok=ok,
                text=f"{paid:,.1f} paid/s, invariants {'OK' if safe else 'FAILED'}"
                if paid
                else None,
                ref_text=f"pgbench -c {conns}, {script} script: {ref:,.1f} tx/s" if ref else None,
                note=f"pgbench -c 500 share: {dig(item, 'ratio_vs_pgbench', '500')}",
            )
        )
    return rows or [row("500 buyers on one listing", ">= 50% of pgbench", "purchase", data)]


def realtime_rows(data: dict[str, Any], big: dict[str, Any]) -> list[Row]:
    """Relay, fan-out and idle rows; the 20,000-socket fan-out from its own run (``big``)."""
    relay, fan, idle = dig(data, "relay") or {}, dig(data, "fanout") or {}, dig(data, "idle") or {}
    p99 = num(dig(relay, "paced", "commit_to_publish_metric", "p99_ms"))
    rate = num(dig(relay, "paced", "insert", "rate"))
    sus = num(dig(relay, "sustained", "received_per_second"))
    kept = dig(relay, "sustained", "kept_up")
    best = dig(fan, "burst", "best") or {}
    jt = num(dig(best, "jangteo", "messages_per_second_per_instance"))
    bare = num(dig(best, "bare", "messages_per_second_per_instance"))
    sio = num(dig(best, "socketio", "messages_per_second_per_instance"))
    n_idle = num(dig(idle, "sockets"))
    kib, bare_kib = (
        num(dig(idle, "jangteo", "kib_per_connection")),
        num(dig(idle, "bare", "kib_per_connection")),
    )
    fd = dig(data, "machine", "open_files_limit")
    capped = dig(idle, "capped_by") is not None
    still_open = num(dig(idle, "jangteo", "sockets_open_at_measurement")) or 0.0
    rows = [
        row(
            "relay commit-to-publish p99 at 1,000 events/s",
            "< 10 ms",
            "realtime",
            data,
            figure=p99,
            ok=None if p99 is None else p99 < 10,
            text=f"{p99} ms at {rate:,.0f} rows/s" if p99 is not None and rate else None,
        ),
        row(
            "relay sustained events/s, lag not growing",
            ">= 5,000 events/s, lag flat",
            "realtime",
            data,
            figure=sus,
            ok=None if sus is None or kept is None else sus >= 5000 and kept is True,
            text=f"{sus:,.0f} events/s published, kept up: {kept}" if sus is not None else None,
        ),
    ]
    for want, bound, source, run in (
        (2000, 50.0, "realtime", data),
        (20000, 250.0, "realtime-20k", big),
    ):
        sockets = num(dig(run, "fanout", "sockets"))
        fan_p99 = num(dig(run, "fanout", "steady", "latency_ms", "p99"))
        hit = sockets == want and fan_p99 is not None
        rows.append(
            row(
                f"fan-out p99 commit-to-receive, {want:,} sockets on 2 instances",
                f"< {bound:.0f} ms",
                source,
                run,
                figure=fan_p99 if hit else None,
                ok=(fan_p99 is not None and fan_p99 < bound) if hit else None,
                text=f"{fan_p99} ms" if hit else None,
                note="" if hit else f"no {source}.json run with {want:,} sockets",
            )
        )
    for name, goal, ref, ref_name, limit in (
        (
            "fan-out delivered msgs/s per instance vs bare aiohttp",
            ">= 90%",
            bare,
            "bare aiohttp loop",
            0.9,
        ),
        (
            "fan-out delivered msgs/s per instance vs python-socketio",
            ">= 4x",
            sio,
            "python-socketio",
            4.0,
        ),
    ):
        rows.append(
            row(
                name,
                goal,
                "realtime",
                data,
                figure=jt,
                reference=ref,
                ok=None if jt is None or not ref else jt / ref >= limit,
                text=f"{jt:,.0f} msgs/s" if jt is not None else None,
                ref_text=f"{ref_name}: {ref:,.0f} msgs/s" if ref else None,
            )
        )
    rows.append(
        row(
            "idle WebSockets per instance, heartbeats on",
            ">= 20,000",
            "realtime",
            data,
            figure=n_idle,
            ok=None if n_idle is None or n_idle < 20000 else True,
            text=None
            if n_idle is None
            else f"{n_idle:,.0f} opened, {still_open:,.0f} open after a heartbeat",
            note=f"open files limit {fd}: at most 19,800 sockets on this machine",
            **(
                {"status": "capped by this machine's open files limit"}
                if capped and n_idle is not None and n_idle < 20000
                else {}
            ),
        )
    )
    rows.append(
        row(
            f"idle memory per connection vs bare aiohttp ({n_idle or 0:,.0f} sockets)",
            "<= 1.25x",
            "realtime",
            data,
            figure=kib,
            reference=bare_kib,
            ok=None if kib is None or not bare_kib else kib / bare_kib <= 1.25,
            text=f"{kib} KiB" if kib is not None else None,
            ref_text=f"bare aiohttp: {bare_kib} KiB" if bare_kib is not None else None,
        )
    )
    return rows


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
            fmt_ratio(r["ratio"], r["goal"]),
        )
        lines.append("| " + " | ".join((*cells, r["goal"], status)) + " |")
    return "\n".join(lines)


def main() -> None:
    data = {name: load(name) for name in SOURCES}
    rows = listing_rows(data["listings"]) + purchase_rows(data["purchase"])
    rows += realtime_rows(data["realtime"], data["realtime-20k"])
    report = {
        "targets": rows,
        "summary": {
            s: sum(r["status"] == s for r in rows) for s in ("met", "missed", "not measured")
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
    for path in DOCS:
        head, rest = path.read_text().split(START, 1)
        _, tail = rest.split(END, 1)
        path.write_text(f"{head}{START}\n{table(rows)}\n{END}{tail}")
    print(table(rows))
