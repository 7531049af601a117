"""The realtime benchmark's SSE fan-out: its client reads jangteo's event stream bytes however
they are split, the phase runs tiny against two real instances with every message received
once, and its figures are set beside the WebSocket fan-out's in the table."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from loadtests.benchmarks.realtime import Bench, against_websocket, sse_phase
from loadtests.clients.sse import EventStream
from loadtests.clients.ws import Fleet, LoadClients, Tally
from loadtests.harness import report
from loadtests.harness.stack import serve_settings
from realtime import frames
from realtime.sse_frames import LAST_CHUNK, chunk, comment, message

STREAMS, BURST, ROUNDS = 6, 20, 2
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


class Wire(asyncio.Transport):
    """A transport that keeps what is written and knows when it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def event(offset: int, prev: int, ts: int) -> bytes:
    return frames.event_json("listing:7", offset, prev, ts, "listing.price_changed", "{}")


def stream_bytes(now_ms: int) -> bytes:
    """What jangteo sends a stream on listing:7: the opening comment, ``subscribed``, three
    events, a heartbeat, a last ``close``, the last chunk."""
    body = [
        comment(b"jangteo event stream"),
        message(frames.control_json("subscribed", channel="listing:7", offset=10), b"10"),
        *(message(event(n, n - 1, now_ms - 5), b"%d" % n) for n in (11, 12, 13)),
        comment(),
        message(frames.control_json("close", code=1001, reason="server shutting down")),
    ]
    return HEAD + b"".join(chunk(part) for part in body) + LAST_CHUNK


async def read(pieces: list[bytes]) -> tuple[EventStream, Fleet, Wire]:
    fleet = Fleet()
    stream = EventStream(fleet, fleet.tallies.setdefault("a", Tally()), b"GET / HTTP/1.1\r\n\r\n")
    wire = Wire()
    stream.connection_made(wire)
    for piece in pieces:
        stream.data_received(piece)
    return stream, fleet, wire


async def test_the_client_reads_a_stream_however_its_bytes_are_split() -> None:
    data = stream_bytes(int(time.time() * 1000))
    for cut in range(1, len(data)):
        stream, fleet, wire = await read([data[:cut], data[cut:]])
        assert wire.written == b"GET / HTTP/1.1\r\n\r\n"
        assert fleet.tallies["a"].events == 3, cut
        assert (fleet.gaps, fleet.repeats, stream.last_offset) == (0, 0, 13), cut
        assert dict(fleet.ops) == {"subscribed": 1, "close": 1}, cut
        assert stream.opened.done() and stream.subscribed is not None
        assert stream.subscribed.done() and stream.subscribed.exception() is None
        assert dict(fleet.closes) == {"ended by the server": 1} and wire.closing, cut
    _, one_by_one, _ = await read([data[n : n + 1] for n in range(len(data))])
    assert one_by_one.tallies["a"].events == 3 and sum(one_by_one.histogram) == 3


async def test_the_client_counts_a_missed_event_and_a_repeated_one() -> None:
    body = [
        message(frames.control_json("subscribed", channel="listing:7", offset=10), b"10"),
        *(message(event(n, p, 0), b"%d" % n) for n, p in ((11, 10), (13, 12), (13, 12))),
    ]
    _, fleet, _ = await read([HEAD + b"".join(chunk(part) for part in body)])
    assert (fleet.tallies["a"].events, fleet.gaps, fleet.repeats) == (3, 1, 1)


async def test_a_message_of_several_data_lines_is_their_lines_joined() -> None:
    split = b'data: {"op":"subscribed",\ndata: "channel":"listing:7","offset":10}\n\n'
    body = [split, message(event(11, 10, 0), b"11")]
    stream, fleet, _ = await read([HEAD + b"".join(chunk(part) for part in body)])
    assert dict(fleet.ops) == {"subscribed": 1}
    assert (fleet.tallies["a"].events, fleet.gaps, stream.last_offset) == (1, 0, 11)


async def test_a_refused_stream_fails_its_opening_and_counts_nothing() -> None:
    answer = b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/problem+json\r\n\r\n{}"
    stream, fleet, wire = await read([answer])
    assert stream.refusal == (401, b"{}") and wire.closing and not stream.open
    error = stream.opened.exception()
    assert isinstance(error, ConnectionError)
    assert "401 Unauthorized" in str(error)
    assert fleet.tallies["a"].events == 0 and not fleet.ops


def phase(rate: float, p99: float | None, system: str) -> dict[str, Any]:
    best = {system: {"messages_per_second_per_instance": rate}}
    return {"burst": {"best": best}, "steady": {"latency_ms": {"p99": p99}}}


def test_the_sse_figures_are_set_beside_the_websocket_fanout_of_the_same_run() -> None:
    sse, fanout = phase(30_000.0, 24.0, "sse") | {"streams": 2000}, phase(60_000.0, 16.0, "jangteo")
    assert against_websocket(sse, fanout) == {
        "websocket_messages_per_second_per_instance": 60_000.0,
        "websocket_p99_ms": 16.0,
        "messages_per_second_ratio": 0.5,
        "p99_ratio": 1.5,
    }
    assert against_websocket(sse, None) is None
    assert against_websocket(sse, phase(0.0, 0.0, "jangteo")) == {
        "websocket_messages_per_second_per_instance": 0.0,
        "websocket_p99_ms": 0.0,
        "messages_per_second_ratio": None,
        "p99_ratio": None,
    }
    rate, p99 = report.sse_rows({"date": "today", "sse": sse, "fanout": fanout})
    name = "SSE fan-out, 2,000 event streams on 2 instances"
    assert rate["target"] == f"{name}: delivered msgs/s per instance"
    assert p99["target"] == f"{name}: p99 commit-to-receive"
    assert (rate["figure_text"], rate["reference_text"]) == (
        "30,000 msgs/s",
        "WebSocket: 60,000 msgs/s",
    )
    assert (rate["ratio"], rate["status"], rate["docs"]) == (0.5, "shown", ["BENCHMARKS.md"])
    assert (p99["figure_text"], p99["reference_text"], p99["ratio"]) == (
        "24.0 ms",
        "WebSocket: 16.0 ms",
        1.5,
    )
    missing = report.sse_rows({"date": "today", "fanout": fanout})
    assert [r["status"] for r in missing] == ["not measured", "not measured"]
    assert [r["reference_text"] for r in missing] == ["", ""]  # no SSE: no reference either


async def test_the_sse_phase_delivers_every_message_once_over_two_instances(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    args = argparse.Namespace(
        sockets=STREAMS, duration=1.0, rate=5.0, burst=BURST, rounds=ROUNDS,
        client_processes=1, scratch=tmp_path,
    )  # fmt: skip
    settings = serve_settings(database_url, redis_url)
    with LoadClients(0) as unused:  # the phase brings client processes of its own
        bench = Bench(args, settings, database_url, unused, {}, heartbeat=20.0)
        result = await sse_phase(bench)

    assert (result["streams"], result["instances"], result["burst_events"]) == (STREAMS, 2, BURST)
    assert result["connect"]["outcome"] == {"opened": STREAMS}
    assert result["vs_websocket"] is None  # no WebSocket fan-out in this run
    steady = result["steady"]
    committed = steady["patch"]["committed"]
    assert committed == steady["patch"]["requests"] == 5
    exactly_once(steady["delivery"], committed * STREAMS)
    assert steady["deliveries_counted_by_servers"] == committed * STREAMS
    assert steady["latency_ms"]["p99"] is not None
    assert sum(steady["histogram_ms"].values()) == committed * STREAMS
    rounds = result["burst"]["rounds"]["sse"]
    assert len(rounds) == ROUNDS
    for burst in rounds:
        exactly_once(burst["delivery"], BURST * STREAMS)
        # Half the streams on each instance, every one of them sent every event.
        assert {name: figures["messages"] for name, figures in burst["instances"].items()} == {
            "jangteo-sse-1": BURST * STREAMS // 2,
            "jangteo-sse-2": BURST * STREAMS // 2,
        }
        assert burst["messages_per_second_per_instance"] > 0
    best = result["burst"]["best"]["sse"]
    assert best["messages_per_second_per_instance"] == max(
        burst["messages_per_second_per_instance"] for burst in rounds
    )
    assert set(result["server_log_problems"]) == {"jangteo-sse-1", "jangteo-sse-2"}


def exactly_once(delivery: dict[str, Any], expected: int) -> None:
    """Every expected message came, none twice, in each stream's offset order."""
    assert delivery["expected"] == expected
    assert (delivery["delivered"], delivery["missing"]) == (expected, 0), delivery
    assert (delivery["gaps"], delivery["repeats"]) == (0, 0), delivery
    assert not delivery["errors"] and not delivery["closes"], delivery
    assert delivery["sockets_open"] == STREAMS
