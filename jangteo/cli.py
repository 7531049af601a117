"""The ``jangteo`` command line: serve, services, migrate, relay, seed."""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from db.migrate import MigrationError, migrate
from db.queries.relay import RelayConfig, read_config, set_partitions
from server.embedded.process import EmbeddedServiceError
from server.embedded.stack import EmbeddedStack
from server.settings import REDIS_MODES, Settings, SettingsError


def resolve_services(settings: Settings) -> Settings:
    """Fill in missing database/Redis URLs by starting (or joining) the embedded stack."""
    settings = settings.with_jwt_secret()
    if settings.database_url and settings.redis_url:
        return settings
    urls = EmbeddedStack(settings.data_dir).start(settings.redis_mode)
    return settings.replace(
        database_url=settings.database_url or urls.database_url,
        redis_url=settings.redis_url or urls.redis_url,
    )


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from jangteo.serve import serve

    settings = resolve_services(settings)
    settings = settings.replace(
        host=args.host or settings.host, port=args.port if args.port is not None else settings.port
    )
    return serve(settings, args.workers)


def _services(args: argparse.Namespace, settings: Settings) -> int:
    stack = EmbeddedStack(settings.data_dir)
    if args.action == "start":
        urls = stack.start(args.redis)
        print(urls.as_exports(), end="")
    elif args.action == "stop":
        stack.stop()
    else:
        found = stack.urls(args.redis)
        if found is None:
            print("no embedded services here yet; run: jangteo services start", file=sys.stderr)
            return 1
        print(found.as_exports(), end="")
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    settings = resolve_services(settings)
    assert settings.database_url is not None
    applied = asyncio.run(migrate(settings.database_url))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    if settings.relay_partitions:
        config = asyncio.run(_partitions(settings.database_url, settings.relay_partitions))
        print(f"relay partitions: {config.partitions}")
    return 0


async def _partitions(database_url: str, count: int | None) -> RelayConfig:
    conn = await asyncpg.connect(database_url)
    try:
        return await (read_config(conn) if count is None else set_partitions(conn, count))
    finally:
        await conn.close()


def _relay(args: argparse.Namespace, settings: Settings) -> int:
    settings = resolve_services(settings)
    assert settings.database_url is not None
    try:
        config = asyncio.run(_partitions(settings.database_url, args.count))
    except ValueError as error:
        print(f"jangteo: {error}", file=sys.stderr)
        return 2
    print(f"relay partitions: {config.partitions} (generation {config.generation})")
    return 0


def _seed(args: argparse.Namespace, settings: Settings) -> int:
    from server.seed import seed

    settings = resolve_services(settings)
    summary = asyncio.run(
        seed(settings, users=args.users, listings=args.listings, if_empty=args.if_empty)
    )
    print(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jangteo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP + WebSocket server")
    serve.add_argument("--host", default=None, help="bind address (JANGTEO_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (JANGTEO_PORT)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    serve.set_defaults(run=_serve)

    services = commands.add_parser("services", help="embedded PostgreSQL + Redis (or cluster)")
    services.add_argument("action", choices=["start", "stop", "env"])
    services.add_argument(
        "--redis",
        choices=REDIS_MODES,
        default="single",
        help="one Redis server, or a local cluster of three masters and three replicas",
    )
    services.set_defaults(run=_services)

    migrate_cmd = commands.add_parser("migrate", help="apply pending migrations")
    migrate_cmd.set_defaults(run=_migrate)

    relay = commands.add_parser("relay", help="the outbox relay's partitions")
    relay_commands = relay.add_subparsers(dest="relay_command", required=True)
    partitions = relay_commands.add_parser(
        "partitions", help="show the partition count, or change it for every instance"
    )
    partitions.add_argument(
        "count", type=int, nargs="?", help="the new count: 1, 2, 4, 8, 16, 32 or 64"
    )
    partitions.set_defaults(run=_relay)

    seed_cmd = commands.add_parser("seed", help="fill a demo neighbourhood")
    seed_cmd.add_argument("--users", type=int, default=20)
    seed_cmd.add_argument("--listings", type=int, default=60)
    seed_cmd.add_argument("--if-empty", action="store_true", help="only when there are no users")
    seed_cmd.set_defaults(run=_seed)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.run(args, settings)
    except (SettingsError, MigrationError, EmbeddedServiceError) as error:
        print(f"jangteo: {error}", file=sys.stderr)
        code = 2
    sys.exit(code)
