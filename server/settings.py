"""The one frozen settings object, read from ``JANGTEO_*`` environment variables once."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import secrets
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from db.queries.relay import valid_count
from server.client_address import parse_networks

_DEPLOYMENT = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
PURCHASE_STRATEGIES = ("pessimistic", "optimistic", "atomic", "redis_lock", "queue")
REDIS_MODES = ("single", "cluster")
T = TypeVar("T")


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


class _EnvReader:
    """Typed access to ``JANGTEO_*`` variables with clear errors."""

    prefix = "JANGTEO_"

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def optional(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(self.prefix + name, "").strip()
        return value or default

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def path(self, name: str, default: Path) -> Path:
        value = self.optional(name)
        return default if value is None else Path(value)

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

    def networks(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        words = self.words(name, default)
        try:
            parse_networks(words)
        except ValueError as error:
            raise SettingsError(f"{self.prefix}{name}: {error}") from None
        return words

    def words(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.optional(name)
        if value is None:
            return default
        return tuple(word for word in value.replace(",", " ").split() if word)


# Reads one setting: (the environment, its name without JANGTEO_, the default) -> value.
Parser = Callable[[_EnvReader, str, Any], Any]


def setting(default: T, *, name: str | None = None, parse: Parser | None = None) -> T:
    """A setting whose variable is not its field's name in capitals (``name``), or which is
    read otherwise than its type says (``parse``); every other field needs only a default."""
    field: T = dataclasses.field(default=default, metadata={"env": name, "parse": parse})
    return field


def _choice(allowed: tuple[str, ...]) -> Parser:
    return lambda reader, name, default: reader.choice(name, default, allowed)


def _relay_partitions(reader: _EnvReader, name: str, default: int) -> int:
    count = reader.integer(name, default)
    if count and not valid_count(count):
        raise SettingsError(
            f"{reader.prefix}{name} must be 0 (leave it) or divide 64 (1, 2, 4 ... 64), got {count}"
        )
    return count


def _interval(reader: _EnvReader, name: str, default: float) -> float:
    seconds = reader.number(name, default)
    if not 0 < seconds < math.inf:
        raise SettingsError(f"{reader.prefix}{name} must be a positive number of seconds")
    return seconds


def _non_negative(reader: _EnvReader, name: str, default: int) -> int:
    count = reader.integer(name, default)
    if count < 0:
        raise SettingsError(f"{reader.prefix}{name} must be 0 or more, got {count}")
    return count


def _upper(reader: _EnvReader, name: str, default: str) -> str:
    return reader.text(name, default).upper()


def _ratio(reader: _EnvReader, name: str, default: float) -> float:
    ratio = reader.number(name, default)
    if not 0 <= ratio <= 1:
        raise SettingsError(f"{reader.prefix}{name} must be between 0 and 1, got {ratio}")
    return ratio


def _http_url(reader: _EnvReader, name: str, default: str | None) -> str | None:
    url = reader.optional(name, default)
    if url is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise SettingsError(
            f"{reader.prefix}{name} must be an http:// or https:// URL, got {url!r}"
        )
    return url


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable; docs/operations.md has the meanings and defaults.

    A setting is one line: it is read from ``JANGTEO_`` + its name in capitals, as its type
    says (``_BY_TYPE``); ``setting()`` gives it another variable name or parser.
    """

    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = None
    redis_url: str | None = None
    # single: one Redis server; cluster: a Redis Cluster (JANGTEO_REDIS_URL names any node),
    # live events by sharded pub/sub.
    redis_mode: str = setting("single", parse=_choice(REDIS_MODES))
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
    rate_limits_enabled: bool = setting(True, name="RATE_LIMITS")
    cheap_password_hashes: bool = False  # argon2id at one pass over 1 MiB: test suites only
    rate_limit_auth_ip: RateLimit = RateLimit(30, 60)
    rate_limit_auth_email: RateLimit = RateLimit(10, 60)
    rate_limit_writes: RateLimit = RateLimit(120, 60)
    purchase_strategy: str = setting("atomic", parse=_choice(PURCHASE_STRATEGIES))
    # Purchases of one listing a process lets into the database at once (twice as many
    # under redis_lock); the others wait in the process (server/orders/gate.py). 0: no limit.
    purchase_permits: int = setting(4, parse=_non_negative)
    # The queue strategy: partitions of the purchase log (listing id modulo this), the
    # most purchases a consumer applies in one transaction, and how long a request waits
    # for its outcome before 503 purchase-pending.
    purchase_queue_partitions: int = 4
    purchase_queue_batch: int = 50
    purchase_queue_timeout: float = 5.0
    cache_enabled: bool = setting(True, name="CACHE")
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = setting((), parse=_EnvReader.networks)
    log_level: str = setting("INFO", parse=_upper)
    access_log: bool = True
    # Seconds (or 90s, 30m, 12h, 7d); published events older are pruned.
    event_retention: int = setting(7 * 24 * 3600, parse=_EnvReader.duration)
    relay_poll_interval: float = 1.0  # safety net beside LISTEN/NOTIFY
    relay_batch_size: int = 500
    # Read by `jangteo migrate` only (0: leave it): the partition count lives in the
    # database, where `jangteo relay partitions N` changes it for every instance at once.
    relay_partitions: int = setting(0, parse=_relay_partitions)
    # A leader that cannot publish for this long hands leadership to an instance that can.
    relay_step_down: float = 2.0
    # How long a relay leader may be silent (paused, cut off from PostgreSQL) before its
    # lock is released: the lock session's idle_session_timeout and TCP keepalives.
    relay_lock_timeout: float = 3.0
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
    # Each channel's latest events kept in memory, so resumes (many at once after an
    # instance dies) rarely need PostgreSQL: at most this many, none older than the age.
    ws_resume_window: int = 256
    ws_resume_window_age: float = 300.0
    ws_ticket_ttl: int = 30
    # Seconds between comment lines on every event stream: proxies end silent responses.
    sse_heartbeat: float = setting(15.0, parse=_interval)
    redis_watchdog_interval: float = 1.0  # the event subscription pings this often
    # Tracing (docs/tracing.md), off while no OTLP/HTTP traces endpoint is named
    # (http://collector:4318/v1/traces): requests are sampled at the ratio.
    otel_endpoint: str | None = setting(None, parse=_http_url)
    otel_service_name: str = "jangteo"
    otel_sample_ratio: float = setting(1.0, parse=_ratio)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); raise on bad values."""
        reader = _EnvReader(os.environ if environ is None else environ)
        settings = cls(
            **{field: parse(reader, name, default) for field, name, parse, default in _table()}
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


# How a field is read when it names no parser of its own: by its type.
_BY_TYPE: dict[object, Parser] = {
    str: _EnvReader.text,
    str | None: _EnvReader.optional,
    Path: _EnvReader.path,
    int: _EnvReader.integer,
    float: _EnvReader.number,
    bool: _EnvReader.switch,
    RateLimit: _EnvReader.rate,
    tuple[str, ...]: _EnvReader.words,
}


@functools.cache
def _table() -> tuple[tuple[str, str, Parser, Any], ...]:
    """Per field of Settings: (field, variable name without JANGTEO_, parser, default)."""
    types = typing.get_type_hints(Settings)
    return tuple(
        (
            field.name,
            field.metadata.get("env") or field.name.upper(),
            field.metadata.get("parse") or _BY_TYPE[types[field.name]],
            field.default,
        )
        for field in dataclasses.fields(Settings)
    )
