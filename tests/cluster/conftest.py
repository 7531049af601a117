"""A real Redis Cluster for the suite: three masters, three replicas, started as users
start theirs (``EmbeddedStack.start_owned("cluster")``), put back together and emptied
before each test, since tests kill masters and move slots."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from server.embedded.redis_cluster import EmbeddedRedisCluster
from server.embedded.stack import EmbeddedStack
from server.settings import Settings
from tests.support import make_settings, server_env


@pytest.fixture(scope="session")
def session_cluster(service_urls: tuple[str, str]) -> Iterator[EmbeddedRedisCluster]:
    stack = EmbeddedStack(Settings.from_env().data_dir)
    _, stops = stack.start_owned("cluster")
    try:
        yield stack.redis_cluster()
    finally:
        for stop in stops:
            stop()


@pytest.fixture
def redis_cluster(session_cluster: EmbeddedRedisCluster) -> EmbeddedRedisCluster:
    """Every node running, every master with its replica, every master empty."""
    session_cluster.ensure_running()
    for node in session_cluster.nodes:
        client = redis.Redis(port=node.port)
        try:
            if client.info("replication")["role"] == "master":
                client.flushall()
        finally:
            client.close()
    return session_cluster


@pytest.fixture
def cluster_settings(database_url: str, redis_cluster: EmbeddedRedisCluster) -> Settings:
    return make_settings(database_url, redis_cluster.url, redis_mode="cluster")


@pytest.fixture
def cluster_env(database_url: str, redis_cluster: EmbeddedRedisCluster) -> dict[str, str]:
    return server_env(database_url, redis_cluster.url, REDIS_MODE="cluster")
