"""deploy/k8s/base: valid against the Kubernetes schemas (offline, strict) and consistent
with the settings, the app's routes, the image and each other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.dockerfile import read_stages
from tests.deploy.names import (
    POSTGRES_SERVER_SETTINGS,
    ROOT,
    app_paths,
    seconds,
    setting_names,
    settings_from,
    size_bytes,
)

BASE = ROOT / "deploy" / "k8s" / "base"
KUBERNETES_VERSION = "1.30"  # the oldest version the manifests are meant for
Manifest = dict[str, Any]


def _load(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def kustomization() -> Manifest:
    document = _load(BASE / "kustomization.yaml")[0]
    assert document["kind"] == "Kustomization"
    return document


@pytest.fixture(scope="module")
def manifests(kustomization: Manifest) -> list[Manifest]:
    return [doc for name in kustomization["resources"] for doc in _load(BASE / name)]


def _one(manifests: list[Manifest], kind: str) -> Manifest:
    (found,) = [doc for doc in manifests if doc["kind"] == kind]
    return found


def _pod(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def _environment(manifests: list[Manifest]) -> dict[str, str]:
    """What envFrom gives the containers: the ConfigMap's data and the Secret's."""
    config = _one(manifests, "ConfigMap")["data"]
    secret = _one(manifests, "Secret")["stringData"]
    return {**config, **secret}


def _comments(path: Path) -> str:
    """A manifest's notes: its comment lines, joined."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return " ".join(line.lstrip("#").strip() for line in lines if line.startswith("#"))


def _operations_section(title: str) -> str:
    """docs/operations.md's section under ``### {title}``, up to the next heading of its
    level or above."""
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index(f"\n### {title}\n")
    following = re.search(r"\n#{1,3} ", text[start + 1 :])
    return text[start : start + 1 + following.start()] if following else text[start:]


def test_notes_on_postgresql_name_the_settings_jangteo_needs(kustomization: Manifest) -> None:
    """PostgreSQL runs outside the manifests, so the notes where it is named say what it must
    run with: commit timestamps on, or an event's `ts` is its transaction's start."""
    database_files = [
        name
        for name in kustomization["resources"]
        for doc in _load(BASE / name)
        if "JANGTEO_DATABASE_URL" in {**doc.get("data", {}), **doc.get("stringData", {})}
    ]
    assert database_files, "a manifest names the database"
    notes = {name: _comments(BASE / name) for name in ["kustomization.yaml", *database_files]}
    notes["docs/operations.md, Kubernetes"] = _operations_section("Kubernetes")
    for name, wanted in POSTGRES_SERVER_SETTINGS.items():
        said = re.compile(rf"\b{name}\s*=\s*{wanted}\b")
        missing = [where for where, text in notes.items() if not said.search(text)]
        assert missing == [], f"{name} = {wanted} is not asked for in {missing}"


def test_kustomization_lists_every_manifest(kustomization: Manifest) -> None:
    listed = set(kustomization["resources"])
    present = {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_manifests_match_the_kubernetes_schemas(manifests: list[Manifest]) -> None:
    """Strict: unknown fields (a misspelt probe, say) are errors, not silently ignored."""
    problems = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{manifest['kind']}: {'.'.join(map(str, error.path))}: {error}")
    assert problems == []


def test_every_kind_is_there(manifests: list[Manifest]) -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in manifests}
    assert kinds >= {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
        ("batch/v1", "Job"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("networking.k8s.io/v1", "Ingress"),
    }


def test_environment_names_are_settings_and_valid(manifests: list[Manifest]) -> None:
    env = _environment(manifests)
    assert set(env) <= setting_names()
    for workload in (_one(manifests, "Deployment"), _one(manifests, "Job")):
        for container in _pod(workload)["containers"]:
            names = {item["name"] for item in container.get("env", [])}
            assert names <= setting_names(), container["name"]
            refs = {
                (kind, source[key]["name"])
                for source in container["envFrom"]
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret"))
                if key in source
            }
            defined = {(doc["kind"], doc["metadata"]["name"]) for doc in manifests}
            assert refs == {("ConfigMap", "jangteo-config"), ("Secret", "jangteo-secrets")}
            assert refs <= defined
    settings = settings_from(env)  # raises on a value the server would refuse
    assert settings.database_url and settings.redis_url, "PostgreSQL and Redis by URL"


def test_probes_use_real_routes_on_the_serving_port(manifests: list[Manifest]) -> None:
    (container,) = _pod(_one(manifests, "Deployment"))["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == settings_from(_environment(manifests)).port
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"
    assert liveness["httpGet"]["path"] == "/healthz"
    for probe in (readiness, liveness, container.get("startupProbe")):
        if probe is not None:
            assert probe["httpGet"]["path"] in app_paths()
            assert probe["httpGet"]["port"] in ports or probe["httpGet"]["port"] in set(
                ports.values()
            )


def test_grace_period_outlasts_prestop_and_shutdown(manifests: list[Manifest]) -> None:
    pod = _pod(_one(manifests, "Deployment"))
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = seconds(command[1])
    assert pause > 0, "a pause while endpoints drop the pod"
    shutdown = settings_from(_environment(manifests)).shutdown_timeout
    assert pod["terminationGracePeriodSeconds"] > pause + shutdown


def test_every_container_has_requests_and_limits(manifests: list[Manifest]) -> None:
    for workload in (_one(manifests, "Deployment"), _one(manifests, "Job")):
        for container in _pod(workload)["containers"]:
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert set(resources[bound]) >= {"cpu", "memory"}, container["name"]


def test_pods_run_as_the_image_user(manifests: list[Manifest]) -> None:
    user = read_stages(ROOT / "Dockerfile")[-1].last("USER")
    assert user is not None
    for workload in (_one(manifests, "Deployment"), _one(manifests, "Job")):
        security = _pod(workload)["securityContext"]
        assert security["runAsNonRoot"] is True
        assert str(security["runAsUser"]) == user.split(":")[0]


def test_service_hpa_pdb_and_ingress_point_at_the_pods(manifests: list[Manifest]) -> None:
    deployment = _one(manifests, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = _pod(deployment)["containers"]
    container_ports = {port["name"] for port in container["ports"]}

    service = _one(manifests, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert "sessionAffinity" not in service["spec"] or service["spec"]["sessionAffinity"] == "None"
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert {port["targetPort"] for port in service_ports.values()} <= container_ports

    pdb = _one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    hpa = _one(manifests, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"

    ingress = _one(manifests, "Ingress")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in service_ports


def test_ingress_keeps_websockets_open_without_affinity(manifests: list[Manifest]) -> None:
    annotations = _one(manifests, "Ingress")["metadata"]["annotations"]
    heartbeat = settings_from(_environment(manifests)).ws_heartbeat
    prefix = "nginx.ingress.kubernetes.io/"
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert seconds(annotations[prefix + name]) > heartbeat, name
    assert not any(key.startswith(prefix + "affinity") for key in annotations)
    body = annotations[prefix + "proxy-body-size"]
    assert size_bytes(body) >= settings_from(_environment(manifests)).max_body_bytes


def test_migration_job_runs_jangteo_migrate(manifests: list[Manifest]) -> None:
    job = _one(manifests, "Job")
    (container,) = _pod(job)["containers"]
    assert container["args"] == ["migrate"], "the image's entry point is `jangteo`"
    (server,) = _pod(_one(manifests, "Deployment"))["containers"]
    assert container["image"] == server["image"]
    assert server.get("args", ["serve"]) == ["serve"]
