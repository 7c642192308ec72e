"""The gateway fuzzed from its own OpenAPI description (schemathesis), over HTTP, in front of the
real workflow on the time-skipping server with stand-in activities, so that every update and
query really happens.

The description is the one the gateway serves (`GET /openapi.json`, as a viewer). Every operation
gets positive and negative cases (over 1,000 in all, reproducible: `derandomize`), each with the
credential its audience takes: an admin (or a lower) token for operations and admin routes, a
merchant key (or a token) for merchant routes, and for the signed routes a signature over the
exact bytes sent, under the signer's secret (the service a callback router belongs to, the worker
for snapshots), so that the fuzzer gets past the signature to the body's validation and the
workflow's own refusals; some cases of every audience go without a credential. Path ids are
mostly those of applications seeded first at known stages.

Each answer is checked: never a 5xx, only declared status codes, content types, headers and
bodies as described. And a refused request changes nothing: around every case the gateway's store
(applications, stage visits, messages, accepted signatures) and each seeded workflow's status
query are read. A request answered 4xx, or any read, must leave the workflows and the store as
they were, with two exceptions by design: a refused message for an application the store knows
may leave one audit row (`invalid` or `refused`) for that application, and a correctly signed
request spends its signature (one row, so that it cannot be replayed). A refused request for an
application the store does not know leaves nothing; a refused start starts no workflow. Requests
that succeed (a generated cancel that is valid, say) change state legitimately: after one the
state is left to settle and read again before the next case. A documents submission answered
422 `invalid_documents` files the valid documents (README), so it counts as accepted, not refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from requests.structures import CaseInsensitiveDict
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import (
    DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities import catalog
from activities.projection import ProjectionActivities
from gateway.app import SIGNERS, GatewaySettings, create_app
from gateway.store import Store
from schemas.application import workflow_id_for
from schemas.policy import policy_for
from schemas.status import Stage
from services.signing import HEADER, sign
from tests.factories import individual_application
from tests.scenario import Run
from tests.servers import serving
from tests.standins import StandIns
from workers.temporal import build_worker
from workflows.onboarding import PosOnboarding

VIEWER, OPERATOR, ADMIN = "fuzz-viewer", "fuzz-operator", "fuzz-admin"
TOKENS = {VIEWER: "viewer", OPERATOR: "operator", ADMIN: "admin"}
ALL_KEY, BANK_KEY = "fuzz-merchant-all", "fuzz-merchant-bank"
SECRETS = {s: f"{s}-fuzz-secret" for s in SIGNERS}
SEEDS = {  # the applications seeded first, and the stage each waits in
    "FZ-DOCS": Stage.COLLECTING_DOCUMENTS,
    "FZ-REVIEW": Stage.IN_REVIEW,
    "FZ-CONTRACT": Stage.CONTRACT,
    "FZ-DELIVERY": Stage.DELIVERING,
    "FZ-PARKED": Stage.IN_REVIEW,  # parked: opening its review case keeps failing
    "FZ-ENDED": Stage.CANCELLED,
}
# The cases, spread over the operations: a signed one (a body past its signature reaches the
# workflow) weighs more; each operation's share is 60% positive, 40% negative. An operation with
# little to vary (no parameters, no body) runs out of distinct cases sooner.
TARGET_CASES = 1150
SIGNED_WEIGHT = 1.5
POSITIVE_SHARE = 0.6
# Operations whose success changes the seeded applications for good run last: withdrawals and
# every admin action (retry, skip, and whatever else an admin may do).
LAST = ("/cancel", "/api/admin/")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
MINIMUM_CASES = 1000


@dataclass
class Gateway:
    url: str
    store: Store
    env: WorkflowEnvironment
    services: StandIns
    awaiting: set[asyncio.Task[None]]


@pytest.fixture
async def gateway(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Gateway]:
    """As in tests/test_gateway.py: the real app over HTTP, the real workflow, stand-in services,
    and snapshots reaching the store from the real projection activity."""
    configured = GatewaySettings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        task_queue=f"fuzz-{uuid.uuid4().hex[:8]}",
        secrets=dict(SECRETS),
        tokens=dict(TOKENS),
        merchant_keys={ALL_KEY: "all", BANK_KEY: "bank"},
    )
    app = create_app(env.client, configured)
    async with serving(app) as url:
        projection = ProjectionActivities(base_url=url, secret=SECRETS["worker"])
        services = StandIns()
        activities = [*services.activities(projection=False), projection.project_status]
        async with build_worker(env.client, configured.task_queue, activities):
            yield Gateway(url, app.state.store, env, services, app.state.forwarder.awaiting)
        await projection.aclose()


async def seed(gateway: Gateway) -> None:
    """Start each seed through the gateway and move it to its stage."""
    policy = {"activity_max_attempts": 1, "activity_retry_interval": "PT0.05S"}
    async with httpx.AsyncClient(
        base_url=gateway.url, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as http:
        runs: dict[str, Run] = {}
        for app_id in SEEDS:
            body = individual_application(application_id=app_id).model_dump(mode="json")
            started = await http.post("/api/applications", json={**body, "policy": policy})
            assert started.status_code == 201, started.text
            handle = gateway.env.client.get_workflow_handle_for(
                PosOnboarding.run, workflow_id_for(app_id)
            )
            application = individual_application(application_id=app_id)
            runs[app_id] = Run(
                gateway.env, handle, application, policy_for(application.channel, policy)
            )
        for app_id, stage in SEEDS.items():
            if app_id in ("FZ-PARKED", "FZ-ENDED"):
                continue
            await runs[app_id].to(stage)
        # Opening a review case fails for good from here on: the last seed parks on it.
        gateway.services.fail(catalog.OPEN_REVIEW_CASE)
        await runs["FZ-PARKED"].submit()
        await runs["FZ-PARKED"].until(lambda s: s.attention is not None, "parked")
        await runs["FZ-ENDED"].cancel()
        await runs["FZ-ENDED"].at(Stage.CANCELLED)


# --- the state around each case ---------------------------------------------------------------


@dataclass(frozen=True)
class State:
    workflows: dict[str, Any]  # seed -> its status query (or how it closed)
    applications: dict[str, dict[str, Any]]
    visits: list[tuple[Any, ...]]
    messages: dict[int, dict[str, Any]]
    signatures: frozenset[str]


class Watcher:
    """Reads the state from the fuzzing thread; Temporal calls run on the test's loop."""

    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway, self.loop = gateway, loop
        self.closed: dict[str, Any] = {}  # a closed workflow never changes again

    def run(self, work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=60)

    async def _workflow(self, app_id: str) -> Any:
        if app_id in self.closed:
            return self.closed[app_id]
        info = (await self.describe(app_id)).workflow_execution_info
        if info.HasField("close_time"):
            self.closed[app_id] = {"closed": info.status}
            return self.closed[app_id]
        handle = self.gateway.env.client.get_workflow_handle(workflow_id_for(app_id))
        status = await handle.query(PosOnboarding.status)
        return status.model_dump(mode="json")

    async def _workflows(self) -> dict[str, Any]:
        found = await asyncio.gather(*(self._workflow(a) for a in SEEDS))
        return dict(zip(SEEDS, found, strict=True))

    async def describe(self, application_id: str) -> DescribeWorkflowExecutionResponse:
        client = self.gateway.env.client
        return await client.workflow_service.describe_workflow_execution(
            DescribeWorkflowExecutionRequest(
                namespace=client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id_for(application_id)),
            )
        )

    def exists(self, application_id: str) -> bool:
        async def describe() -> bool:
            try:
                await self.describe(application_id)
            except RPCError as err:
                if err.status is RPCStatusCode.NOT_FOUND:
                    return False
                raise
            return True

        return bool(self.run(describe()))

    def state(self) -> State:
        workflows = self.run(self._workflows())
        # Plain rows, every column (read through the ORM, this took longer than the request).
        with self.gateway.store.engine.connect() as db:

            def rows(table: str) -> list[dict[str, Any]]:
                return [dict(r) for r in db.exec_driver_sql(f"SELECT * FROM {table}").mappings()]

            applications = {r["application_id"]: r for r in rows("gateway_applications")}
            visits = sorted(tuple(r.values()) for r in rows("gateway_stage_visits"))
            messages = {int(r["id"]): r for r in rows("gateway_messages")}
            signatures = frozenset(r["signature"] for r in rows("gateway_signatures"))
        return State(workflows, applications, visits, messages, signatures)

    def settled(self) -> State:
        """The state once nothing moves: no message waiting for its result, and three reads in a
        row alike (a success sets activities, snapshots and compensations going)."""
        deadline = time.monotonic() + 10
        last, alike = self.state(), 0
        while alike < 2 and time.monotonic() < deadline:
            time.sleep(0.03)
            current = self.state()
            alike = alike + 1 if current == last and not self.gateway.awaiting else 0
            last = current
        return last


def differences(before: State, after: State, case: Any, signed: bool) -> list[str]:
    """What a refused request changed beyond what it may (see the module's docstring)."""
    problems = []
    for app_id in SEEDS:
        if before.workflows[app_id] != after.workflows[app_id]:
            problems.append(f"workflow {app_id}'s status changed")
    if before.applications != after.applications:
        changed = sorted(
            a
            for a in before.applications.keys() | after.applications.keys()
            if before.applications.get(a) != after.applications.get(a)
        )
        problems.append(f"application rows changed: {changed}")
    if before.visits != after.visits:
        problems.append("stage visits changed")
    for row, message in before.messages.items():
        # A message kept as pending gets its outcome when the workflow applies it: not a change.
        if after.messages.get(row) != message and message["outcome"] != "pending":
            problems.append(f"message row {row} changed")
    added = [m for row, m in after.messages.items() if row not in before.messages]
    target = (case.path_parameters or {}).get("application_id")
    if target not in before.applications:
        if added:
            problems.append(f"{len(added)} message rows for an unknown application")
    elif len(added) > 1:
        problems.append(f"{len(added)} message rows for one refused request")
    elif added and (
        added[0]["application_id"] != target or added[0]["outcome"] not in ("invalid", "refused")
    ):
        problems.append(f"audit row {added[0]['application_id']}/{added[0]['outcome']}")
    spent = after.signatures - before.signatures
    if len(spent) > (1 if signed else 0) or before.signatures - after.signatures:
        problems.append(f"{len(spent)} signatures recorded")
    return problems


# --- the cases --------------------------------------------------------------------------------


def signer_of(operation: Any) -> str | None:
    """The signer of a signed operation, from its tags (`callbacks: review`, `internal`)."""
    if HEADER not in operation.headers:
        return None
    tags = operation.tags or []
    for tag in tags:
        if tag.startswith("callbacks: "):
            return str(tag.removeprefix("callbacks: "))
        if tag == "internal":
            return "worker"
    raise AssertionError(f"{operation.label}: signed, but by whom? tags {tags}")


def credentials_for(operation: Any) -> list[str]:
    """What each case of `operation` is sent with, mostly what its audience takes."""
    if signer_of(operation) is not None:
        return ["signed"] * 4 + ["unsigned"]
    schemes = {name for entry in operation.definition.raw.get("security", []) for name in entry}
    if "APIKeyHeader" in schemes:
        return ["merchant"] * 3 + ["merchant-bank", "admin", "none"]
    if schemes:
        return ["admin"] * 4 + ["viewer", "operator", "none"]
    return ["none"]


PRIVATE_HEADERS = ("authorization", "x-api-key", "cookie")
CREDENTIALS: dict[str, dict[str, str]] = {
    "admin": {"Authorization": f"Bearer {ADMIN}"},
    "operator": {"Authorization": f"Bearer {OPERATOR}"},
    "viewer": {"Authorization": f"Bearer {VIEWER}"},
    "merchant": {"X-Api-Key": ALL_KEY},
    "merchant-bank": {"X-Api-Key": BANK_KEY},
}


@dataclass
class Tally:
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    refused_checked: int = 0
    lone: int = 0  # cases sent with a lone surrogate in their body
    server_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    state_changes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.cases.values())


def with_lone_surrogate(body: Any) -> Any:
    """`body` with a lone surrogate at the end of its first string (a new field if it has none).
    JSON carries one as an escape (`"\\udc00"`) and Python's parser takes it, but it has no
    UTF-8 form: schemathesis never generates one, so the fuzzer adds it to some cases."""
    done = False

    def walk(value: Any) -> Any:
        nonlocal done
        if isinstance(value, str) and not done:
            done = True
            return value + "\udc00"
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    changed = walk(body)
    if not done and isinstance(changed, dict):
        changed["note"] = "\udc00"
    return changed


def send(
    case: Any, url: str, http: requests.Session, credential: str, signer: str | None, lone: bool
) -> tuple[Any, bool]:
    """Send `case` as `credential`: a signed one over the exact bytes sent; with `lone`, a JSON
    body gets a lone surrogate in the bytes sent (the case itself is left as generated: schemathesis
    cannot validate such a string). Returns the response and whether the surrogate went out.

    The headers are replaced, not edited in place, so that schemathesis revalidates them: a case
    generated as negative only in a credential it no longer carries is then taken as positive."""
    headers = CaseInsensitiveDict(
        {k: v for k, v in case.headers.items() if k.lower() not in PRIVATE_HEADERS}
    )
    headers.update(CREDENTIALS.get(credential, {}))
    raw: bytes | None = None
    if credential == "signed" or lone:
        # The bytes schemathesis would send (JSON as `requests` encodes it, or raw bytes).
        prepared = case.as_transport_kwargs(base_url=url)
        if "json" in prepared:
            body = prepared["json"]
            lone = lone and isinstance(body, dict | list)
            raw = json.dumps(with_lone_surrogate(body) if lone else body, allow_nan=False).encode()
        else:
            lone = False
            data = prepared.get("data") or b""
            raw = data if isinstance(data, bytes) else str(data).encode()
    if credential == "signed":
        assert signer is not None and raw is not None
        headers[HEADER] = sign(raw, SECRETS[signer], int(time.time()))
    case.headers = headers
    if raw is None:
        return case.call(base_url=url, session=http), False
    return case.call(base_url=url, session=http, data=raw), lone


class Fuzzer:
    """Runs every operation's cases in turn (in a thread of its own: requests are synchronous)."""

    def __init__(self, schema: Any, url: str, watcher: Watcher) -> None:
        self.schema, self.url, self.watcher = schema, url, watcher
        self.tally = Tally()
        self.http = requests.Session()
        self.baseline: State | None = None

    def run(self) -> Tally:
        operations = sorted(
            (result.ok() for result in self.schema.get_all_operations()),
            key=lambda op: (any(part in op.path for part in LAST), op.path, op.method),
        )
        weights = [SIGNED_WEIGHT if signer_of(op) else 1.0 for op in operations]
        self.baseline = self.watcher.settled()
        try:
            for operation, weight in zip(operations, weights, strict=True):
                share = TARGET_CASES * weight / sum(weights)
                positive = round(share * POSITIVE_SHARE)
                budget = {
                    GenerationMode.POSITIVE: positive,
                    GenerationMode.NEGATIVE: round(share) - positive,
                }
                for mode, examples in budget.items():
                    with contextlib.suppress(Unsatisfiable):  # nothing negative to make
                        self.operation(operation, mode, examples)
        finally:
            self.http.close()
        return self.tally

    def operation(self, operation: Any, mode: GenerationMode, examples: int) -> None:
        takes_id = "{application_id}" in operation.path
        strategy = st.tuples(
            operation.as_strategy(generation_mode=mode),
            st.sampled_from([None, None, *SEEDS] if takes_id else [None]),
            st.sampled_from(credentials_for(operation)),
            st.sampled_from([None, *SEEDS]),
            st.sampled_from([False] * 4 + [True]),
        )

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def cases(drawn: tuple[Any, str | None, str, str | None, bool]) -> None:
            case, target, credential, reused, lone = drawn
            if target is not None:
                case.path_parameters = {**case.path_parameters, "application_id": target}
            starts = operation.path == "/api/applications" and operation.method.upper() == "POST"
            if reused is not None and starts and isinstance(case.body, dict):
                case.body = {**case.body, "application_id": reused}  # a seed's id, another body
            self.case(operation, mode, case, credential, starts, lone)

        cases()

    def case(
        self,
        operation: Any,
        mode: GenerationMode,
        case: Any,
        credential: str,
        starts: bool,
        lone: bool,
    ) -> None:
        tally, watcher = self.tally, self.watcher
        label = f"{operation.method.upper()} {operation.path}"
        tally.cases[label] += 1
        signer = signer_of(operation)
        response, lone = send(case, self.url, self.http, credential, signer, lone)
        status = response.status_code
        tally.statuses[status] += 1
        tally.lone += lone
        where = f"{label} [{mode.value}, {credential}{', lone surrogate' if lone else ''}]"
        where += f" -> {status}"
        # What was sent is not the case's body when a surrogate was added: the check of
        # negative data then has nothing to go by, and any 2xx is wrong.
        checks = [c for c in CHECKS if not (lone and c is negative_data_rejection)]
        try:
            case.validate_response(response, checks=checks, transport_kwargs={"base_url": self.url})
            if lone and status < 300:
                tally.failures.append(f"{where}: a body with a lone surrogate was taken")
        except FailureGroup as group:
            titles = sorted({f.title for f in group.exceptions})
            found = f"{where}: {', '.join(titles)}\n    {case.as_curl_command()}"
            found += f"\n    {response.text[:300]}"
            (tally.server_errors if status >= 500 else tally.failures).append(found)
        accepted_documents = (
            status == 422
            and operation.path.endswith("/documents")
            and "invalid_documents" in response.text
        )
        refused = 400 <= status < 500 and not accepted_documents
        read = operation.method.upper() == "GET" and status < 500
        if not (refused or read):
            self.baseline = watcher.settled()
            return
        assert self.baseline is not None
        after = watcher.state()
        problems = differences(
            self.baseline, after, case, signed=credential == "signed" and not read
        )
        started = (
            case.body.get("application_id") if starts and isinstance(case.body, dict) else None
        )
        if (
            isinstance(started, str)
            and started
            and started not in SEEDS
            and watcher.exists(started)
        ):
            problems.append(f"a workflow was started for {started}")
        tally.refused_checked += 1
        if problems:
            tally.state_changes.append(f"{where}: {'; '.join(problems)}")
            self.baseline = watcher.settled()
        else:
            self.baseline = after


async def test_the_gateway_fuzzed_from_its_openapi_description(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    await seed(gateway)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        served = await http.get("/openapi.json", headers={"Authorization": f"Bearer {VIEWER}"})
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(served.json())
    watcher = Watcher(gateway, asyncio.get_running_loop())
    seeded = time.monotonic()
    tally = await asyncio.to_thread(Fuzzer(schema, gateway.url, watcher).run)
    ended = time.monotonic()

    with capsys.disabled():
        print(f"\nschemathesis {schemathesis.__version__}: cases per operation")
        for label, count in sorted(tally.cases.items()):
            print(f"  {count:4d}  {label}")
        print(f"  {tally.total:4d}  in all ({tally.lone} with a lone surrogate in the body)")
        print(f"  answers: {dict(sorted(tally.statuses.items()))}")
        print(
            f"  5xx: {len(tally.server_errors)}; other check failures: {len(tally.failures)}; "
            f"refused or read cases compared before and after: {tally.refused_checked}, "
            f"state changes: {len(tally.state_changes)}"
        )
        print(f"  seeding {seeded - began:.1f} s, fuzzing {ended - seeded:.1f} s")
        for line in [*tally.server_errors, *tally.failures, *tally.state_changes][:40]:
            print("  ! " + line)
    assert tally.total >= MINIMUM_CASES
    assert not tally.server_errors, tally.server_errors
    assert not tally.failures, tally.failures
    assert not tally.state_changes, tally.state_changes
