"""A lean Server-Sent Events load client for the realtime benchmark, beside ``ws.py``.

Each client process (``LoadClients(n, main=sse_main)``) holds thousands of event streams on
one uvloop loop. A stream is a bare ``asyncio.Protocol``: ``GET /api/v1/sse`` written by hand,
the response head checked, then the chunked body and its messages parsed straight from
``data_received``, with no task, queue or message object per message. Every message's
``data`` is the JSON of the WebSocket frame for the same thing, so it goes to the same
``Fleet`` as a socket's frame: the same per-instance counts, the same commit-to-receive
histogram (receive wall clock ms - ``ts``), the same offset/prev check. The figures of the
two transports compare one to one.

The parent drives it with ``ws.py``'s commands (``connect`` with a ``ConnectPlan`` whose
targets' path is ``SSE_PATH``, ``reset``, ``stats``, ``close``); ``connect`` takes a ticket
for each stream, opens it on the plan's channel and waits for its ``subscribed`` message.
Lines end in LF, as jangteo writes them; a CR is counted (``<CR in stream>``), not read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlencode

import aiohttp

from loadtests.clients.ws import (
    TIMEOUT_S,
    ClientConnection,
    ClientProcess,
    ConnectPlan,
    Fleet,
    Tally,
    Target,
    close_sockets,
    connect_from,
    serve_commands,
    ticket,
)

SSE_PATH = "/api/v1/sse"


def sse_target(target: Target) -> Target:
    """``target`` (jangteo's, with its ticket desk and token) with streams instead of sockets."""
    return dataclasses.replace(target, path=SSE_PATH)


def stream_request(target: Target, path: str) -> bytes:
    """The GET that opens one stream."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {target.host}:{target.port}",
        "Accept: text/event-stream",
        "Cache-Control: no-store",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class EventStream(ClientConnection):
    """One client event stream: the request, then the chunked body read in ``data_received``."""

    BEFORE = "the stream started"
    fleet: Fleet  # its ``on_text`` takes any ``Subscriber``

    def __init__(self, fleet: Fleet, tally: Tally, request: bytes) -> None:
        # The server subscribes a stream by itself: ``subscribed`` may come with the head.
        super().__init__(fleet, tally, request, subscribed_at_once=True)
        self.chunked = False
        self.body = b""  # de-chunked bytes of a message not complete yet
        self.refusal: tuple[int, bytes] | None = None  # a status other than 200, its body

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.pending:
            data = self.pending + data
            self.pending = b""
        if self.refusal is not None:
            return
        if not self.open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.pending = data
                return
            if not self._head(data[: end + 4], data[end + 4 :]):
                return
            data = data[end + 4 :]
        self._text(self._dechunk(data) if self.chunked else data, now)

    def _head(self, head: bytes, rest: bytes) -> bool:
        """Whether the response is a stream; a refusal fails ``opened`` and closes."""
        status, *lines = head.split(b"\r\n")
        headers = {n.strip().lower(): v.strip() for n, _, v in (ln.partition(b":") for ln in lines)}
        code = status.split(b" ")[1:2]
        streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        if code != [b"200"] or not streaming:
            self.refusal = (int(code[0]) if code and code[0].isdigit() else 0, rest[:200])
            if not self.opened.done():
                answer = status.decode(errors="replace")
                self.opened.set_exception(ConnectionError(f"stream answered {answer}"))
            self.hang_up()
            return False
        self.chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        self.open = True
        if not self.opened.done():
            self.opened.set_result(None)
        return True

    def _dechunk(self, data: bytes) -> bytes:
        """The data of the complete chunks (RFC 9112 7.1) in ``data``; the rest waits."""
        parts: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            line_end = data.find(b"\r\n", pos)
            if line_end < 0:
                break
            try:
                length = int(data[pos:line_end].partition(b";")[0], 16)
            except ValueError:
                self.fleet.ops["<bad chunk>"] += 1
                self.hang_up()
                return b"".join(parts)
            start = line_end + 2
            if length == 0:  # the last chunk: the server ended the stream
                self.fleet.closes["ended by the server"] += 1
                self.open = False
                self.hang_up()
                return b"".join(parts)
            if start + length + 2 > size:
                break
            parts.append(data[start : start + length])
            pos = start + length + 2
        self.pending = data[pos:]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _text(self, text: bytes, now: float) -> None:
        """Every message ``text`` completes, to the fleet as a socket's frame: its ``data``
        lines joined by LF (jangteo writes one), ``id`` and comments skipped."""
        if self.body:
            text = self.body + text
        if b"\r" in text:
            self.fleet.ops["<CR in stream>"] += 1
        fleet = self.fleet
        pos = 0
        while (end := text.find(b"\n\n", pos)) >= 0:
            data = None
            for line in text[pos:end].split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[6:] if line[5:6] == b" " else line[5:]
                    data = value if data is None else data + b"\n" + value
            if data is not None:
                fleet.on_text(self, data, now)
            pos = end + 2
        self.body = text[pos:]


class StreamProcess(ClientProcess):
    """What runs inside one SSE client process: ``ClientProcess``'s fleet and commands, with
    streams for sockets."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[EventStream] = []

    def stats(self) -> dict[str, Any]:
        return self.fleet.snapshot() | {"open": sum(1 for s in self.streams if s.open)}

    async def _open(
        self, session: aiohttp.ClientSession, plan: ConnectPlan, target: Target, source: str
    ) -> None:
        if plan.channel is None:
            raise RuntimeError("an event stream follows a channel: the plan names none")
        query = {"channel": plan.channel}
        if target.ticket_url is not None:
            query = {"ticket": await ticket(session, target)} | query
        request = stream_request(target, f"{target.path}?{urlencode(query)}")
        tally = self.fleet.tallies[target.instance]
        sock = await connect_from(source, target.host, target.port, TIMEOUT_S)
        _, stream = await asyncio.get_running_loop().create_connection(
            lambda: EventStream(self.fleet, tally, request), sock=sock
        )
        stream.check_offsets = plan.check_offsets
        self.streams.append(stream)
        await asyncio.wait_for(stream.opened, TIMEOUT_S)
        assert stream.subscribed is not None
        await asyncio.wait_for(stream.subscribed, TIMEOUT_S)

    async def close(self, wait: float = 15.0) -> dict[str, Any]:
        """Hang up every stream (it has nothing to say first); abort those still not
        closed after ``wait`` s."""
        streams, self.streams = self.streams, []
        return {"closed": len(streams), "aborted": await close_sockets(streams, wait)}


def sse_main(conn: Connection) -> None:
    """Entry point of an SSE client process: serve the parent's commands until ``exit``."""
    serve_commands(conn, StreamProcess())
