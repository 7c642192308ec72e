"""One Temporal environment per test session, chosen with `--workflow-environment`:
`time-skipping` (default: the test server, timers skipped), `local` (a real dev server started
here), or `host:port` (an already running server)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.scenario import Bench
from tests.standins import StandIns
from workers.codec import KEYRING_ENV, KEYRING_FILE_ENV, KeyRing
from workers.temporal import build_worker, data_converter, register_search_attributes

# CI explores the same examples on every run, so a red build is one anyone can reproduce;
# a developer's runs keep exploring new ones (and print the blob that reproduces a failure).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

BIN = Path(sys.executable).parent

# The tests' payload key ring, in the environment so that every client, worker, replayer and
# process the tests start uses it, and no user's key file is read. The key is fixed, not random:
# golden histories recorded by the tests (POSFLOW_RECORD_GOLDEN=1) are encrypted with it and must
# replay in later sessions. It protects nothing but test data.
TEST_KEY_RING = KeyRing(
    current="test-1",
    keys={"test-1": hashlib.sha256(b"posflow test key ring: test-1").digest()},
    source=f"the tests' key ring ({KEYRING_ENV})",
)
os.environ[KEYRING_ENV] = TEST_KEY_RING.to_json()
os.environ.pop(KEYRING_FILE_ENV, None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--workflow-environment",
        default="time-skipping",
        help="time-skipping | local | host:port (default: time-skipping)",
    )


def _binary(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        raise RuntimeError(f"{name} not found: install the project with its dev extras")
    return on_path


@pytest.fixture(scope="session")
def environment_kind(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--workflow-environment"))


@pytest.fixture(scope="session")
async def real_server(environment_kind: str) -> AsyncIterator[WorkflowEnvironment | None]:
    """One real server for the whole session (`local` or `host:port`); None for time-skipping."""
    if environment_kind == "time-skipping":
        yield None
        return
    if environment_kind == "local":
        environment = await WorkflowEnvironment.start_local(
            data_converter=data_converter(),
            dev_server_existing_path=_binary("temporal"),
            dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal"],
        )
    else:
        client = await Client.connect(environment_kind, data_converter=data_converter())
        environment = WorkflowEnvironment.from_client(client)
    await register_search_attributes(environment.client)
    yield environment
    await environment.shutdown()


@pytest.fixture
async def env(real_server: WorkflowEnvironment | None) -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal environment of one test.

    On time-skipping each test gets its own test server (about 0.1 s to start): its clock is
    shared by everything on it, so one test's skipped days must not wake or stall another's runs.
    """
    if real_server is not None:
        yield real_server
        return
    environment = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(), test_server_existing_path=_binary("temporal-test-server")
    )
    await register_search_attributes(environment.client)
    yield environment
    await environment.shutdown()


@pytest.fixture
def unit(env: WorkflowEnvironment) -> timedelta:
    """One "day" of the test policies: a real day where time skips, a second on a real server."""
    return timedelta(days=1) if env.supports_time_skipping else timedelta(seconds=1)


@pytest.fixture
async def bench(env: WorkflowEnvironment, unit: timedelta) -> AsyncIterator[Bench]:
    services = StandIns()
    queue = f"onboarding-test-{uuid.uuid4().hex[:8]}"
    async with build_worker(env.client, queue, services.activities()):
        bench = Bench(env, services, queue, unit)
        yield bench
        await bench.end_runs()
    # Every notice a test's runs sent would have been accepted by the notification service.
    assert services.refused_notices == []


# The real stack, shared by the end-to-end and browser tests (started only when one asks for it).
from tests.stack import stack  # noqa: E402, F401
