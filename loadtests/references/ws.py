"""A bare aiohttp WebSocket server: the reference of the realtime benchmark.

Run as ``python -m loadtests.references.ws --port P --frame FILE``; one uvloop process per port
(the benchmark starts one per jangteo instance it compares with). ``GET /ws`` upgrades with
compression off and aiohttp's own heartbeat, and answers ``subscribe`` and ``ping`` frames the
way jangteo's protocol does, with nothing behind them: no tickets, no channels, no queues.
``POST /fanout?count=K`` sends the file's pre-encoded frame K times to every open socket in a
plain loop (``send_frame``, yielding to the loop between frames) and answers when done;
with ``&stamp=1`` each round's frame is the file's JSON with ``ts`` set to the wall clock
(ms) as the round starts, so a client measures trigger-to-receive as it measures
jangteo's commit-to-receive;
``GET /healthz`` answers 200. This is what delivering an event costs aiohttp itself.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import orjson
from aiohttp import WSMsgType, web

from loadtests.references.app import serve_app

PONG = b'{"op":"pong"}'


def make_app(frame: bytes, heartbeat: float | None) -> web.Application:
    """The app: ``/ws``, ``/fanout`` and ``/healthz``."""
    app = web.Application()
    sockets: set[web.WebSocketResponse] = set()

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=heartbeat, compress=False, max_msg_size=64 * 1024)
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    body = orjson.loads(message.data)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(body, dict):
                    continue
                if body.get("op") == "subscribe":
                    reply = {"op": "subscribed", "channel": body.get("channel"), "offset": 0}
                    await ws.send_frame(orjson.dumps(reply), WSMsgType.TEXT)
                elif body.get("op") == "ping":
                    await ws.send_frame(PONG, WSMsgType.TEXT)
        finally:
            sockets.discard(ws)
        return ws

    async def fanout(request: web.Request) -> web.Response:
        count = int(request.query.get("count", "1"))
        stamp = request.query.get("stamp") == "1"
        targets = list(sockets)
        started = time.perf_counter()
        for _ in range(count):
            now = int(time.time() * 1000)  # whole ms, as jangteo's commit stamps
            sent = orjson.dumps({**orjson.loads(frame), "ts": now}) if stamp else frame
            for ws in targets:
                if not ws.closed:
                    await ws.send_frame(sent, WSMsgType.TEXT)
            await asyncio.sleep(0)
        seconds = time.perf_counter() - started
        return web.json_response({"sockets": len(targets), "frames": count, "seconds": seconds})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"sockets": len(sockets)})

    app.router.add_get("/ws", websocket)
    app.router.add_post("/fanout", fanout)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.references.ws", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frame", type=Path, required=True, help="the frame bytes to fan out")
    parser.add_argument(
        "--heartbeat", type=float, default=30.0, help="seconds between pings (0: none)"
    )
    args = parser.parse_args(argv)
    frame, heartbeat = args.frame.read_bytes(), args.heartbeat or None
    serve_app(lambda: make_app(frame, heartbeat), args.host, args.port)


if __name__ == "__main__":
    main()
