"""A TCP proxy that can black-hole its link or slow it down.

A refused connection fails in microseconds; a silent network (a dropped route, a
firewall eating packets, a peer frozen mid-write) makes every client wait out its own
timeout, which is the failure timeouts and the Redis circuit breaker exist for. The
proxy runs its own event loop in a thread, so it keeps forwarding (or swallowing)
whatever the caller's own loop is busy with.

While black-holed, new connections are accepted and what arrives on any connection is
read and dropped. ``restore()`` forwards again, and resets the connections that lost
bytes meanwhile (their streams are no longer whole), as a healed network would.

While throttled (``throttle(bytes_per_second)``, or ``rate=`` at construction), each
direction of each connection carries at most that many bytes per second. The proxy reads
no faster than it forwards, and its upstream sockets are opened with a small receive
buffer, so the sender feels the slow link as TCP back-pressure after some tens of
kilobytes, not after the megabytes that loopback would otherwise buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from server.embedded.process import free_port

CHUNK = 65536
SLOW_BUFFER = 32768  # SO_RCVBUF of a throttled link's upstream socket
SLOW_TICK_S = 0.05  # a throttled pipe forwards about this much time's worth at once


@dataclass(eq=False)
class _Link:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    damaged: bool = False  # bytes were dropped: reset it when the network heals

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


class TcpProxy:
    """``127.0.0.1:port`` forwards to ``127.0.0.1:target_port`` until black-holed."""

    def __init__(self, target_port: int, *, rate: int | None = None) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.blackholed = False
        self.rate = rate  # bytes per second each way; None: as fast as loopback
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def blackhole(self) -> None:
        """From now on, accept and swallow: nothing reaches the target, nothing comes back."""
        self._call(self._blackhole)

    def restore(self) -> None:
        """Forward again; connections that lost bytes meanwhile are reset."""
        self._call(self._restore)

    def throttle(self, rate: int | None) -> None:
        """Carry at most ``rate`` bytes per second each way from now on (None: no limit)."""
        self._call(lambda: setattr(self, "rate", rate))

    def url(self, scheme_and_rest: str) -> str:
        """``scheme_and_rest`` with the target's port replaced by the proxy's."""
        return scheme_and_rest.replace(f":{self.target_port}/", f":{self.port}/")

    def _call(self, function: Callable[[], object]) -> None:
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            function()
            done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("the proxy did not answer")

    def _blackhole(self) -> None:
        self.blackholed = True
        for link in self._links:
            link.damaged = True

    def _restore(self) -> None:
        self.blackholed = False
        for link in [link for link in self._links if link.damaged]:
            link.abort()
            self._links.discard(link)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stop.wait()
            for link in list(self._links):
                link.abort()
            # The aborted links' handlers end on their own; cancelled, they would log.
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link([writer], damaged=self.blackholed)
        self._links.add(link)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        try:
            if self.blackholed:
                await self._swallow(reader)
                return
            try:
                up_reader, up_writer = await self._connect()
            except OSError:
                return
            link.writers.append(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, link), self._pipe(up_reader, writer, link)
            )
        finally:
            self._links.discard(link)
            link.abort()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.rate is None:
            return await asyncio.open_connection("127.0.0.1", self.target_port)
        # A small receive buffer, set before connecting (it sizes the TCP window): the
        # target's writes back up after a few frames, as over a slow network.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_BUFFER)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.target_port))
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=SLOW_BUFFER)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(CHUNK):
                pass

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(self._chunk()):
                if self.blackholed or link.damaged:
                    link.damaged = True
                    continue
                writer.write(data)
                await writer.drain()
                if self.rate is not None:
                    await asyncio.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            link.abort()

    def _chunk(self) -> int:
        if self.rate is None:
            return CHUNK
        return max(1024, min(CHUNK, int(self.rate * SLOW_TICK_S)))
