"""The environment is checked before a role starts, every problem named with its rule; the worker
is built with its tuning and shutdown grace from the environment."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from workers import main as worker_main
from workers.codec import KeyRing
from workers.main import WorkerTuning
from workers.settings_check import (
    InvalidEnvironment,
    Problem,
    check_environment,
    require_valid_environment,
)

STRONG = "s" * 32


@pytest.fixture
def ring() -> str:
    return KeyRing.generate().to_json()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials or key file of the developer's own stack leaks into a check."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POSFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POSFLOW_CREDENTIALS_FILE", raising=False)


def variables(problems: list[Problem]) -> list[str]:
    return [p.variable for p in problems]


def cluster_worker(ring: str, **extra: str) -> dict[str, str]:
    return {
        "TEMPORAL_ADDRESS": "temporal:7233",
        "TEMPORAL_NAMESPACE": "posflow",
        "POSFLOW_KEYRING": ring,
        "POSFLOW_GATEWAY_URL": "http://gateway:8000",
        "POSFLOW_WORKER_SECRET": STRONG,
        "POSFLOW_REVIEW_URL": "http://review:8101",
        "POSFLOW_MAX_CACHED_WORKFLOWS": "500",
        "POSFLOW_MAX_CONCURRENT_ACTIVITIES": "50",
        "POSFLOW_MAX_CONCURRENT_WORKFLOW_TASKS": "20",
        "POSFLOW_WORKER_SHUTDOWN_GRACE_SECONDS": "45",
        **extra,
    }


def cluster_gateway(ring: str, **extra: str) -> dict[str, str]:
    return {
        "TEMPORAL_ADDRESS": "temporal:7233",
        "POSFLOW_KEYRING": ring,
        "DATABASE_URL": "postgresql+psycopg://posflow:pw@postgres:5432/posflow_gateway",
        "POSFLOW_GATEWAY_HOST": "0.0.0.0",
        "POSFLOW_TOKENS": "viewer:v-token,operator:o-token,admin:a-token",
        **{f"POSFLOW_{s}_SECRET": STRONG for s in ("REVIEW", "CONTRACT", "DEVICE", "LOGISTICS")},
        "POSFLOW_WORKER_SECRET": STRONG,
        **extra,
    }


def test_a_complete_cluster_environment_has_no_problems(ring: str) -> None:
    assert check_environment("worker", cluster_worker(ring)) == []
    assert check_environment("gateway", cluster_gateway(ring)) == []
    service = {
        "DATABASE_URL": "postgresql+psycopg://posflow:pw@postgres/posflow_services",
        "POSFLOW_GATEWAY_URL": "http://gateway:8000",
        "POSFLOW_REVIEW_SECRET": STRONG,
        "POSFLOW_REVIEW_DELAY_MS": "10-50",
        "POSFLOW_REVIEW_FAILURE_RATE": "0.1",
    }
    assert check_environment("service", service, services=["review"]) == []


def test_the_laptop_defaults_pass_with_a_key_ring(ring: str) -> None:
    assert check_environment("worker", {"POSFLOW_KEYRING": ring}) == []
    assert (
        check_environment("gateway", {"POSFLOW_KEYRING": ring, "POSFLOW_OPEN_GATEWAY": "1"}) == []
    )
    assert check_environment("service", {}) == []


@pytest.mark.parametrize(
    "address",
    ["temporal", "http://temporal:7233", "temporal:port", "temporal:0", ":7233", "bad host:7233"],
)
def test_temporal_address_must_be_host_and_port(ring: str, address: str) -> None:
    problems = check_environment("worker", cluster_worker(ring, TEMPORAL_ADDRESS=address))
    assert variables(problems) == ["TEMPORAL_ADDRESS"]
    assert "host:port" in problems[0].rule


def test_ipv6_and_cloud_addresses_are_accepted(ring: str) -> None:
    for address in ("[::1]:7233", "ns.acct.tmprl.cloud:7233", "10.0.0.5:7233"):
        assert check_environment("worker", cluster_worker(ring, TEMPORAL_ADDRESS=address)) == []


def test_tls_certificate_and_key_go_together_and_must_be_readable(
    ring: str, tmp_path: Path
) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("cert")
    problems = check_environment("worker", cluster_worker(ring, TEMPORAL_TLS_CERT=str(cert)))
    assert variables(problems) == ["TEMPORAL_TLS_KEY"]
    assert "both or neither" in problems[0].rule

    missing = str(tmp_path / "absent.key")
    env = cluster_worker(ring, TEMPORAL_TLS_CERT=str(cert), TEMPORAL_TLS_KEY=missing)
    assert variables(check_environment("worker", env)) == ["TEMPORAL_TLS_KEY"]

    key = tmp_path / "client.key"
    key.write_text("key")
    env = cluster_worker(ring, TEMPORAL_TLS_CERT=str(cert), TEMPORAL_TLS_KEY=str(key))
    assert check_environment("worker", env) == []


def test_a_ca_without_tls_is_a_mistake(ring: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    problems = check_environment("worker", cluster_worker(ring, TEMPORAL_TLS_CA=str(ca)))
    assert variables(problems) == ["TEMPORAL_TLS_CA"]
    env = cluster_worker(ring, TEMPORAL_TLS_CA=str(ca), TEMPORAL_API_KEY="cloud-key")
    assert check_environment("worker", env) == []


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("not a url", "SQLAlchemy database URL"),
        ("mysql://u:p@db/posflow", "one of sqlite, postgresql"),
        ("postgresql+asyncpg://u:p@db/posflow", "unknown postgresql driver"),
        ("postgresql+psycopg://u:p@db", "names no database"),
    ],
)
def test_database_url_must_be_a_store_posflow_runs_on(ring: str, url: str, rule: str) -> None:
    problems = check_environment("gateway", cluster_gateway(ring, DATABASE_URL=url))
    assert variables(problems) == ["DATABASE_URL"]
    assert rule in problems[0].rule
    assert "u:p" not in str(problems[0])  # never the password


def test_the_gateway_database_url_wins_and_is_the_one_named(ring: str) -> None:
    env = cluster_gateway(ring, POSFLOW_GATEWAY_DATABASE_URL="oracle://x/y")
    assert variables(check_environment("gateway", env)) == ["POSFLOW_GATEWAY_DATABASE_URL"]


def test_a_driver_that_is_not_installed_is_named(
    ring: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pg8000" else real(name, *a)
    )
    env = cluster_gateway(ring, DATABASE_URL="postgresql+pg8000://u:p@db/posflow")
    [problem] = check_environment("gateway", env)
    assert "'pg8000' is not installed" in problem.rule


@pytest.mark.parametrize(
    "name",
    [
        "POSFLOW_MAX_CACHED_WORKFLOWS",
        "POSFLOW_MAX_CONCURRENT_ACTIVITIES",
        "POSFLOW_MAX_CONCURRENT_WORKFLOW_TASKS",
    ],
)
@pytest.mark.parametrize("value", ["0", "-3", "ten", "1.5"])
def test_worker_tuning_must_be_positive_integers(ring: str, name: str, value: str) -> None:
    problems = check_environment("worker", cluster_worker(ring, **{name: value}))
    assert problems == [Problem(name, "must be a positive integer")]


@pytest.mark.parametrize("value", ["-1", "abc", "3601", "nan"])
def test_shutdown_grace_is_seconds_within_an_hour(ring: str, value: str) -> None:
    env = cluster_worker(ring, POSFLOW_WORKER_SHUTDOWN_GRACE_SECONDS=value)
    assert variables(check_environment("worker", env)) == ["POSFLOW_WORKER_SHUTDOWN_GRACE_SECONDS"]


def test_the_worker_needs_a_key_ring_and_urls(ring: str) -> None:
    env = cluster_worker("{not json", POSFLOW_DEVICE_URL="ftp://device", POSFLOW_LOG_FORMAT="xml")
    assert variables(check_environment("worker", env)) == [
        "POSFLOW_LOG_FORMAT",
        "POSFLOW_KEYRING",
        "POSFLOW_DEVICE_URL",
    ]


def test_signing_secrets_must_be_strong_off_loopback(ring: str) -> None:
    env = cluster_worker(ring)
    del env["POSFLOW_WORKER_SECRET"]
    assert variables(check_environment("worker", env)) == ["POSFLOW_WORKER_SECRET"]
    env["POSFLOW_GATEWAY_URL"] = "http://127.0.0.1:8000"
    assert check_environment("worker", env) == []  # the laptop's gateway accepts the default

    env = cluster_gateway(ring, POSFLOW_DEVICE_SECRET="short")
    assert variables(check_environment("gateway", env)) == ["POSFLOW_DEVICE_SECRET"]


def test_the_gateway_must_say_who_may_call_it(ring: str) -> None:
    env = cluster_gateway(ring)
    del env["POSFLOW_TOKENS"]
    assert variables(check_environment("gateway", env)) == ["POSFLOW_TOKENS"]
    env = cluster_gateway(ring, POSFLOW_TOKENS="root:t")
    assert variables(check_environment("gateway", env)) == ["POSFLOW_TOKENS"]
    env = cluster_gateway(ring, POSFLOW_OPEN_GATEWAY="1")
    assert variables(check_environment("gateway", env)) == ["POSFLOW_OPEN_GATEWAY"]
    env = cluster_gateway(ring, POSFLOW_MERCHANT_KEYS="mars:k")
    assert variables(check_environment("gateway", env)) == ["POSFLOW_MERCHANT_KEYS"]
    env = cluster_gateway(ring, POSFLOW_GATEWAY_UPDATE_WAIT_SECONDS="soon")
    assert variables(check_environment("gateway", env)) == ["POSFLOW_GATEWAY_UPDATE_WAIT_SECONDS"]


def test_service_faults_are_checked(ring: str) -> None:
    env = {"POSFLOW_LOGISTICS_DELAY_MS": "50-10", "POSFLOW_LOGISTICS_FAILURE_RATE": "2"}
    assert variables(check_environment("service", env, services=["logistics"])) == [
        "POSFLOW_LOGISTICS_DELAY_MS",
        "POSFLOW_LOGISTICS_FAILURE_RATE",
    ]


def test_every_problem_is_in_one_message_without_secrets(ring: str) -> None:
    env = cluster_worker(
        ring,
        TEMPORAL_ADDRESS="temporal",
        POSFLOW_MAX_CONCURRENT_ACTIVITIES="0",
        POSFLOW_WORKER_SECRET="leaky",
    )
    with pytest.raises(InvalidEnvironment) as raised:
        require_valid_environment("worker", env)
    message = str(raised.value)
    assert "the worker cannot start: 3 setting(s) to fix" in message
    for name in ("TEMPORAL_ADDRESS", "POSFLOW_MAX_CONCURRENT_ACTIVITIES", "POSFLOW_WORKER_SECRET"):
        assert f"  - {name}: " in message
    assert "leaky" not in message


def test_the_worker_command_exits_listing_every_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "nowhere")
    monkeypatch.setenv("POSFLOW_MAX_CACHED_WORKFLOWS", "0")
    monkeypatch.delenv("POSFLOW_KEYRING", raising=False)
    result = CliRunner().invoke(app, ["worker"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    for name in ("TEMPORAL_ADDRESS", "POSFLOW_MAX_CACHED_WORKFLOWS", "POSFLOW_KEYRING_FILE"):
        assert name in result.output


# --- the worker's tuning and graceful shutdown ----------------------------------------------------


def test_tuning_defaults_leave_the_sdk_defaults_and_a_30_second_grace() -> None:
    tuning = WorkerTuning.from_env({})
    assert tuning.worker_options() == {"graceful_shutdown_timeout": timedelta(seconds=30)}


def test_tuning_comes_from_the_environment() -> None:
    tuning = WorkerTuning.from_env(
        {
            "POSFLOW_MAX_CACHED_WORKFLOWS": "200",
            "POSFLOW_MAX_CONCURRENT_ACTIVITIES": "40",
            "POSFLOW_MAX_CONCURRENT_WORKFLOW_TASKS": "8",
            "POSFLOW_WORKER_SHUTDOWN_GRACE_SECONDS": "12.5",
        }
    )
    assert tuning.worker_options() == {
        "graceful_shutdown_timeout": timedelta(seconds=12.5),
        "max_cached_workflows": 200,
        "max_concurrent_activities": 40,
        "max_concurrent_workflow_tasks": 8,
    }
    with pytest.raises(ValueError, match="POSFLOW_MAX_CONCURRENT_ACTIVITIES"):
        WorkerTuning.from_env({"POSFLOW_MAX_CONCURRENT_ACTIVITIES": "0"})


async def test_the_worker_is_built_with_its_grace_and_shuts_down_on_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run_worker` builds the Temporal worker with the configured tuning, and on `stop` (what
    SIGTERM sets) calls its graceful `shutdown`, which lets running activities finish within
    the grace."""
    import asyncio

    built: dict[str, Any] = {}

    class FakeWorker:
        def __init__(self) -> None:
            self.stopped = asyncio.Event()
            self.shutdowns = 0

        async def run(self) -> None:
            await self.stopped.wait()

        async def shutdown(self) -> None:
            self.shutdowns += 1
            self.stopped.set()

    fake = FakeWorker()

    def fake_build(client: object, task_queue: str, activities: object, **tuning: Any) -> Any:
        built.update(tuning, task_queue=task_queue)
        return fake

    async def fake_connect(settings: object) -> object:
        return object()

    async def no_attributes(client: object) -> list[str]:
        return []

    monkeypatch.setattr(worker_main, "connect", fake_connect)
    monkeypatch.setattr(worker_main, "register_search_attributes", no_attributes)
    monkeypatch.setattr(worker_main, "build_worker", fake_build)
    monkeypatch.setattr(worker_main, "worker_activities", list)
    monkeypatch.setenv("POSFLOW_WORKER_SHUTDOWN_GRACE_SECONDS", "7")
    monkeypatch.setenv("POSFLOW_MAX_CONCURRENT_ACTIVITIES", "3")

    from workers.config import TemporalSettings

    ready, stop = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(
        worker_main.run_worker(TemporalSettings(task_queue="q"), ready=ready, stop=stop)
    )
    await asyncio.wait_for(ready.wait(), 5)
    assert built == {
        "task_queue": "q",
        "graceful_shutdown_timeout": timedelta(seconds=7),
        "max_concurrent_activities": 3,
    }
    stop.set()
    await asyncio.wait_for(running, 5)
    assert fake.shutdowns == 1


def test_the_real_worker_takes_the_options() -> None:
    """The options `WorkerTuning` gives are `temporalio.worker.Worker` keyword arguments."""
    import inspect

    from temporalio.worker import Worker

    options = WorkerTuning(1, 2, 3, 4).worker_options()
    assert set(options) <= set(inspect.signature(Worker).parameters)
