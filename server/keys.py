"""The typed ``web.AppKey``s of the server's resources (the realtime path's are in
``realtime/keys.py``)."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from db.read_batches import ReadBatches
from server.auth.passwords import PasswordHasher
from server.auth.revocations import SessionRevocations
from server.auth.tokens import AccessClaims, TokenIssuer
from server.client_address import Network
from server.listings.cache import ListingCache
from server.metrics import Metrics
from server.openapi import ApiSpec
from server.orders.gate import ListingGate
from server.orders.locks import PurchaseLocks
from server.orders.queue import PurchaseQueue
from server.photos.storage import PhotoStorage
from server.ratelimit import RateLimiter
from server.settings import Settings

settings_key = web.AppKey("settings", Settings)
trusted_proxies_key: web.AppKey[tuple[Network, ...]] = web.AppKey("trusted_proxies")
pg_pool_key = web.AppKey("pg_pool", asyncpg.Pool)
# Detail reads of listings by id, those of one loop turn in one statement.
listing_reads_key: web.AppKey[ReadBatches[int, asyncpg.Record]] = web.AppKey("listing_reads")
redis_key = web.AppKey("redis", aioredis.Redis)
metrics_key = web.AppKey("metrics", Metrics)
rate_limiter_key = web.AppKey("rate_limiter", RateLimiter)
password_hasher_key = web.AppKey("password_hasher", PasswordHasher)
token_issuer_key = web.AppKey("token_issuer", TokenIssuer)
api_spec_key = web.AppKey("api_spec", ApiSpec)
photo_storage_key = web.AppKey("photo_storage", PhotoStorage)
listing_cache_key = web.AppKey("listing_cache", ListingCache)
purchase_locks_key = web.AppKey("purchase_locks", PurchaseLocks)
purchase_gate_key = web.AppKey("purchase_gate", ListingGate)
purchase_queue_key = web.AppKey("purchase_queue", PurchaseQueue)
session_revocations_key = web.AppKey("session_revocations", SessionRevocations)

claims_key = web.RequestKey("claims", AccessClaims)
