"""The deployment files hold together: the compose stack (`docker compose config` where the
client has the compose plugin, else a structural check) and the Kubernetes manifests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from workers.config import SIGNERS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
ONE_SHOT = {"temporal-schema", "temporal-namespace"}
POSFLOW_HTTP_ROLES = {"gateway", "review", "contract", "device", "logistics", "notification"}
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def example_env() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[name.strip()] = value.strip().strip("'")
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}`, `${NAME:?error}` with `env`."""

    def one(match: re.Match[str]) -> str:
        whole, name = match.group(0), match.group(1)
        if name in env and env[name] != "":
            return env[name]
        if ":-" in whole:
            return whole.split(":-", 1)[1][:-1]
        if ":?" in whole:
            raise AssertionError(f"{name} is required and has no value in .env.example")
        return ""

    return _VAR.sub(one, text)


def filled_env() -> dict[str, str]:
    """.env.example with its placeholders filled as an operator would."""
    from workers.codec import KeyRing

    env = example_env()
    for name, value in env.items():
        if "CHANGE-ME" in value:
            env[name] = value.replace("CHANGE-ME", "r4nd0m" * 4)
    env["POSFLOW_KEYRING"] = KeyRing.generate().to_json().replace("\n", "")
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as compose reads it: parsed, then `${...}` interpolated in every string."""
    env = filled_env()

    def resolve(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, env)
        if isinstance(node, dict):
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    loaded: dict[str, Any] = resolve(yaml.safe_load(COMPOSE.read_text()))
    return loaded


def test_the_env_example_names_every_required_variable() -> None:
    required = {m.group(1) for m in re.finditer(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text())}
    assert required <= set(example_env()), required - set(example_env())


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def has_compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not has_compose_plugin(), reason="no `docker compose` client here")
def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text((COMPOSE_DIR / ".env.example").read_text())
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_every_service_has_a_pinned_image_or_a_build(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        image = service.get("image", "")
        if image:
            repository, _, tag = image.rpartition(":")
            assert repository and tag and tag != "latest", f"{name}: pin {image!r}"
    images = {s["image"].split(":")[0] for s in compose["services"].values()}
    assert {"temporalio/server", "temporalio/admin-tools", "temporalio/ui", "postgres"} <= images
    assert not any("auto-setup" in image for image in images)  # deprecated by Temporal


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        if name in ONE_SHOT:
            assert check.get("disable") is True, name
            assert str(service.get("restart", "")).startswith("on-failure"), name
        else:
            assert check.get("test"), f"{name} has no healthcheck"


def test_start_up_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown {target}"

    def condition(service: str, target: str) -> str:
        return str(services[service]["depends_on"][target]["condition"])

    assert condition("temporal", "temporal-schema") == "service_completed_successfully"
    assert condition("temporal-namespace", "temporal") == "service_healthy"
    assert condition("worker", "temporal-namespace") == "service_completed_successfully"
    assert condition("gateway", "posflow-db") == "service_healthy"


def test_the_schema_job_creates_and_upgrades_both_stores(compose: dict[str, Any]) -> None:
    script = (COMPOSE_DIR / "scripts" / "temporal-schema.sh").read_text()
    for command in ("create-database", "setup-schema", "update-schema"):
        assert command in script
    assert "temporal:temporal" in script and "temporal_visibility:visibility" in script
    assert compose["services"]["temporal-schema"]["command"] == ["/scripts/temporal-schema.sh"]


def test_the_namespace_job_registers_every_search_attribute() -> None:
    from workflows import search_attributes

    script = (COMPOSE_DIR / "scripts" / "temporal-namespace.sh").read_text()
    for key in search_attributes.ALL:
        kind = {"KEYWORD": "Keyword", "INT": "Int", "BOOL": "Bool", "DATETIME": "Datetime"}[
            key.indexed_value_type.name
        ]
        assert f"{key.name}:{kind}" in script, key.name


def test_workers_scale_and_stop_gracefully(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert int(worker["deploy"]["replicas"]) >= 2
    assert "container_name" not in worker
    grace = int(worker["environment"]["POSFLOW_WORKER_SHUTDOWN_GRACE_SECONDS"])
    assert int(worker["stop_grace_period"].rstrip("s")) > grace


def test_the_roles_have_what_the_code_reads(compose: dict[str, Any]) -> None:
    """What the start-up check requires of a cluster deployment is set, for each role."""
    from workers.settings_check import check_environment

    services = compose["services"]
    worker = {k: str(v) for k, v in services["worker"]["environment"].items()}
    assert check_environment("worker", worker) == []
    gateway = {k: str(v) for k, v in services["gateway"]["environment"].items()}
    assert gateway["POSFLOW_GATEWAY_HOST"] == "0.0.0.0"
    assert check_environment("gateway", gateway) == []
    assert {f"POSFLOW_{s.upper()}_SECRET" for s in SIGNERS} <= set(gateway)
    for name in POSFLOW_HTTP_ROLES - {"gateway"}:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["POSFLOW_GATEWAY_URL"] == "http://gateway:8000"
    ui = services["temporal-ui"]["environment"]
    assert ui["TEMPORAL_CODEC_ENDPOINT"].endswith("/codec")  # gateway/codec.py PREFIX
    assert ui["TEMPORAL_CORS_ORIGINS"] == gateway["POSFLOW_TEMPORAL_UI_URL"]


def test_the_role_commands_exist() -> None:
    """Each container runs `posflow <role>`: the commands must be the CLI's."""
    from typer.main import get_command

    from cli.main import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    assert {"worker", "gateway", "service"} <= commands


# --- Kubernetes ---------------------------------------------------------------------------------


def of_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def test_every_manifest_parses_and_names_its_namespace(manifests: list[dict[str, Any]]) -> None:
    assert manifests
    for manifest in manifests:
        if manifest["kind"] in ("Namespace", "Kustomization"):
            continue
        assert manifest["metadata"]["namespace"] == "posflow", manifest["metadata"]["name"]


def test_deployments_have_probes_resources_and_services(manifests: list[dict[str, Any]]) -> None:
    deployments = of_kind(manifests, "Deployment")
    services = of_kind(manifests, "Service")
    expected = {f"posflow-{n}" for n in (*POSFLOW_HTTP_ROLES, "worker")}
    assert set(deployments) == expected
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["image"].rpartition(":")[2] not in ("", "latest"), name
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] in ("/health", "/metrics"), name
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), name
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert labels.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        if name != "posflow-worker":
            assert services[name]["spec"]["selector"].items() <= labels.items()


def test_the_worker_autoscales_and_has_time_to_stop(manifests: list[dict[str, Any]]) -> None:
    [hpa] = of_kind(manifests, "HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "posflow-worker")
    assert hpa["spec"]["minReplicas"] >= 2
    worker = of_kind(manifests, "Deployment")["posflow-worker"]["spec"]["template"]["spec"]
    config = of_kind(manifests, "ConfigMap")["posflow-config"]["data"]
    grace = float(config["POSFLOW_WORKER_SHUTDOWN_GRACE_SECONDS"])
    assert worker["terminationGracePeriodSeconds"] > grace


def test_secret_references_name_keys_of_the_template(manifests: list[dict[str, Any]]) -> None:
    [secret] = of_kind(manifests, "Secret").values()
    keys = set(secret["stringData"])
    for value in secret["stringData"].values():
        assert value == "" or "<" in value, "the Secret template holds placeholders only"
    referenced = set()
    for deployment in of_kind(manifests, "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"]
                    assert ref["key"] in keys, f"{variable['name']}: no key {ref['key']}"
                    referenced.add(ref["key"])
    assert keys <= referenced, f"unused Secret keys: {keys - referenced}"


def test_the_config_map_passes_the_start_up_check(manifests: list[dict[str, Any]]) -> None:
    from workers.codec import KeyRing
    from workers.settings_check import check_environment

    config = of_kind(manifests, "ConfigMap")["posflow-config"]["data"]
    env = {
        **config,
        "POSFLOW_KEYRING": KeyRing.generate().to_json(),
        "POSFLOW_WORKER_SECRET": "x" * 32,
    }
    assert check_environment("worker", env) == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here")
def test_kustomize_renders_the_manifests() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert "Secret" not in kinds  # created from the template with real values, not applied
    assert kinds.count("Deployment") == 7
