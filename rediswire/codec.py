"""RESP commands and the parts of a Redis URL, for connections that speak the protocol raw."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit


def command(*parts: str | bytes) -> bytes:
    """One RESP command, ready to write on a socket."""
    encoded = [part if isinstance(part, bytes) else part.encode() for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded
    )


def redis_database(redis_url: str) -> str:
    """The database number of a Redis URL, read as redis-py reads it."""
    parts = urlsplit(redis_url)
    in_query = parse_qs(parts.query).get("db")
    return in_query[0] if in_query else parts.path.strip("/") or "0"


def hello(redis_url: str, client_name: str) -> bytes:
    """HELLO 3 with the URL's credentials and a client name, then SELECT its database."""
    parts = urlsplit(redis_url)
    words: list[str] = ["HELLO", "3"]
    if parts.password:
        words += ["AUTH", unquote(parts.username or "") or "default", unquote(parts.password)]
    words += ["SETNAME", client_name]
    return command(*words) + command("SELECT", redis_database(redis_url))


def address(redis_url: str) -> tuple[str, int]:
    parts = urlsplit(redis_url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def node_url(redis_url: str, host: str, port: int) -> str:
    """``redis_url`` with another host and port (a cluster node), credentials kept."""
    parts = urlsplit(redis_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
    return parts._replace(netloc=netloc).geturl()
