"""docker-compose.yml, read with PyYAML: names, ports and start order agree with the code.

No container engine runs here, so nothing is started; each check reads the file and
compares it with the settings the code reads (server/settings.py, loadtests/config.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.deploy.compose_env import app_services, environment, interpolate, is_locust
from tests.deploy.names import (
    POSTGRES_SERVER_SETTINGS,
    ROOT,
    app_paths,
    load_setting_names,
    postgres_options,
    postgres_value_matches,
    seconds,
    setting_names,
    settings_from,
)

COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
# Where each dependency listens inside compose's network (the images' defaults).
SERVICE_PORTS = {"postgres": 5432, "redis": 6379, "minio": 9000}


def test_every_jangteo_name_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    server, load = setting_names(), load_setting_names()
    for name, service in services.items():
        names = {key for key in environment(service) if key.startswith("JANGTEO_")}
        known = load if is_locust(service) else server
        assert names - known == set(), f"{name}: not settings"
    mentioned = set(re.findall(r"\bJANGTEO_[A-Z0-9_]+", COMPOSE_TEXT))
    assert mentioned - (server | load) == set(), "JANGTEO_* names (comments, ${...}) unknown"


def test_app_environment_is_a_valid_configuration(services: dict[str, dict[str, Any]]) -> None:
    for name, service in app_services(services).items():
        settings = settings_from(environment(service))  # raises on a value it cannot use
        assert settings.jwt_secret, f"{name}: replicas share one JWT secret"
        assert settings.database_url and settings.redis_url and settings.s3_endpoint, name


def test_dependency_urls_name_services_and_their_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in app_services(services).items():
        settings = settings_from(environment(service))
        for url in (settings.database_url, settings.redis_url, settings.s3_endpoint):
            assert url is not None
            parts = urlsplit(url)
            assert parts.hostname in SERVICE_PORTS, f"{name}: {url} names a compose service"
            assert parts.port == SERVICE_PORTS[parts.hostname], f"{name}: {url}"
    minio_ports = {str(port).rpartition(":")[2] for port in services["minio"]["ports"]}
    assert str(SERVICE_PORTS["minio"]) in minio_ports, "presigned URLs reach MinIO's port"


def test_postgres_runs_with_the_settings_jangteo_needs(
    services: dict[str, dict[str, Any]],
) -> None:
    """Commit timestamps on: an event's `ts` is its commit time, not its transaction's start."""
    options = postgres_options(services["postgres"].get("command", []))
    for name, wanted in POSTGRES_SERVER_SETTINGS.items():
        assert postgres_value_matches(options.get(name), wanted), f"postgres: -c {name}={wanted}"


def test_two_or_more_replicas_start_after_their_dependencies(
    services: dict[str, dict[str, Any]],
) -> None:
    apps = app_services(services)
    assert len(apps) >= 2
    for name, service in apps.items():
        conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
        assert conditions == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "createbucket": "service_completed_successfully",
            "migrate": "service_completed_successfully",
            "redis-cluster-create": "service_completed_successfully",
        }, name
        assert service["depends_on"]["redis-cluster-create"]["required"] is False, name


def test_migrations_run_once_before_the_apps(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["build"] == "."
    assert migrate["command"] == ["migrate"], "the image's entry point is `jangteo`"
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (
        environment(migrate)["JANGTEO_DATABASE_URL"]
        == environment(next(iter(app_services(services).values())))["JANGTEO_DATABASE_URL"]
    )


def test_bucket_is_created_at_start(services: dict[str, dict[str, Any]]) -> None:
    bucket = services["createbucket"]
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(str(part) for part in bucket["command"])
    assert "mc mb --ignore-existing" in script
    wanted = {settings_from(environment(app)).s3_bucket for app in app_services(services).values()}
    assert wanted == {environment(bucket)["BUCKET"]}, "the bucket the apps use"


def test_health_checks_probe_readiness(services: dict[str, dict[str, Any]]) -> None:
    for name, service in app_services(services).items():
        probe = " ".join(service["healthcheck"]["test"])
        port = settings_from(environment(service)).port
        assert f"127.0.0.1:{port}/readyz" in probe, name
        assert "/readyz" in app_paths()
    for name in ("postgres", "redis", "minio", "nginx"):
        assert services[name]["healthcheck"]["test"], f"{name} has a health check"


def test_every_condition_is_valid_and_checkable(services: dict[str, dict[str, Any]]) -> None:
    allowed = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] in allowed, name
            if spec["condition"] == "service_healthy":
                check = services[target].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{target} health"


def test_replicas_outlive_the_shutdown_timeout(services: dict[str, dict[str, Any]]) -> None:
    for name, service in app_services(services).items():
        timeout = settings_from(environment(service)).shutdown_timeout
        grace = seconds(service.get("stop_grace_period", "10s"))  # Docker's default: 10 s
        assert grace > timeout, f"{name}: SIGKILL would cut the graceful shutdown short"


def test_load_profile_runs_locust_against_nginx(services: dict[str, dict[str, Any]]) -> None:
    master, worker = services["locust-master"], services["locust-worker"]
    assert is_locust(master) and is_locust(worker)
    nginx_port = int(str(services["nginx"]["ports"][0]).rpartition(":")[2])
    target = f"http://nginx:{nginx_port}"
    assert f"--master --host {target}" in interpolate(master["command"])
    assert environment(master)["JANGTEO_LOAD_HOST"] == target
    assert "--worker --master-host locust-master" in interpolate(worker["command"])
    assert worker["deploy"]["replicas"] >= 2
    assert master["depends_on"]["nginx"]["condition"] == "service_healthy"
    assert not any(is_locust(service) for service in app_services(services).values())


def test_pgbouncer_profile_pools_the_apps_database_in_session_mode(
    services: dict[str, dict[str, Any]],
) -> None:
    """Optional; session mode only: the relay's lock and LISTEN, and asyncpg's prepared
    statements, belong to a session (docs/operations.md)."""
    bouncer = services["pgbouncer"]
    assert bouncer["profiles"] == ["pgbouncer"]
    image, _, tag = bouncer["image"].partition(":")
    assert image == "edoburu/pgbouncer" and tag and tag != "latest", "a pinned version"
    env = environment(bouncer)
    assert env["POOL_MODE"] == "session"
    target = urlsplit(env["DATABASE_URL"])
    assert (target.hostname, target.port) == ("postgres", SERVICE_PORTS["postgres"])
    apps = [settings_from(environment(app)) for app in app_services(services).values()]
    assert {urlsplit(str(app.database_url)).path for app in apps} == {target.path}
    assert bouncer["depends_on"]["postgres"]["condition"] == "service_healthy"
    listen = f"pgbouncer:{env['LISTEN_PORT']}"
    assert f"@{listen}/" in COMPOSE_TEXT, "the comment's URL names pgbouncer's port"
    assert int(env["DEFAULT_POOL_SIZE"]) >= 2 * (apps[0].pg_pool_max + 1)


def test_cluster_profile_makes_three_masters_with_a_replica_each(
    services: dict[str, dict[str, Any]],
) -> None:
    """Optional: six cluster-enabled nodes and a one-shot `redis-cli --cluster create`;
    the apps use it when JANGTEO_REDIS_MODE and JANGTEO_REDIS_URL say so."""
    nodes = {name: service for name, service in services.items() if name.startswith("redis-node-")}
    assert len(nodes) == 6
    for name, node in nodes.items():
        assert node["profiles"] == ["cluster"], name
        assert node["image"] == "redis:7", "sharded pub/sub needs Redis >= 7"
        assert "--cluster-enabled" in node["command"], name
    create = services["redis-cluster-create"]
    assert create["profiles"] == ["cluster"] and create["restart"] == "no"
    assert set(create["depends_on"]) == set(nodes)
    script = " ".join(create["command"])
    assert "--cluster-replicas 1" in script and all(f"{n}:6379" in script for n in nodes)
    switch = {"JANGTEO_REDIS_MODE": "cluster", "JANGTEO_REDIS_URL": "redis://redis-node-1:6379/0"}
    assert (
        "JANGTEO_REDIS_MODE=cluster JANGTEO_REDIS_URL=redis://redis-node-1:6379/0" in COMPOSE_TEXT
    )
    for name, app in app_services(services).items():
        assert set(switch) <= set(environment(app)), f"{name} takes both from the environment"
        settings = settings_from({**environment(app), **switch})
        assert settings.redis_mode == "cluster", name


def bind_mounts(service: dict[str, Any]) -> dict[PurePosixPath, tuple[Path, list[str]]]:
    """A service's mounts of repository files: container path -> (file here, options)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *options = str(volume).split(":")
        if source.startswith("./"):
            mounts[PurePosixPath(target)] = (ROOT / source, options)
    return mounts


def mounted(mounts: dict[PurePosixPath, tuple[Path, list[str]]], path: str) -> Path:
    """The file here that a container sees at ``path`` (in a mounted folder, or itself)."""
    wanted = PurePosixPath(path)
    for target, (source, _) in mounts.items():
        if wanted == target or target in wanted.parents:
            return source / wanted.relative_to(target)
    raise AssertionError(f"{path} is not mounted")


def test_observability_profile_scrapes_every_replica_and_provisions_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    """Optional: Prometheus (the alert rules loaded) and Grafana (its datasource and the
    dashboard provisioned), pinned images, the repository's files mounted read-only."""
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service in (prometheus, grafana):
        assert service["profiles"] == ["observability"]
        image, _, tag = service["image"].partition(":")
        assert image and tag and tag != "latest", "a pinned version"
        for source, options in bind_mounts(service).values():
            assert options == ["ro"] and source.exists(), source
    prom_mounts = bind_mounts(prometheus)
    config_path = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config_file = mounted(prom_mounts, config_path.partition("=")[2])
    config = yaml.safe_load(config_file.read_text())
    for rules in config["rule_files"]:  # relative to the configuration's folder
        container_path = PurePosixPath(config_path.partition("=")[2]).parent / rules
        assert mounted(prom_mounts, str(container_path)).exists(), rules
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and "/metrics" in app_paths()
    replicas = {
        f"{name}:{settings_from(environment(app)).port}"
        for name, app in app_services(services).items()
    }
    assert {t for group in job["static_configs"] for t in group["targets"]} == replicas

    grafana_mounts = bind_mounts(grafana)
    provisioning = mounted(grafana_mounts, "/etc/grafana/provisioning")
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    published = {str(port).rpartition(":")[2] for port in prometheus["ports"]}
    assert urlsplit(source["url"]).hostname == "prometheus"
    assert str(urlsplit(source["url"]).port) in published
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "jangteo.yml").read_text())[
        "providers"
    ]
    dashboards = mounted(grafana_mounts, provider["options"]["path"])
    for file in dashboards.glob("*.json"):
        uids = {target["datasource"]["uid"] for target in _targets(json.loads(file.read_text()))}
        assert uids == {source["uid"]}, file.name
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted(grafana_mounts, home).exists()
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    return [target for panel in panels for target in panel.get("targets", [])]
