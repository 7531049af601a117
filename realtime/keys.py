"""The typed ``web.AppKey``s of the realtime path (the server's own are in ``server/keys.py``)."""

from __future__ import annotations

from aiohttp import web

from realtime.broker import Broker
from realtime.gateway import Gateway
from realtime.relay import OutboxRelay

broker_key: web.AppKey[Broker] = web.AppKey("broker")
relay_key = web.AppKey("relay", OutboxRelay)
gateway_key = web.AppKey("gateway", Gateway)
