"""deploy/nginx.conf: accepted by ``nginx -t``, and proxying the way the apps need.

``nginx -t`` resolves every upstream host name while it checks, and compose's names (app1,
app2) exist only on compose's network. The test therefore checks a copy in which each
upstream ``server app1:8080`` becomes ``server 127.0.0.1:8080`` (after asserting that those
names are compose's app services), with nginx's temporary paths moved under a temporary
prefix, so it needs neither DNS nor root. ``resolver`` with variables in ``proxy_pass``
would have avoided the substitution, but gives up the upstream block's keepalive and
failover; the ``resolve`` server parameter needs nginx >= 1.27.3, newer than Debian's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.compose_env import app_services, environment
from tests.deploy.names import ROOT, app_paths, seconds, settings_from, size_bytes
from tests.deploy.nginx_binary import nginx_test
from tests.deploy.nginx_conf import Directive, parse

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
WS_PATH = "/api/v1/ws"
SSE_PATH = "/api/v1/sse"


@pytest.fixture(scope="module")
def conf() -> Directive:
    return parse(NGINX_CONF.read_text())


def _upstream_servers(conf: Directive) -> list[tuple[str, int]]:
    found = []
    for upstream in conf.find("upstream"):
        for args in upstream.values("server"):
            host, _, port = args[0].rpartition(":")
            found.append((host, int(port)))
    return found


def checkable_copy(text: str, hosts: set[str], folder: Path) -> Path:
    """The configuration with upstream hosts on loopback and temp paths under ``folder``."""
    for host in hosts:
        text = re.sub(rf"(\bserver\s+){re.escape(host)}:", r"\g<1>127.0.0.1:", text)
    temp = "".join(f"    {kind}_temp_path {folder / kind};\n" for kind in TEMP_PATHS)
    text, count = re.subn(r"^http\s*\{\n", lambda m: m.group(0) + temp, text, flags=re.M)
    assert count == 1, "one http block"
    copy = folder / "nginx.conf"
    copy.write_text(text)
    return copy


@pytest.mark.timeout(600)  # the first use may install nginx
def test_nginx_accepts_the_configuration(
    nginx_binary: str, services: dict[str, dict[str, Any]], conf: Directive, tmp_path: Path
) -> None:
    hosts = {host for host, _ in _upstream_servers(conf)}
    assert hosts <= set(services), "upstream hosts are compose services"
    copy = checkable_copy(NGINX_CONF.read_text(), hosts, tmp_path)
    result = nginx_test(nginx_binary, copy)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(600)
def test_nginx_check_rejects_a_broken_copy(
    nginx_binary: str, conf: Directive, tmp_path: Path
) -> None:
    """The harness itself: ``nginx -t`` really reads the copy (a typo must fail it)."""
    text = NGINX_CONF.read_text().replace("proxy_http_version", "proxy_http_versoin", 1)
    hosts = {host for host, _ in _upstream_servers(conf)}
    copy = checkable_copy(text, hosts, tmp_path)
    result = nginx_test(nginx_binary, copy)
    assert result.returncode != 0
    assert "proxy_http_versoin" in result.stderr


def test_every_replica_is_upstream_without_stickiness(
    conf: Directive, services: dict[str, dict[str, Any]]
) -> None:
    apps = app_services(services)
    assert len(apps) >= 2, "two or more app replicas"
    servers = _upstream_servers(conf)
    assert {host for host, _ in servers} == set(apps)
    for name, service in apps.items():
        port = settings_from(environment(service)).port
        assert (name, port) in servers, f"{name} upstream on its JANGTEO_PORT {port}"
    for upstream in conf.find("upstream"):
        sticky = {child.name for child in upstream.children} & {"ip_hash", "hash", "sticky"}
        assert not sticky, "no sticky sessions: any replica serves any socket"


def test_websocket_upgrade_is_passed_through(conf: Directive) -> None:
    http = conf.first("http")
    assert http.values("proxy_http_version") == [["1.1"]]
    headers = {args[0].lower(): args[1] for args in http.values("proxy_set_header")}
    assert headers["upgrade"] == "$http_upgrade"
    assert headers["connection"] == "$connection_upgrade"
    maps = {tuple(block.args): block for block in http.find("map")}
    upgrade_map = maps[("$http_upgrade", "$connection_upgrade")]
    assert upgrade_map.values("default") == [["upgrade"]]
    socket = _location(conf, WS_PATH)
    assert WS_PATH in app_paths()
    # proxy_set_header in a location replaces every inherited one, Upgrade included.
    assert not socket.values("proxy_set_header"), "the socket location inherits Upgrade"
    assert socket.values("proxy_pass"), "the socket location proxies"


def test_timeouts_outlast_the_heartbeat(
    conf: Directive, services: dict[str, dict[str, Any]]
) -> None:
    heartbeat = max(
        settings_from(environment(service)).ws_heartbeat
        for service in app_services(services).values()
    )
    timeouts = [
        seconds(args[0])
        for name in ("proxy_read_timeout", "proxy_send_timeout")
        for args in _all_values(conf, name)
    ]
    assert timeouts, "timeouts are set, not left to nginx's 60 s"
    assert min(timeouts) > heartbeat
    socket = _location(conf, WS_PATH)
    assert seconds(socket.values("proxy_read_timeout")[0][0]) >= 10 * heartbeat


def test_nginx_listens_where_compose_publishes_it(
    conf: Directive, services: dict[str, dict[str, Any]]
) -> None:
    listens = {int(args[0].rpartition(":")[2]) for args in _all_values(conf, "listen")}
    published = {int(str(port).rpartition(":")[2]) for port in services["nginx"]["ports"]}
    assert listens == published


def test_body_limit_admits_the_app_limit(
    conf: Directive, services: dict[str, dict[str, Any]]
) -> None:
    (size,) = conf.first("http").values("client_max_body_size")[0]
    limit = size_bytes(size)
    for service in app_services(services).values():
        assert limit >= settings_from(environment(service)).max_body_bytes


def _location(conf: Directive, path: str) -> Directive:
    for location in conf.find("location"):
        if location.args[-1] == path:
            return location
    raise AssertionError(f"no location {path}")


def _all_values(conf: Directive, name: str) -> list[list[str]]:
    return [directive.args for directive in conf.find(name)]


def test_metrics_are_not_served_at_the_edge(conf: Directive) -> None:
    """Prometheus scrapes replicas directly; the public edge answers 404 for /metrics."""
    assert "/metrics" in app_paths()
    exact = [location for location in conf.find("location") if location.args == ["=", "/metrics"]]
    assert len(exact) == 1, "nginx forwards /metrics to the apps"
    assert exact[0].values("return") == [["404"]]
    assert not exact[0].values("proxy_pass")


def test_event_streams_pass_unbuffered_and_outlast_their_heartbeat(
    conf: Directive, services: dict[str, dict[str, Any]]
) -> None:
    heartbeat = max(
        settings_from(environment(service)).sse_heartbeat
        for service in app_services(services).values()
    )
    stream = _location(conf, SSE_PATH)
    assert SSE_PATH in app_paths()
    assert stream.values("proxy_buffering") == [["off"]], "each message passes at once"
    assert seconds(stream.values("proxy_read_timeout")[0][0]) >= 10 * heartbeat
    assert stream.values("proxy_next_upstream") == [["off"]], "a started stream is not replayed"
