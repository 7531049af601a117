"""A TCP proxy the tests can black-hole: it keeps accepting, and never answers.

A refused connection fails in microseconds; a silent network (a dropped route, a
firewall eating packets, a peer frozen mid-write) makes every client wait out its own
timeout, which is the failure timeouts and the Redis circuit breaker exist for. The
proxy runs its own event loop in a thread, so it keeps forwarding (or swallowing)
whatever the test's own loop is busy with.

While black-holed, new connections are accepted and what arrives on any connection is
read and dropped. ``restore()`` forwards again, and resets the connections that lost
bytes meanwhile (their streams are no longer whole), as a healed network would.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

from server.embedded.process import free_port

CHUNK = 65536


@dataclass(eq=False)
class _Link:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    damaged: bool = False  # bytes were dropped: reset it when the network heals

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


class TcpProxy:
    """``127.0.0.1:port`` forwards to ``127.0.0.1:target_port`` until black-holed."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.blackholed = False
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def blackhole(self) -> None:
        """From now on, accept and swallow: nothing reaches the target, nothing comes back."""
        self._call(self._blackhole)

    def restore(self) -> None:
        """Forward again; connections that lost bytes meanwhile are reset."""
        self._call(self._restore)

    def url(self, scheme_and_rest: str) -> str:
        """``scheme_and_rest`` with the target's port replaced by the proxy's."""
        return scheme_and_rest.replace(f":{self.target_port}/", f":{self.port}/")

    def _call(self, function: object) -> None:
        assert self._loop is not None and callable(function)
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link([writer], damaged=self.blackholed)
        self._links.add(link)
        try:
            if self.blackholed:
                await self._swallow(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            link.writers.append(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, link), self._pipe(up_reader, writer, link)
            )
        finally:
            self._links.discard(link)
            link.abort()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(CHUNK):
                pass

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self.blackholed or link.damaged:
                    link.damaged = True
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            link.abort()
