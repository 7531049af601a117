"""The one frozen settings object, read from ``JANGTEO_*`` environment variables once."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from server.client_address import parse_networks

_DEPLOYMENT = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
PURCHASE_STRATEGIES = ("pessimistic", "optimistic", "atomic", "redis_lock")
TEST_FAULTS = ("", "drop-every-tenth-event")  # JANGTEO_TEST_FAULT, for tests only


class SettingsError(ValueError):
    """An environment variable holds a value jangteo cannot use."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` hits per ``window_seconds`` (fixed window)."""

    limit: int
    window_seconds: int

    @classmethod
    def parse(cls, name: str, text: str) -> RateLimit:
        try:
            limit, window = (int(part) for part in text.split("/", 1))
        except ValueError:
            raise SettingsError(
                f"{name} must look like '10/60' (hits/seconds), got {text!r}"
            ) from None
        if limit < 1 or window < 1:
            raise SettingsError(f"{name} must be positive, got {text!r}")
        return cls(limit, window)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable; see the README's configuration table for meanings."""

    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = None
    redis_url: str | None = None
    s3_endpoint: str | None = None
    s3_bucket: str = "jangteo-photos"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_public_url: str | None = None
    s3_presign_endpoint: str | None = None  # S3 as clients reach it; default s3_endpoint
    s3_timeout: float = 5.0
    photo_max_bytes: int = 10 * 1024 * 1024
    photo_upload_ttl: int = 600
    jwt_secret: str = ""
    jwt_issuer: str = "jangteo"
    jwt_audience: str = "jangteo-api"
    access_token_ttl: int = 900
    refresh_token_ttl: int = 30 * 24 * 3600
    max_body_bytes: int = 64 * 1024
    pg_pool_min: int = 0
    pg_pool_max: int = 20
    pg_acquire_timeout: float = 5.0
    pg_statement_timeout: float = 10.0
    pg_connect_timeout: float = 5.0
    redis_timeout: float = 2.0
    redis_max_connections: int = 200
    redis_breaker: bool = True  # off: every call waits for Redis even while it is down
    redis_breaker_failures: int = 3  # connection errors in a row that open it (a timeout: 1)
    redis_breaker_cooldown: float = 2.0  # seconds it fails fast before one call probes Redis
    shutdown_timeout: float = 10.0
    rate_limits_enabled: bool = True
    rate_limit_auth_ip: RateLimit = RateLimit(30, 60)
    rate_limit_auth_email: RateLimit = RateLimit(10, 60)
    rate_limit_writes: RateLimit = RateLimit(120, 60)
    purchase_strategy: str = "atomic"
    cache_enabled: bool = True
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    log_level: str = "INFO"
    access_log: bool = True
    event_retention: int = 7 * 24 * 3600  # seconds; published events older are pruned
    relay_poll_interval: float = 1.0  # safety net beside LISTEN/NOTIFY
    relay_batch_size: int = 500
    # A leader that cannot publish for this long hands leadership to an instance that can.
    relay_step_down: float = 2.0
    # How long a relay leader may be silent (paused, cut off from PostgreSQL) before its
    # lock is released: the lock session's idle_session_timeout and TCP keepalives.
    relay_lock_timeout: float = 4.0
    # Names every pub/sub channel, so two deployments may share one Redis.
    deployment: str = "jangteo"
    ws_max_connections: int = 20_000  # per instance; beyond it new sockets close with 1013
    ws_max_subscriptions: int = 100  # per socket
    ws_max_frame_bytes: int = 64 * 1024  # larger client frames close with 1009
    ws_frames_per_second: float = 20.0  # per socket, with bursts of twice as many
    ws_max_bad_frames: int = 10  # error replies before a socket is closed with 1008
    ws_send_queue: int = 512  # frames waiting for a slow client before it is closed (1013)
    ws_heartbeat: float = 20.0  # seconds between server pings; no pong in half of it: dead
    ws_replay_limit: int = 10_000  # events one resume may replay; further back is `resync`
    ws_ticket_ttl: int = 30
    redis_watchdog_interval: float = 1.0  # the event subscription pings this often
    # TEST ONLY: a fault injected on purpose, so tests can prove that checks notice it
    # (JANGTEO_TEST_FAULT=drop-every-tenth-event: see Hub.inject_fault). Never set it in use.
    test_fault: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); raise on bad values."""
        env = os.environ if environ is None else environ
        reader = _EnvReader(env)
        defaults = cls()
        data_dir = Path(reader.text("DATA_DIR", ".data"))
        settings = cls(
            data_dir=data_dir,
            host=reader.text("HOST", defaults.host),
            port=reader.integer("PORT", defaults.port),
            database_url=reader.optional("DATABASE_URL"),
            redis_url=reader.optional("REDIS_URL"),
            s3_endpoint=reader.optional("S3_ENDPOINT"),
            s3_bucket=reader.text("S3_BUCKET", defaults.s3_bucket),
            s3_region=reader.text("S3_REGION", defaults.s3_region),
            s3_access_key=reader.optional("S3_ACCESS_KEY"),
            s3_secret_key=reader.optional("S3_SECRET_KEY"),
            s3_public_url=reader.optional("S3_PUBLIC_URL"),
            s3_presign_endpoint=reader.optional("S3_PRESIGN_ENDPOINT"),
            s3_timeout=reader.number("S3_TIMEOUT", defaults.s3_timeout),
            photo_max_bytes=reader.integer("PHOTO_MAX_BYTES", defaults.photo_max_bytes),
            photo_upload_ttl=reader.integer("PHOTO_UPLOAD_TTL", defaults.photo_upload_ttl),
            jwt_secret=reader.text("JWT_SECRET", ""),
            jwt_issuer=reader.text("JWT_ISSUER", defaults.jwt_issuer),
            jwt_audience=reader.text("JWT_AUDIENCE", defaults.jwt_audience),
            access_token_ttl=reader.integer("ACCESS_TOKEN_TTL", defaults.access_token_ttl),
            refresh_token_ttl=reader.integer("REFRESH_TOKEN_TTL", defaults.refresh_token_ttl),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", defaults.max_body_bytes),
            pg_pool_min=reader.integer("PG_POOL_MIN", defaults.pg_pool_min),
            pg_pool_max=reader.integer("PG_POOL_MAX", defaults.pg_pool_max),
            pg_acquire_timeout=reader.number("PG_ACQUIRE_TIMEOUT", defaults.pg_acquire_timeout),
            pg_statement_timeout=reader.number(
                "PG_STATEMENT_TIMEOUT", defaults.pg_statement_timeout
            ),
            pg_connect_timeout=reader.number("PG_CONNECT_TIMEOUT", defaults.pg_connect_timeout),
            redis_timeout=reader.number("REDIS_TIMEOUT", defaults.redis_timeout),
            redis_max_connections=reader.integer(
                "REDIS_MAX_CONNECTIONS", defaults.redis_max_connections
            ),
            redis_breaker=reader.switch("REDIS_BREAKER", True),
            redis_breaker_failures=reader.integer(
                "REDIS_BREAKER_FAILURES", defaults.redis_breaker_failures
            ),
            redis_breaker_cooldown=reader.number(
                "REDIS_BREAKER_COOLDOWN", defaults.redis_breaker_cooldown
            ),
            shutdown_timeout=reader.number("SHUTDOWN_TIMEOUT", defaults.shutdown_timeout),
            rate_limits_enabled=reader.switch("RATE_LIMITS", True),
            rate_limit_auth_ip=reader.rate("RATE_LIMIT_AUTH_IP", defaults.rate_limit_auth_ip),
            rate_limit_auth_email=reader.rate(
                "RATE_LIMIT_AUTH_EMAIL", defaults.rate_limit_auth_email
            ),
            rate_limit_writes=reader.rate("RATE_LIMIT_WRITES", defaults.rate_limit_writes),
            purchase_strategy=reader.choice(
                "PURCHASE_STRATEGY", defaults.purchase_strategy, PURCHASE_STRATEGIES
            ),
            cache_enabled=reader.switch("CACHE", True),
            allowed_origins=reader.words("ALLOWED_ORIGINS"),
            trusted_proxies=reader.networks("TRUSTED_PROXIES"),
            log_level=reader.text("LOG_LEVEL", defaults.log_level).upper(),
            access_log=reader.switch("ACCESS_LOG", True),
            event_retention=reader.duration("EVENT_RETENTION", defaults.event_retention),
            relay_poll_interval=reader.number("RELAY_POLL_INTERVAL", defaults.relay_poll_interval),
            relay_batch_size=reader.integer("RELAY_BATCH_SIZE", defaults.relay_batch_size),
            relay_step_down=reader.number("RELAY_STEP_DOWN", defaults.relay_step_down),
            relay_lock_timeout=reader.number("RELAY_LOCK_TIMEOUT", defaults.relay_lock_timeout),
            deployment=reader.text("DEPLOYMENT", defaults.deployment),
            ws_max_connections=reader.integer("WS_MAX_CONNECTIONS", defaults.ws_max_connections),
            ws_max_subscriptions=reader.integer(
                "WS_MAX_SUBSCRIPTIONS", defaults.ws_max_subscriptions
            ),
            ws_max_frame_bytes=reader.integer("WS_MAX_FRAME_BYTES", defaults.ws_max_frame_bytes),
            ws_frames_per_second=reader.number(
                "WS_FRAMES_PER_SECOND", defaults.ws_frames_per_second
            ),
            ws_max_bad_frames=reader.integer("WS_MAX_BAD_FRAMES", defaults.ws_max_bad_frames),
            ws_send_queue=reader.integer("WS_SEND_QUEUE", defaults.ws_send_queue),
            ws_heartbeat=reader.number("WS_HEARTBEAT", defaults.ws_heartbeat),
            ws_replay_limit=reader.integer("WS_REPLAY_LIMIT", defaults.ws_replay_limit),
            ws_ticket_ttl=reader.integer("WS_TICKET_TTL", defaults.ws_ticket_ttl),
            redis_watchdog_interval=reader.number(
                "REDIS_WATCHDOG_INTERVAL", defaults.redis_watchdog_interval
            ),
            test_fault=reader.choice("TEST_FAULT", "", TEST_FAULTS),
        )
        if settings.relay_lock_timeout < 2 * settings.relay_poll_interval + 1:
            raise SettingsError(
                "JANGTEO_RELAY_LOCK_TIMEOUT must be at least twice JANGTEO_RELAY_POLL_INTERVAL"
                " plus a second: the leader speaks to PostgreSQL once per poll"
            )
        if not _DEPLOYMENT.match(settings.deployment):
            raise SettingsError("JANGTEO_DEPLOYMENT must match " + _DEPLOYMENT.pattern)
        return settings

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests and the CLI use this)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_jwt_secret(self) -> Settings:
        """Fill in a JWT secret shared by every process using this data directory.

        Without ``JANGTEO_JWT_SECRET`` a random secret is created once under the data
        directory, so that several local instances accept each other's tokens.
        """
        if self.jwt_secret:
            return self
        path = self.data_dir / "jwt-secret"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self.replace(jwt_secret=path.read_text().strip())
        with os.fdopen(fd, "w") as handle:
            secret = secrets.token_urlsafe(48)
            handle.write(secret)
        return self.replace(jwt_secret=secret)


class _EnvReader:
    """Typed access to ``JANGTEO_*`` variables with clear errors."""

    prefix = "JANGTEO_"

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def optional(self, name: str) -> str | None:
        value = self.env.get(self.prefix + name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def integer(self, name: str, default: int) -> int:
        value = self.optional(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise SettingsError(f"{self.prefix}{name} must be an integer, got {value!r}") from None

    def number(self, name: str, default: float) -> float:
        value = self.optional(name)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise SettingsError(f"{self.prefix}{name} must be a number, got {value!r}") from None

    def switch(self, name: str, default: bool) -> bool:
        value = self.optional(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "on", "true", "yes"):
            return True
        if lowered in ("0", "off", "false", "no"):
            return False
        raise SettingsError(f"{self.prefix}{name} must be on or off, got {value!r}")

    def duration(self, name: str, default: int) -> int:
        """Seconds, plainly (``3600``) or with a unit (``90s``, ``30m``, ``12h``, ``7d``)."""
        value = self.optional(name)
        if value is None:
            return default
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        number, unit = (value[:-1], units[value[-1]]) if value[-1] in units else (value, 1)
        try:
            seconds = int(number) * unit
        except ValueError:
            raise SettingsError(
                f"{self.prefix}{name} must be seconds or a number with s, m, h or d, got {value!r}"
            ) from None
        if seconds <= 0:
            raise SettingsError(f"{self.prefix}{name} must be positive, got {value!r}")
        return seconds

    def rate(self, name: str, default: RateLimit) -> RateLimit:
        value = self.optional(name)
        return default if value is None else RateLimit.parse(self.prefix + name, value)

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            raise SettingsError(f"{self.prefix}{name} must be one of {', '.join(allowed)}")
        return value

    def networks(self, name: str) -> tuple[str, ...]:
        words = self.words(name)
        try:
            parse_networks(words)
        except ValueError as error:
            raise SettingsError(f"{self.prefix}{name}: {error}") from None
        return words

    def words(self, name: str) -> tuple[str, ...]:
        value = self.optional(name) or ""
        return tuple(word for word in value.replace(",", " ").split() if word)
