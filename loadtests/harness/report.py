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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from loadtests.harness.processes import RESULTS, ROOT

DOCS = (ROOT / "BENCHMARKS.md", ROOT / "README.md")  # each holds the table between markers
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
SOURCES = ("http", "listings", "purchase", "realtime", "realtime-20k", "chat", "loadtest-latest")
Row = dict[str, Any]
GOAL_BUY = ">= 50% of pgbench, same transaction and connections; no oversell, no lost money"
COLOURS = {"jangteo": "#d9534f", "baseline": "#7f8c8d", "bare": "#7f8c8d", "socketio": "#2a7ab9"}


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
) -> Row:
    """One target: ratio = figure / reference unless given, met when it is at ``least``
    (or as ``ok`` says; None: not measured). No ``data``: no source either."""
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
    }


def measured(data: dict[str, Any], endpoint: str, server: str, *keys: str) -> float | None:
    """A figure (requests/s unless ``keys`` say) of one wrk measurement of the results."""
    for item in dig(data, "results") or []:
        if dig(item, "endpoint") == endpoint and dig(item, "server") == server:
            return num(dig(item, *(keys or ("requests_per_second",))))
    return None


def req_s(value: float | None) -> str | None:
    return shown("{:,.0f} req/s", value)


def listing_rows(data: dict[str, Any]) -> list[Row]:
    fig, ref = (
        measured(data, "cached detail", "jangteo"),
        measured(data, "cached detail", "baseline"),
    )
    rows = [
        row("cached GET /listings/{id} vs bare aiohttp, same bytes", ">= 70% of requests/s",
            "listings", data, figure=fig, reference=ref, least=0.7, text=req_s(fig),
            ref_text=req_s(ref))
    ]  # fmt: skip
    ours = measured(data, "uncached detail", "jangteo")
    for server, goal, least in (
        ("aiohttp + asyncpg", ">= 1.0x requests/s", 1.0),
        ("FastAPI + uvicorn + asyncpg", ">= 1.3x requests/s", 1.3),
    ):
        theirs = measured(data, "uncached detail", server)
        name = f"bare {server}" if server.startswith("aiohttp") else server
        rows.append(
            row(f"uncached GET /listings/{{id}} vs {name}", goal, "listings",
                data if ours is not None and theirs else {}, figure=ours, reference=theirs,
                least=least, text=req_s(ours), ref_text=req_s(theirs))
        )  # fmt: skip
    ours_p99 = measured(data, "uncached detail", "jangteo", "latency_ms", "p99")
    bare_p99 = measured(data, "uncached detail", "aiohttp + asyncpg", "latency_ms", "p99")
    ratio = num(dig(data, "uncached", "p99_vs_bare"))
    rows.append(
        row("uncached GET /listings/{id} p99, 4x client connections per pooled one",
            "<= 1.5x the bare aiohttp + asyncpg handler's p99", "listings",
            data if ratio is not None else {}, figure=ours_p99, reference=bare_p99, ratio=ratio,
            ok=None if ratio is None else ratio <= 1.5,
            text=shown("{:.1f} ms at {} connections", ours_p99, dig(data, "load", "connections")),
            ref_text=shown("{:.1f} ms, same {:.0f} pooled connections", bare_p99,
                           num(dig(data, "load", "pgbench_clients"))))
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


def purchase_rows(data: dict[str, Any]) -> list[Row]:
    workers = num(dig(data, "load", "server_workers"))
    pool = num(dig(data, "load", "pg_pool_max_per_worker"))
    conns = str(int(workers * pool)) if workers and pool else None
    rows = []
    for item in dig(data, "strategies") or []:
        name, script = dig(item, "strategy"), dig(item, "baseline_script")
        paid = num(dig(item, "http", "paid_per_second"))
        ref = num(dig(item, "baseline", conns, "paid_per_second")) if conns else None
        checks = dig(item, "invariants", "checks") or {}
        safe = checks.get("no_oversell") is True and checks.get("money_conserved") is True
        verdict = "OK" if safe else "FAILED"
        ref_text = shown("pgbench -c {}, {} script: {:,.1f} tx/s", conns, script, ref or None)
        rows.append(
            row(f"500 buyers on one listing, {name}", GOAL_BUY, "purchase", data, figure=paid,
                reference=ref, ok=None if paid is None or not ref else safe and paid / ref >= 0.5,
                text=shown("{:,.1f} paid/s, invariants {}", paid or None, verdict),
                ref_text=ref_text,
                note=f"pgbench -c 500 share: {dig(item, 'ratio_vs_pgbench', '500')}")
        )  # fmt: skip
    return rows or [row("500 buyers on one listing", ">= 50% of pgbench", "purchase", data)]


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
    for want, bound, source, run in (
        (2000, 50.0, "realtime", data),
        (20000, 250.0, "realtime-20k", big),
    ):
        fan_p99 = num(dig(run, "fanout", "steady", "latency_ms", "p99"))
        hit = num(dig(run, "fanout", "sockets")) == want and fan_p99 is not None
        rows.append(
            row(f"fan-out p99 commit-to-receive, {want:,} sockets on 2 instances",
                f"< {bound:.0f} ms", source, run, figure=fan_p99 if hit else None,
                ok=(fan_p99 is not None and fan_p99 < bound) if hit else None,
                text=f"{fan_p99} ms" if hit else None,
                note="" if hit else f"no {source}.json run with {want:,} sockets")
        )  # fmt: skip
    best = dig(data, "fanout", "burst", "best") or {}
    jangteo = num(dig(best, "jangteo", "messages_per_second_per_instance"))
    for system, goal, name, limit in (
        ("bare", ">= 90%", "bare aiohttp loop", 0.9),
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
