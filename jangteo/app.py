"""The application factory: settings in, a ready-to-run aiohttp app out."""

from __future__ import annotations

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from jangteo import health
from realtime import handlers as realtime_handlers
from realtime.setup import setup_realtime
from server import demo, docs, keys
from server.auth import handlers as auth_handlers
from server.auth.passwords import PasswordHasher
from server.auth.tokens import TokenIssuer
from server.chats import handlers as chat_handlers
from server.client_address import parse_networks
from server.janitor import janitor_ctx
from server.listings import fast_path
from server.listings import handlers as listing_handlers
from server.metrics import Metrics
from server.middlewares import request_middleware
from server.openapi import ApiSpec
from server.orders import handlers as order_handlers
from server.orders.gate import ListingGate
from server.photos.handlers import setup_photos
from server.resources import gc_pauses_ctx, pg_pool_ctx, purchase_queue_ctx, redis_ctx
from server.security_headers import setup_security_headers
from server.settings import Settings
from server.tracing import setup_tracing, traced_application, tracer_provider_from
from server.wallet import handlers as wallet_handlers

API_VERSION = "1.0.0"


def create_app(
    settings: Settings, *, tracer_provider: TracerProvider | None = None
) -> web.Application:
    """Build the app; ``settings`` must already carry the database and Redis URLs.

    Tracing is on when the settings name an OTLP endpoint, or with ``tracer_provider``
    (several apps of one process may share one, as tests do; its owner shuts it down).
    """
    provider = tracer_provider or tracer_provider_from(settings)
    if provider is None:
        app = web.Application(
            middlewares=[request_middleware], client_max_size=settings.max_body_bytes
        )
    else:
        app = traced_application(
            provider, middlewares=[request_middleware], client_max_size=settings.max_body_bytes
        )
        setup_tracing(app, provider, owned=tracer_provider is None)
    app[keys.settings_key] = settings
    app[keys.trusted_proxies_key] = parse_networks(settings.trusted_proxies)
    app[keys.metrics_key] = Metrics()
    app[keys.password_hasher_key] = (
        PasswordHasher.cheap() if settings.cheap_password_hashes else PasswordHasher()
    )
    app[keys.token_issuer_key] = TokenIssuer(settings)
    app[keys.purchase_gate_key] = ListingGate.for_strategy(
        settings.purchase_strategy, settings.purchase_permits
    )
    spec = ApiSpec(title="jangteo", version=API_VERSION)
    app[keys.api_spec_key] = spec
    setup_security_headers(app)
    app.cleanup_ctx.extend([gc_pauses_ctx, pg_pool_ctx, redis_ctx, purchase_queue_ctx, janitor_ctx])
    setup_realtime(app)

    health.setup_routes(app, spec)
    docs.setup_routes(app)
    auth_handlers.setup_routes(app, spec)
    listing_handlers.setup_routes(app, spec)
    wallet_handlers.setup_routes(app, spec)
    order_handlers.setup_routes(app, spec)
    setup_photos(app, spec)
    chat_handlers.setup_routes(app, spec)
    realtime_handlers.setup_routes(app, spec)
    demo.setup_routes(app, spec)
    fast_path.install(app)  # cached listing reads answered before the routing above
    return app
