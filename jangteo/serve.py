"""Run the app: one process, or N worker processes sharing one port through SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import signal
import time
from types import FrameType

import uvloop
from aiohttp import web

from jangteo.app import create_app
from server.logs import JsonAccessLogger, configure_logging
from server.settings import Settings

log = logging.getLogger("jangteo.serve")

# The accept queue: as deep as the kernel allows (it caps this at net.core.somaxconn), so a
# reconnect storm waits in the queue instead of having its SYNs dropped and resent 1, 3,
# 7 s later.
LISTEN_BACKLOG = 65535
# The survivor of a reconnect storm builds tens of thousands of long-lived objects (sockets,
# writers, subscriptions) within seconds. CPython's full collections then scan all of them
# every second or two, each a pause of 0.1 to 0.5 s in which no connection is accepted: the
# accept queue overflows and the dropped SYNs come again 1, 3 and 7 s later. So what exists
# once the app has started is frozen out of collections, and a full collection waits for
# 1,000 collections of the middle generation (CPython's default: 10). The young
# generations stay small: every message a socket receives (a heartbeat's pong too) renews
# its read wait and timers, a dozen objects that live until the next one, so a worker
# holding 16,000 sockets promotes some 10,000 objects a second whatever the thresholds,
# and a young collection's pause grows with the generations' size (at 7,000 and 10,
# middle collections of up to 70,000 objects paused it 40-100 ms every few seconds).
GC_THRESHOLDS = (2000, 4, 1000)


def run_worker(settings: Settings, reuse_port: bool) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully within the shutdown timeout."""
    configure_logging(settings.log_level)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    log.info("listening", extra={"host": settings.host, "port": settings.port})
    app = create_app(settings)
    app.on_startup.append(_tune_gc)  # after the app's own startup: its objects live on
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port,
        backlog=LISTEN_BACKLOG,
        shutdown_timeout=settings.shutdown_timeout,
        access_log_class=JsonAccessLogger,
        access_log=logging.getLogger("jangteo.access") if settings.access_log else None,
        print=None,
        loop=loop,
    )


async def _tune_gc(app: web.Application) -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve(settings: Settings, workers: int) -> int:
    """Serve with ``workers`` processes; the parent restarts a worker that dies."""
    if workers <= 1:
        run_worker(settings, reuse_port=False)
        return 0
    configure_logging(settings.log_level)
    return _Supervisor(settings, workers).run()


class _Supervisor:
    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("spawn")
        self.processes = [self._spawn() for _ in range(workers)]
        self.stopping = False

    def _spawn(self) -> multiprocessing.process.BaseProcess:
        process = self.context.Process(target=run_worker, args=(self.settings, True), daemon=False)
        process.start()
        return process

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for process in self.processes:
            if process.pid is not None and process.is_alive():
                process.terminate() if signum == signal.SIGTERM else _interrupt(process)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        while not self.stopping:
            for index, process in enumerate(self.processes):
                if not process.is_alive() and not self.stopping:
                    log.warning("worker exited; restarting", extra={"exitcode": process.exitcode})
                    self.processes[index] = self._spawn()
            time.sleep(0.5)
        deadline = time.monotonic() + self.settings.shutdown_timeout + 5
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
        return 0


def _interrupt(process: multiprocessing.process.BaseProcess) -> None:
    import os

    assert process.pid is not None
    os.kill(process.pid, signal.SIGINT)
