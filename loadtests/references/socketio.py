"""python-socketio on aiohttp with its Redis manager: a reference of the realtime benchmark.

Run as ``python -m loadtests.references.socketio --port P --frame FILE --redis-url URL``; one
uvloop process per port, the processes sharing one Redis channel (``AsyncRedisManager``), as
jangteo instances share Redis. Engine.IO runs over WebSocket only (``transports=["websocket"]``,
compression off unless a client asks for it, and the load client does not); every client joins
the room ``bench`` when it connects. ``POST /fanout?count=K`` emits the file's JSON object as
event ``event`` to the room K times, through Redis, so the members on every process receive
it; ``GET /healthz`` answers 200. Needs ``python-socketio`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from loadtests.references.app import serve_app

ROOM = "bench"


def make_app(event: Any, redis_url: str, channel: str, heartbeat: float) -> web.Application:
    import socketio  # type: ignore[import-untyped, import-not-found, unused-ignore]

    manager = socketio.AsyncRedisManager(redis_url, channel=channel)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        transports=["websocket"],
        ping_interval=heartbeat,
        ping_timeout=heartbeat,
        cors_allowed_origins="*",
    )
    app = web.Application()
    sio.attach(app)

    async def connect(sid: str, environ: Any, auth: Any = None) -> None:
        await sio.enter_room(sid, ROOM)

    sio.on("connect", connect)

    async def fanout(request: web.Request) -> web.Response:
        count = int(request.query.get("count", "1"))
        started = time.perf_counter()
        for _ in range(count):
            await sio.emit("event", event, room=ROOM)
            await asyncio.sleep(0)
        seconds = time.perf_counter() - started
        return web.json_response({"emitted": count, "seconds": seconds})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_post("/fanout", fanout)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.references.socketio", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frame", type=Path, required=True, help="the event's JSON to emit")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", default="jangteo-bench-socketio")
    parser.add_argument("--heartbeat", type=float, default=20.0, help="Engine.IO ping interval")
    args = parser.parse_args(argv)
    event = orjson.loads(args.frame.read_bytes())
    serve_app(
        lambda: make_app(event, args.redis_url, args.channel, args.heartbeat), args.host, args.port
    )


if __name__ == "__main__":
    main()
