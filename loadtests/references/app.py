"""A bare aiohttp app serving pre-encoded JSON bodies: the baseline of the HTTP benchmark.

Run as ``python -m loadtests.references.app --port P --processes 2 --route /healthz=FILE ...``:
each route answers GET with the bytes of its file, the way jangteo's JSON responses are sent
(``application/json; charset=utf-8``), from N uvloop processes sharing the port (SO_REUSEPORT).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvloop
from aiohttp import web
from aiohttp.typedefs import Handler

# As deep as jangteo serve asks for (the kernel caps it at net.core.somaxconn); not
# imported from there, which would load the whole server into a bare reference.
LISTEN_BACKLOG = 65535


def _answer(body: bytes) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    return handle


def make_app(routes: dict[str, bytes]) -> web.Application:
    """An app answering ``GET path`` with the given bytes, and nothing else."""
    app = web.Application()
    for path, body in routes.items():
        app.router.add_get(path, _answer(body))
    return app


def serve_app(
    make: Callable[[], web.Application], host: str, port: int, reuse_port: bool = False
) -> None:
    """The app ``make`` builds, on uvloop in this process, as a reference runs: no access
    log, a deep backlog; until SIGTERM or SIGINT."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        make(),
        host=host,
        port=port,
        reuse_port=reuse_port,
        backlog=LISTEN_BACKLOG,
        access_log=None,
        print=None,
        loop=loop,
    )


def serve_processes(
    make: Callable[[], web.Application], host: str, port: int, processes: int
) -> None:
    """``serve_app`` in ``processes`` processes sharing the port (SO_REUSEPORT) until SIGTERM
    or SIGINT; ``make`` must pickle (a module's function, or a partial of one). With one
    process it runs here, without SO_REUSEPORT, like ``jangteo serve``."""
    if processes <= 1:
        serve_app(make, host, port)
        return
    context = multiprocessing.get_context("spawn")
    arguments = (make, host, port, True)
    children = [context.Process(target=serve_app, args=arguments) for _ in range(processes)]
    for child in children:
        child.start()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(child.is_alive() for child in children):
        time.sleep(0.2)
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(10)
        if child.is_alive():
            child.kill()


def _route(text: str) -> tuple[str, bytes]:
    path, separator, file = text.partition("=")
    if not separator or not path.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected /path=FILE, got {text!r}")
    return path, Path(file).read_bytes()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.references.app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--route", type=_route, action="append", required=True, help="/path=FILE (repeatable)"
    )
    args = parser.parse_args(argv)
    serve_processes(
        functools.partial(make_app, dict(args.route)), args.host, args.port, args.processes
    )


if __name__ == "__main__":
    main()
