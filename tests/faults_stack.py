"""A real posflow stack to break on purpose (tests/test_faults.py): a Temporal dev server on a data
file, the worker as its own OS process (so it can be SIGKILLed), the four sandbox services acting
on their own (as under `posflow up`) and the gateway, each scenario in its own home and ports.

Afterwards the services' own SQLite files are read back, read-only, and every application is
audited: one review case and one decision per round, one contract and one deposit payment, one
reservation with exactly the terminals ordered, one MID, one shipment or installation per
delivery attempt, and no callback that the gateway refused while the workflow needed it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType

from cli.samples import sample
from gateway.app import SIGNERS, GatewaySettings, create_app
from schemas.application import Application, Channel
from schemas.documents import Document, DocumentKind
from schemas.policy import policy_for
from schemas.status import Outcome
from services.base import Service, ServiceConfig
from services.review import (
    DEFAULT_HIGH_RISK_CATEGORIES,
    DEFAULT_PROHIBITED_CATEGORIES,
    stable_bucket,
)
from services.stack import Served, serve, stop_all
from tests.servers import free_port
from workers.config import TemporalSettings, role_environment
from workers.dev_server import DevServer
from workers.temporal import connect

REPO = Path(__file__).resolve().parents[1]
POSFLOW = Path(sys.executable).parent / "posflow"
SERVICES = ("review", "contract", "device", "logistics")
FINISHED = ("live", "rejected", "expired", "cancelled")
ARTIFACT = REPO / "artifacts" / "faults.json"

# The month in about a minute: the auto services act within a second, so these deadlines are
# only reached when something was lost (then the workflow pulls what the service recorded).
# A step retries for about 30 s; an activity lost with a killed worker is timed out after 5 s.
FAULT_POLICY: dict[str, Any] = {
    "review_sla": "PT40S",
    "review_deadline": "PT60S",
    "site_survey_deadline": "PT60S",
    "contract_deadline": "PT60S",
    "contract_reminders": ["PT20S"],
    "mail_delivery_deadline": "PT60S",
    "installation_deadline": "PT60S",
    "activation_deadline": "PT60S",
    "activation_reminders": ["PT20S"],
    "training_deadline": "PT60S",
    "training_reminders": ["PT20S"],
    "activity_timeout": "PT5S",
    "activity_retry_interval": "PT0.2S",
    "activity_retry_max_interval": "PT1S",
    "activity_max_attempts": 30,
}
AUTO_DELAY_MS = "300"


# --- the applications and what becomes of them without faults -------------------------------


@dataclass
class Planned:
    """One application of a scenario and the outcome the sandbox's rules give it."""

    app: Application
    documents: list[Document]
    policy: dict[str, Any]

    @property
    def id(self) -> str:
        return self.app.application_id

    @property
    def category(self) -> str:
        return self.app.merchant.business_category

    @property
    def expected(self) -> str:
        return "rejected" if self.category in DEFAULT_PROHIBITED_CATEGORIES else "live"

    @property
    def rounds(self) -> int:
        """Review rounds: the auto-reviewer asks once for new premises photos in bucket 0."""
        if self.expected == "rejected" or stable_bucket(self.id) != 0:
            return 1
        return 2

    @property
    def survey(self) -> bool:
        return self.category in DEFAULT_HIGH_RISK_CATEGORIES

    @property
    def deposit(self) -> bool:
        return policy_for(self.app.channel, self.policy).deposit_due

    @property
    def quantity(self) -> int:
        return self.app.device_order.quantity

    @property
    def on_site(self) -> bool:
        return self.app.fulfilment.value == "on_site"

    def describe(self) -> dict[str, Any]:
        return {
            "application_id": self.id,
            "channel": self.app.channel.value,
            "merchant_type": self.app.merchant.merchant_type.value,
            "fulfilment": self.app.fulfilment.value,
            "terminals": self.quantity,
            "category": self.category,
            "review_rounds": self.rounds,
            "site_survey": self.survey,
            "deposit": self.deposit,
            "expected": self.expected,
        }


def plan(
    prefix: str,
    n: int,
    *,
    channel: str,
    fulfilment: str,
    quantity: int,
    category: str = "retail",
    more_info: bool = False,
    seed: int | None = None,
    policy: dict[str, Any] | None = None,
) -> Planned:
    """A generated merchant (valid checksums) shaped as asked; `more_info` picks an id the
    auto-reviewer sends back for new premises photos in round 1."""
    generated = sample(
        seed if seed is not None else 7000 + n, category=category, channel=Channel(channel)
    )
    while True:
        app_id = f"{prefix}-{n:02d}-{uuid.uuid4().hex[:6].upper()}"
        if (stable_bucket(app_id) == 0) == more_info:
            break
    data = generated.application.model_dump(mode="json")
    data.update(
        application_id=app_id,
        channel=channel,
        fulfilment=fulfilment,
        device_order={**data["device_order"], "quantity": quantity},
    )
    return Planned(Application.model_validate(data), generated.documents, policy or FAULT_POLICY)


# --- the stack -------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    log: Path
    started: float  # monotonic, once it polls


@dataclass
class FaultStack:
    home: Path
    name: str
    ports: dict[str, int] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    queue: str = ""
    server: DevServer | None = None
    services: dict[str, Service] = field(default_factory=dict)
    served: dict[str, Served] = field(default_factory=dict)
    gateway: httpx.AsyncClient | None = None
    client: Any = None  # temporalio.client.Client
    worker: WorkerProcess | None = None
    workers_started: int = 0
    server_port: int = 0

    # --- bringing it up and down -------------------------------------------------------------

    async def start(self) -> None:
        self.ports = {name: free_port() for name in (*SERVICES, "gateway")}
        self.secrets = {s: f"{s}-{uuid.uuid4().hex[:12]}" for s in SIGNERS}
        self.queue = f"faults-{self.name}"
        self.server_port = free_port()
        self.server = self._dev_server()
        await self.server.start()
        await self.start_worker()  # registers the search attributes before anything starts
        for name in SERVICES:
            self.services[name] = self._build(name)
            await self.start_service(name)
        self.client = await connect(TemporalSettings(address=self.server.address))
        app = create_app(
            self.client,
            GatewaySettings(
                database_url=f"sqlite:///{self.home / 'gateway.db'}",
                task_queue=self.queue,
                secrets=dict(self.secrets),
            ),
        )
        self.served["gateway"] = await serve("gateway", app, self.ports["gateway"])
        self.gateway = httpx.AsyncClient(base_url=self.url("gateway"), timeout=60)

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.aclose()
        await stop_all(list(self.served.values()))
        if self.worker is not None and self.worker.process.returncode is None:
            self.worker.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.worker.process.wait(), 15)
            except TimeoutError:
                self.worker.process.kill()
                await self.worker.process.wait()
        if self.server is not None:
            await self.server.stop()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def _dev_server(self) -> DevServer:
        return DevServer(
            port=self.server_port,
            ui_port=free_port(),
            headless=True,
            db_file=self.home / "temporal.db",
        )

    def _build(self, name: str) -> Service:
        options = {
            "review": {"auto_review": "true", "auto_review_delay_ms": AUTO_DELAY_MS},
            "contract": {"auto_sign": "true", "auto_sign_delay_ms": AUTO_DELAY_MS},
            "logistics": {"auto_progress": "true", "auto_delay_ms": AUTO_DELAY_MS},
            "device": {
                "auto_activate": "true",
                "auto_delay_ms": AUTO_DELAY_MS,
                "stock_per_model": "40",
                "logistics_url": self.url("logistics"),
            },
        }[name]
        module = __import__(f"services.{name}", fromlist=["build"])
        service: Service = module.build(
            ServiceConfig(
                name=name,
                database_url=f"sqlite:///{self.home / (name + '.db')}",
                gateway_url=self.url("gateway"),
                callback_secret=self.secrets[name],
                options=options,
            )
        )
        return service

    async def start_service(self, name: str) -> None:
        self.served[name] = await serve(name, self.services[name].app, self.ports[name])

    async def stop_service(self, name: str) -> None:
        await stop_all([self.served.pop(name)])

    # --- the worker, its own process ---------------------------------------------------------

    def worker_env(self) -> dict[str, str]:
        assert self.server is not None
        # Nothing of the outer environment's posflow or Temporal settings, but its payload key
        # ring: the worker must read what the tests' clients write.
        env = role_environment()
        env.update(
            {
                "TEMPORAL_ADDRESS": self.server.address,
                "POSFLOW_TASK_QUEUE": self.queue,
                "POSFLOW_HOME": str(self.home),
                "POSFLOW_GATEWAY_URL": self.url("gateway"),
                "POSFLOW_WORKER_SECRET": self.secrets["worker"],
                "POSFLOW_WORKER_METRICS": f"127.0.0.1:{free_port()}",
                "POSFLOW_LOG_FORMAT": "json",
            }
        )
        for name in SERVICES:
            env[f"POSFLOW_{name.upper()}_URL"] = self.url(name)
        return env

    async def start_worker(self, patience: float = 60) -> WorkerProcess:
        """`posflow worker` as its own process; returns once it polls the task queue."""
        log = self.home / f"worker-{self.workers_started:03d}.log"
        self.workers_started += 1
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                str(POSFLOW),
                "worker",
                env=self.worker_env(),
                cwd=str(REPO),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
        deadline = time.monotonic() + patience
        while b'"worker_started"' not in log.read_bytes():
            if process.returncode is not None or time.monotonic() > deadline:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"the worker did not start ({process.returncode}):\n{tail}")
            await asyncio.sleep(0.05)
        self.worker = WorkerProcess(process, log, time.monotonic())
        return self.worker

    async def kill_worker(self) -> None:
        """SIGKILL: no graceful shutdown, no last word to the server."""
        assert self.worker is not None
        process = self.worker.process
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()

    def worker_alive(self) -> bool:
        return self.worker is not None and self.worker.process.returncode is None

    # --- the dev server ----------------------------------------------------------------------

    async def restart_server(self, down: float, *, crash: bool = False) -> float:
        """Stop the dev server (SIGTERM, or SIGKILL when `crash`), wait `down` seconds, start a
        new one on the same data file and port; returns how long Temporal was unavailable."""
        assert self.server is not None
        began = time.monotonic()
        if crash and self.server.pid is not None:
            os.kill(self.server.pid, signal.SIGKILL)
        await self.server.stop()
        await asyncio.sleep(down)
        self.server = self._dev_server()
        await self.server.start()
        return time.monotonic() - began

    # --- the gateway API ---------------------------------------------------------------------

    @property
    def http(self) -> httpx.AsyncClient:
        assert self.gateway is not None
        return self.gateway

    async def _post(
        self, path: str, body: dict[str, Any], ok: Callable[[httpx.Response], bool], patience: float
    ) -> httpx.Response:
        """POST until the gateway takes it: a 503 (Temporal or the worker not there, documents
        still validating) or no answer is sent again, as a merchant's client would."""
        deadline = time.monotonic() + patience
        while True:
            try:
                response = await self.http.post(path, json=body)
                if ok(response):
                    return response
                if response.status_code < 500:
                    raise AssertionError(f"POST {path}: {response.status_code} {response.text}")
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as err:
                last = f"{type(err).__name__}: {err}"
            if time.monotonic() > deadline:
                raise AssertionError(f"POST {path} never taken: {last}")
            await asyncio.sleep(1.0)

    async def start_application(self, case: Planned) -> None:
        body = {**case.app.model_dump(mode="json"), "policy": case.policy}
        await self._post(
            "/api/applications", body, lambda r: r.status_code in (200, 201), patience=120
        )

    async def file_documents(
        self, case: Planned, submission_id: str, documents: list[Document]
    ) -> None:
        body = {
            "submission_id": submission_id,
            "documents": [d.model_dump(mode="json") for d in documents],
        }
        response = await self._post(
            f"/api/applications/{case.id}/documents",
            body,
            lambda r: r.status_code == 200,
            patience=180,
        )
        assert response.json()["issues"] == [], response.text

    async def merchant(self, case: Planned) -> None:
        """The merchant: applies, files the documents, and supplies new premises photos when the
        reviewer asks for them."""
        await self.start_application(case)
        await self.file_documents(case, f"{case.id}-docs", case.documents)
        if case.rounds > 1:
            await self.until(
                lambda rows: (
                    rows.get(case.id, {}).get("stage") == "collecting_documents"
                    and rows[case.id].get("review_round") == 2
                ),
                patience=240,
                what=f"{case.id} asked for more documents",
            )
            photos = [d for d in case.documents if d.kind is DocumentKind.PREMISES_PHOTOS]
            await self.file_documents(case, f"{case.id}-round-2", photos)

    async def rows(self) -> dict[str, dict[str, Any]]:
        """The gateway's list (its own store, fed by the workflows' snapshots)."""
        response = await self.http.get("/api/applications", params={"limit": 500})
        assert response.status_code == 200, response.text
        return {row["application_id"]: row for row in response.json()}

    async def stages(self) -> dict[str, str]:
        return {app_id: row["stage"] for app_id, row in (await self.rows()).items()}

    async def until(
        self,
        condition: Callable[[dict[str, dict[str, Any]]], bool],
        *,
        patience: float,
        what: str,
        poll: float = 0.5,
    ) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + patience
        while True:
            try:
                rows = await self.rows()
                if condition(rows):
                    return rows
            except httpx.HTTPError:
                rows = {}
            if time.monotonic() > deadline:
                stages = {k: (v["stage"], v["needs_attention"]) for k, v in rows.items()}
                raise AssertionError(f"timed out waiting until {what}: {stages}")
            await asyncio.sleep(poll)

    async def all_finished(self, cases: list[Planned], patience: float) -> dict[str, Any]:
        ids = {c.id for c in cases}
        return await self.until(
            lambda rows: all(rows.get(i, {}).get("stage") in FINISHED for i in ids),
            patience=patience,
            what="every application finished",
        )

    async def status(self, app_id: str) -> dict[str, Any]:
        for _ in range(60):
            response = await self.http.get(f"/api/applications/{app_id}")
            if response.status_code == 200:
                return dict(response.json())
            await asyncio.sleep(1)
        raise AssertionError(f"no status for {app_id}: {response.status_code} {response.text}")

    async def outcome(self, case: Planned) -> Outcome:
        handle = self.client.get_workflow_handle(case.app.workflow_id, result_type=Outcome)
        result: Outcome = await asyncio.wait_for(handle.result(), 120)
        return result

    async def messages(self, app_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/api/applications/{app_id}/messages")
        assert response.status_code == 200, response.text
        return list(response.json())

    async def admin_retry(self, app_id: str, request_id: str) -> httpx.Response:
        body = {"request_id": request_id, "admin": "fault-test", "note": "service is back"}
        return await self.http.post(f"/api/admin/applications/{app_id}/retry", json=body)

    async def outboxes_drained(self, cases: list[Planned], patience: float = 90) -> None:
        """Every callback for these applications delivered or refused for good (an outbox may
        be backing off for up to 30 s after the worker was away)."""
        deadline = time.monotonic() + patience
        while True:
            left = [row for c in cases for row in self.outbox(c.id) if row["delivered_at"] is None]
            if not left or time.monotonic() > deadline:
                return
            await asyncio.sleep(1)

    async def keep_histories(self, cases: list[Planned], findings: list[str]) -> list[str]:
        """The workflow history of every application a finding names, as JSON in the stack's
        home (for `temporal workflow show`-like reading); returns the files written."""
        written = []
        for case in cases:
            if any(f.startswith(f"{case.id} ") for f in findings):
                handle = self.client.get_workflow_handle(case.app.workflow_id)
                history = await handle.fetch_history()
                path = self.home / f"history-{case.id}.json"
                path.write_text(history.to_json())
                written.append(str(path))
        return written

    # --- reading the services' own records ---------------------------------------------------

    @contextmanager
    def db(self, name: str) -> Iterator[sqlite3.Connection]:
        path = self.home / f"{name}.db"
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            conn.row_factory = sqlite3.Row
            yield conn

    def query(self, name: str, sql: str, *params: Any) -> list[dict[str, Any]]:
        with self.db(name) as conn:
            return [dict(r) for r in conn.execute(sql, params).fetchall()]

    def outbox(self, app_id: str) -> list[dict[str, Any]]:
        rows = []
        prefix = f"/api/applications/{app_id}/"
        for name in SERVICES:
            for row in self.query(
                name,
                "SELECT * FROM service_callbacks WHERE substr(path, 1, ?) = ? ORDER BY id",
                len(prefix),
                prefix,
            ):
                rows.append({**row, "service": name, "kind": row["path"][len(prefix) :]})
        return rows


# --- the audit -------------------------------------------------------------------------------

FINAL_REFUSAL = ("400 ", "404 ", "409 ", "422 ")
GOT = ("applied", "duplicate")


@dataclass
class Audit:
    """What the services' databases, the outboxes and the gateway hold, checked per application;
    `findings` lists every loss or duplicate, each with the records that show it."""

    findings: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    mids: dict[str, str] = field(default_factory=dict)
    tids: dict[str, list[str]] = field(default_factory=dict)

    def expect(self, what: str, found: Any, wanted: Any, detail: Any = None) -> None:
        self.counts["checks"] += 1
        if found != wanted:
            extra = f" [{detail}]" if detail is not None else ""
            self.findings.append(f"{what}: found {found!r}, expected {wanted!r}{extra}")


def _message_id(body: str) -> str:
    data = json.loads(body)
    return str(data.get("decision_id") or data.get("event_id") or "")


async def audit(stack: FaultStack, cases: list[Planned]) -> Audit:
    """Check every application against the services' own records (see the module doc)."""
    result = Audit()
    await stack.outboxes_drained(cases)
    for case in cases:
        outcome = await stack.outcome(case)
        await _audit_history(stack, case, result)
        status = await stack.status(case.id)
        messages = await stack.messages(case.id)
        result.expect(f"{case.id} outcome", outcome.stage.value, case.expected, outcome.reason)
        _audit_services(stack, case, status, result)
        _audit_messages(stack, case, status, messages, result)
        if case.expected == "live":
            result.mids[case.id] = outcome.mid or ""
            result.tids[case.id] = sorted(outcome.tids)
    mids = [m for m in result.mids.values() if m]
    result.expect("MIDs unique across applications", len(set(mids)), len(mids), mids)
    tids = [t for ts in result.tids.values() for t in ts]
    result.expect("TIDs unique across applications", len(set(tids)), len(tids), tids)
    return result


async def _audit_history(stack: FaultStack, case: Planned, result: Audit) -> None:
    """One workflow run per application, and what the faults cost it: workflow tasks timed out
    (a worker killed while it held one) and activity attempts run again (lost with a killed
    worker, or failed on a service or a server that was away)."""
    workflow_id = case.app.workflow_id
    runs = await stack.client.count_workflows(f"WorkflowId = '{workflow_id}'")
    result.expect(f"{case.id} workflow runs", runs.count, 1)
    history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            result.counts["workflow_tasks_timed_out"] += 1
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            if started.attempt > 1:
                timed_out = started.last_failure.HasField("timeout_failure_info")
                result.counts[
                    "activities_rerun_after_timeout"
                    if timed_out
                    else "activities_rerun_after_error"
                ] += 1


def _audit_services(
    stack: FaultStack, case: Planned, status: dict[str, Any], result: Audit
) -> None:
    app_id, live = case.id, case.expected == "live"
    q = stack.query
    # review: one case, one decision per round, one survey if high-risk
    cases = q("review", "SELECT * FROM review_cases WHERE application_id = ?", app_id)
    result.expect(f"{app_id} review cases", len(cases), 1, cases)
    case_id = cases[0]["case_id"] if cases else ""
    if cases and not live:
        result.expect(f"{app_id} review case closed", cases[0]["status"], "closed")
    decisions = q(
        "review", "SELECT round, outcome FROM review_decisions WHERE case_id = ?", case_id
    )
    result.expect(
        f"{app_id} review decisions per round",
        sorted(d["round"] for d in decisions),
        list(range(1, case.rounds + 1)),
        decisions,
    )
    surveys = q("review", "SELECT status FROM review_surveys WHERE case_id = ?", case_id)
    result.expect(f"{app_id} site surveys", len(surveys), int(case.survey), surveys)
    # contract: one agreement, one payment when a deposit is due, no refund when live
    contracts = q("contract", "SELECT * FROM contract_agreements WHERE application_id = ?", app_id)
    result.expect(f"{app_id} contracts", len(contracts), int(live), contracts)
    ids = [c["id"] for c in contracts]
    marks = ",".join("?" * len(ids)) or "''"
    payments = q(
        "contract", f"SELECT * FROM contract_payments WHERE contract_id IN ({marks})", *ids
    )
    refunds = q("contract", f"SELECT * FROM contract_refunds WHERE contract_id IN ({marks})", *ids)
    result.expect(f"{app_id} deposit payments", len(payments), int(live and case.deposit))
    result.expect(f"{app_id} refunds", len(refunds), 0, refunds)
    # device: one reservation of exactly the terminals ordered, one MID, a TID per terminal
    reservations = q("device", "SELECT * FROM device_reservations WHERE application_id = ?", app_id)
    result.expect(f"{app_id} reservations", len(reservations), int(live), reservations)
    merchants = q("device", "SELECT * FROM device_merchants WHERE application_id = ?", app_id)
    result.expect(f"{app_id} MIDs", len(merchants), int(live), merchants)
    if live and reservations and merchants:
        reservation, mid = reservations[0]["id"], merchants[0]["mid"]
        terminals = q(
            "device", "SELECT * FROM device_terminals WHERE reservation_id = ?", reservation
        )
        result.expect(f"{app_id} terminals reserved", len(terminals), case.quantity)
        result.expect(
            f"{app_id} terminals activated under its MID",
            sorted((t["status"], t["mid"]) for t in terminals),
            [("activated", mid)] * case.quantity,
        )
        tids = q("device", "SELECT * FROM device_tids WHERE reservation_id = ?", reservation)
        result.expect(f"{app_id} TIDs issued", len(tids), case.quantity, tids)
        result.expect(f"{app_id} MID in the outcome", status.get("mid"), mid)
        result.expect(
            f"{app_id} acquiring enabled", merchants[0]["acquiring_enabled_at"] is not None, True
        )
        serials = [t["serial"] for t in terminals]
        codes = q(
            "device",
            f"SELECT serial, used_at FROM device_activation_codes WHERE serial IN "
            f"({','.join('?' * len(serials))})",
            *serials,
        )
        result.expect(
            f"{app_id} activation codes (one per terminal, used)",
            sorted((c["serial"], c["used_at"] is not None) for c in codes),
            sorted((serial, True) for serial in serials),
        )
        tests = q(
            "device", "SELECT * FROM device_test_transactions WHERE application_id = ?", app_id
        )
        result.expect(
            f"{app_id} test transactions (one approved per terminal)",
            sorted((t["serial"], t["approved"]) for t in tests),
            sorted((t["serial"], 1) for t in terminals),
        )
        result.counts["terminals"] += len(terminals)
    # logistics: one shipment or installation per delivery attempt, one training, no return
    attempts = {
        e["data"].get("attempt")
        for e in status["timeline"]
        if e["kind"] in ("shipped", "installation_booked")
    }
    shipments = q(
        "logistics", "SELECT kind, status FROM logistics_shipments WHERE application_id = ?", app_id
    )
    appointments = q(
        "logistics",
        "SELECT kind, status FROM logistics_appointments WHERE application_id = ?",
        app_id,
    )
    outbound = [s for s in shipments if s["kind"] == "outbound"]
    installs = [a for a in appointments if a["kind"] == "installation"]
    wanted_attempts = len(attempts) if live else 0
    result.expect(f"{app_id} delivery attempts", wanted_attempts, int(live))
    result.expect(
        f"{app_id} shipments", len(outbound), 0 if case.on_site else wanted_attempts, shipments
    )
    result.expect(
        f"{app_id} installations",
        len(installs),
        wanted_attempts if case.on_site else 0,
        appointments,
    )
    result.expect(
        f"{app_id} returns", [s for s in shipments if s["kind"] == "return"], [], shipments
    )
    training = [a for a in appointments if a["kind"] == "training"]
    result.expect(f"{app_id} training sessions", len(training), int(live), appointments)


def _audit_messages(
    stack: FaultStack,
    case: Planned,
    status: dict[str, Any],
    messages: list[dict[str, Any]],
    result: Audit,
) -> None:
    """Every callback the services recorded reached the workflow (pushed, or pulled at a
    deadline), and none was refused for good on the way: a refusal the workflow then needed
    is a lost message even when the pull found it later."""
    app_id = case.id
    recovered = {
        e["data"].get("message_id") for e in status["timeline"] if e["kind"] == "message_recovered"
    }
    result.counts["recovered_by_pull"] += len(recovered)
    got = {m["message_id"] for m in messages if m["outcome"] in GOT} | recovered
    for row in stack.outbox(app_id):
        result.counts["callbacks"] += 1
        result.counts["callback_attempts"] += row["attempts"]
        mid = _message_id(row["body"])
        where = f"{app_id} {row['service']} {row['kind']} {mid}"
        if row["delivered_at"] is None:
            result.findings.append(f"{where}: still undelivered: {row['last_error']}")
            continue
        refused = row["last_error"].startswith(FINAL_REFUSAL)
        if row["kind"] == "shipment-scans":
            result.counts["scans_refused"] += refused
            continue  # informative signals: the workflow never waits on a scan
        if refused:
            result.counts["callbacks_refused"] += 1
            if mid in got:
                result.findings.append(
                    f"{where}: refused for good ({row['last_error'][:160]}) though the "
                    "workflow needed it later"
                )
        elif mid not in got:
            result.findings.append(f"{where}: delivered but never applied by the workflow")
    for m in messages:
        if m["outcome"] == "pending":
            result.findings.append(f"{app_id} message {m['kind']} {m['message_id']} left pending")
        if m["outcome"] == "refused" and m["source"] != "merchant" and m["kind"] != "shipment_scan":
            result.counts["gateway_refusals"] += 1
            if m["message_id"] in got:
                result.findings.append(
                    f"{app_id} {m['kind']} {m['message_id']} refused by the gateway "
                    f"({m['detail'][:160]}) though the workflow needed it later"
                )


def record(scenario: str, summary: dict[str, Any]) -> None:
    """Keep a scenario's figures in artifacts/faults.json (one entry per scenario)."""
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    try:
        kept = json.loads(ARTIFACT.read_text())
    except (OSError, ValueError):
        kept = {}
    kept[scenario] = summary
    ARTIFACT.write_text(json.dumps(kept, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


async def gather_merchants(
    stack: FaultStack, cases: list[Planned], stagger: float = 0.0
) -> list[asyncio.Task[None]]:
    """Start the merchants, `stagger` seconds apart; their tasks run in the background."""
    tasks = []
    for i, case in enumerate(cases):
        if i and stagger:
            await asyncio.sleep(stagger)
        tasks.append(asyncio.create_task(stack.merchant(case), name=f"merchant {case.id}"))
    return tasks


async def finish(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for the merchants, raising the first failure."""
    for task in tasks:
        await task


Disruption = Callable[[], Awaitable[None]]
