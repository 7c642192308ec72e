"""The gateway's update forwarding when a workflow makes a message wait: a tiny test workflow
whose update handler waits on a condition (released by a signal), driven through the gateway's
own forwarder over HTTP, with the outcome read back from the real messages endpoint."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import create_engine, text
from temporalio import workflow
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from gateway.app import (
    PENDING_DETAIL,
    SIGNERS,
    Forwarded,
    Forwarder,
    GatewaySettings,
    answer,
    create_app,
)
from gateway.store import ApplicationRecord, Store
from schemas.messages import Ack, Refusal
from tests.servers import serving

WAIT = 0.5  # the gateway's update wait in these tests: short, so "pending" comes quickly
VIEWER = "viewer-token"  # reads the messages endpoint


class Ping(BaseModel):
    """A test message: the validator refuses it with `refuse`; the handler waits until released
    if `wait`, and refuses it as unavailable until healed if `flaky`."""

    event_id: str
    refuse: str = ""
    wait: bool = False
    flaky: bool = False


@workflow.defn(sandboxed=False)
class Gate:
    def __init__(self) -> None:
        self.released = False
        self.healed = False
        self.finished = False
        self.applied: list[str] = []
        self.acks: dict[str, Ack] = {}

    @workflow.run
    async def run(self) -> list[str]:
        await workflow.wait_condition(lambda: self.finished)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.applied

    @workflow.signal
    def release(self) -> None:
        self.released = True

    @workflow.signal
    def heal(self) -> None:
        self.healed = True

    @workflow.signal
    def finish(self) -> None:
        self.finished = True

    @workflow.query
    def applied_ids(self) -> list[str]:
        return self.applied

    @workflow.update
    async def ping(self, ping: Ping) -> Ack:
        if (ack := self.acks.get(ping.event_id)) is not None:
            return ack.model_copy(update={"duplicate": True})
        if ping.wait:
            await workflow.wait_condition(lambda: self.released)
        if ping.flaky and not self.healed:
            raise ApplicationError("the step is busy", type=Refusal.UNAVAILABLE.value)
        self.applied.append(ping.event_id)
        ack = Ack(message_id=ping.event_id, stage="testing", detail=f"applied {ping.event_id}")
        self.acks[ping.event_id] = ack
        return ack

    @ping.validator
    def _check(self, ping: Ping) -> None:
        if ping.refuse:
            raise ApplicationError(f"refused as {ping.refuse}", type=ping.refuse)


@dataclass
class Bench:
    http: httpx.AsyncClient
    env: WorkflowEnvironment
    app: FastAPI
    queue: str

    async def start(self, *, worker: bool = True) -> tuple[str, WorkflowHandle[Gate, list[str]]]:
        app_id = f"P{uuid.uuid4().hex[:10]}"
        # Known to the gateway (as if started through it): its refusals are kept in its audit.
        store: Store = self.app.state.store
        store.record_application(
            ApplicationRecord(
                application_id=app_id,
                workflow_id=f"gate-{app_id}",
                channel="bank",
                merchant_type="individual",
                merchant_name="Gate",
                stage="testing",
            )
        )
        queue = self.queue if worker else f"{self.queue}-nobody"
        handle = await self.env.client.start_workflow(
            Gate.run, id=f"gate-{app_id}", task_queue=queue
        )
        return app_id, handle

    async def ping(self, app_id: str, **fields: Any) -> httpx.Response:
        return await self.http.post(f"/test/{app_id}/ping", json=fields)

    async def messages(self, app_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/api/applications/{app_id}/messages")
        assert response.status_code == 200, response.text
        return list(response.json())

    async def until_settled(self, app_id: str, seconds: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while True:
            kept = await self.messages(app_id)
            if all(m["outcome"] != "pending" for m in kept):
                return kept
            if time.monotonic() > deadline:
                raise AssertionError(f"still pending: {kept}")
            await asyncio.sleep(0.05)


def gate_app(env: WorkflowEnvironment, settings: GatewaySettings) -> FastAPI:
    """The real gateway, plus one route that forwards a `Ping` to a `Gate` workflow through the
    gateway's own forwarder (as the service callbacks do with `PosOnboarding`)."""
    app = create_app(env.client, settings)
    forwarder: Forwarder = app.state.forwarder

    @app.post("/test/{application_id}/ping")
    async def ping(application_id: str, request: Request) -> JSONResponse:
        payload = Ping.model_validate(await request.json())
        forwarded: Forwarded[Ack] = await forwarder.forward(
            env.client.get_workflow_handle_for(Gate.run, f"gate-{application_id}"),
            Gate.ping,
            payload,
            application_id=application_id,
            source="test",
            kind="ping",
            body=payload.model_dump(mode="json"),
            describe=lambda ack: ack.detail,
        )
        return answer(forwarded, payload)

    return app


@pytest.fixture
async def bench(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Bench]:
    queue = f"pending-test-{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        task_queue=queue,
        secrets={s: f"{s}-secret" for s in SIGNERS},
        update_wait_seconds=WAIT,
        update_accept_seconds=1.0,
        retry_after_seconds=7,
        tokens={VIEWER: "viewer"},
    )
    app = gate_app(env, settings)
    async with (
        serving(app) as url,
        Worker(env.client, task_queue=queue, workflows=[Gate]),
        httpx.AsyncClient(
            base_url=url, timeout=20, headers={"Authorization": f"Bearer {VIEWER}"}
        ) as http,
    ):
        yield Bench(http, env, app, queue)


async def test_a_validator_refusal_is_answered_at_once_as_final(bench: Bench) -> None:
    app_id, _ = await bench.start()
    refused = await bench.ping(app_id, event_id="e1", refuse=Refusal.OUT_OF_STAGE.value)
    # Answered as final, not held for the wait and answered pending (202).
    assert refused.status_code == 409
    assert refused.json() == {
        "error": "OutOfStage",
        "message": "refused as OutOfStage",
        "fields": {},
        "retry": False,
    }
    assert "Retry-After" not in refused.headers
    invalid = await bench.ping(app_id, event_id="e2", refuse=Refusal.INVALID.value)
    assert invalid.status_code == 422 and invalid.json()["retry"] is False
    kept = await bench.messages(app_id)
    assert [(m["message_id"], m["outcome"]) for m in kept] == [("e1", "refused"), ("e2", "invalid")]
    assert kept[0]["detail"] == "OutOfStage: refused as OutOfStage"


async def test_a_result_within_the_wait_is_answered_applied(bench: Bench) -> None:
    app_id, handle = await bench.start()
    applied = await bench.ping(app_id, event_id="e1")
    assert applied.status_code == 200, applied.text
    assert applied.json()["outcome"] == "applied"
    assert applied.json()["message_id"] == "e1" and applied.json()["duplicate"] is False
    resent = await bench.ping(app_id, event_id="e1")
    assert resent.status_code == 200 and resent.json()["outcome"] == "duplicate"
    assert resent.json()["duplicate"] is True
    assert await handle.query(Gate.applied_ids) == ["e1"]
    kept = await bench.messages(app_id)
    assert [(m["outcome"], m["update_id"]) for m in kept] == [
        ("applied", "e1"),
        ("duplicate", "e1"),
    ]


async def test_a_message_that_waits_is_pending_then_settled_and_applied_once(bench: Bench) -> None:
    app_id, handle = await bench.start()
    began = time.monotonic()
    first = await bench.ping(app_id, event_id="e1", wait=True)
    assert time.monotonic() - began >= WAIT  # held for the wait before answering pending
    assert first.status_code == 202
    assert first.json() == {"outcome": "pending", "message_id": "e1", "detail": PENDING_DETAIL}
    # The sender resends anyway: it attaches to the same update, nothing runs twice.
    resent = await bench.ping(app_id, event_id="e1", wait=True)
    assert resent.status_code == 202 and resent.json()["outcome"] == "pending"
    kept = await bench.messages(app_id)
    assert [m["outcome"] for m in kept] == ["pending", "pending"]
    assert len(bench.app.state.awaiting) == 2

    await handle.signal(Gate.release)
    kept = await bench.until_settled(app_id)
    assert [(m["outcome"], m["detail"]) for m in kept] == [
        ("applied", "applied e1"),
        ("duplicate", "applied e1"),
    ]
    assert all(m["settled_at"] for m in kept)
    assert await handle.query(Gate.applied_ids) == ["e1"]
    assert not bench.app.state.awaiting  # the background waits are done and let go

    # Once settled, a resend is answered at once with what became of it.
    again = await bench.ping(app_id, event_id="e1", wait=True)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"

    metrics = (await bench.http.get("/metrics")).text
    assert 'posflow_gateway_messages_total{kind="ping",outcome="pending",source="test"} 2.0' in (
        metrics
    )
    assert (
        'posflow_gateway_messages_settled_total{kind="ping",outcome="applied",source="test"} 1.0'
        in metrics
    )
    assert "posflow_gateway_messages_awaiting 0.0" in metrics


async def test_a_pending_message_refused_in_the_end_is_kept_refused(bench: Bench) -> None:
    app_id, handle = await bench.start()
    first = await bench.ping(app_id, event_id="e1", wait=True, flaky=True)
    assert first.status_code == 202
    await handle.signal(Gate.release)
    kept = await bench.until_settled(app_id)
    assert [(m["outcome"], m["detail"]) for m in kept] == [
        ("failed", "TemporarilyUnavailable: the step is busy")
    ]


async def test_temporarily_unavailable_is_503_with_retry_after_and_a_fresh_update(
    bench: Bench,
) -> None:
    app_id, handle = await bench.start()
    by_validator = await bench.ping(app_id, event_id="e0", refuse=Refusal.UNAVAILABLE.value)
    assert by_validator.status_code == 503
    assert by_validator.headers["Retry-After"] == "7"
    assert by_validator.json()["retry"] is True
    assert set(by_validator.json()) == {"error", "message", "fields", "retry"}

    # Refused by the handler, after acceptance: Temporal keeps that result under the update id,
    # so the resend must go out under a fresh one to be applied.
    busy = await bench.ping(app_id, event_id="e1", flaky=True)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "7"
    assert busy.json() == {
        "error": "TemporarilyUnavailable",
        "message": "the step is busy",
        "fields": {},
        "retry": True,
    }
    await handle.signal(Gate.heal)
    applied = await bench.ping(app_id, event_id="e1", flaky=True)
    assert applied.status_code == 200 and applied.json()["outcome"] == "applied"
    again = await bench.ping(app_id, event_id="e1", flaky=True)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    assert await handle.query(Gate.applied_ids) == ["e1"]
    kept = [m for m in await bench.messages(app_id) if m["message_id"] == "e1"]
    assert [(m["outcome"], m["update_id"]) for m in kept] == [
        ("failed", "e1"),
        ("applied", "e1~1"),
        ("duplicate", "e1~1"),
    ]


async def test_a_workflow_that_does_not_answer_is_503_and_a_resend_applies_once(
    bench: Bench,
) -> None:
    app_id, handle = await bench.start(worker=False)  # nobody polls its task queue
    unanswered = await bench.ping(app_id, event_id="e1")
    assert unanswered.status_code == 503
    assert unanswered.headers["Retry-After"] == "7"
    assert unanswered.json()["error"] == "temporal_unavailable"
    assert unanswered.json()["retry"] is True
    async with Worker(bench.env.client, task_queue=f"{bench.queue}-nobody", workflows=[Gate]):
        applied = await bench.ping(app_id, event_id="e1")
        assert applied.status_code == 200, applied.text
        assert applied.json()["outcome"] == "applied"
        assert await handle.query(Gate.applied_ids) == ["e1"]
    kept = await bench.messages(app_id)
    assert [(m["outcome"], m["update_id"]) for m in kept] == [("failed", "e1"), ("applied", "e1")]


async def test_without_a_wait_a_refusal_is_still_answered_at_once(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    queue = f"pending-now-{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}", task_queue=queue, update_wait_seconds=0
    )
    app = gate_app(env, settings)
    await env.client.start_workflow(Gate.run, id="gate-N1", task_queue=queue)
    async with (
        Worker(env.client, task_queue=queue, workflows=[Gate]),
        serving(app) as url,
        httpx.AsyncClient(base_url=url, timeout=20) as http,
    ):
        refused = await http.post("/test/N1/ping", json={"event_id": "e1", "refuse": "NotParked"})
        assert refused.status_code == 409 and refused.json()["error"] == "NotParked"
        waiting = await http.post("/test/N1/ping", json={"event_id": "e2", "wait": True})
        assert waiting.status_code == 202


async def test_unknown_workflow_is_404(bench: Bench) -> None:
    missing = await bench.ping("nobody", event_id="e1")
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_application" and missing.json()["retry"] is False


async def test_shutdown_stops_waiting_and_leaves_the_message_pending(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    queue = f"pending-stop-{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        task_queue=queue,
        update_wait_seconds=0.2,
    )
    app = gate_app(env, settings)
    handle = await env.client.start_workflow(Gate.run, id="gate-S1", task_queue=queue)
    async with Worker(env.client, task_queue=queue, workflows=[Gate]):
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
            pending = await http.post("/test/S1/ping", json={"event_id": "e1", "wait": True})
            assert pending.status_code == 202
            assert len(app.state.awaiting) == 1
        assert not app.state.awaiting  # cancelled with the server, cleanly
        # The message is safe in the workflow; only the audit row's later update is lost.
        await handle.signal(Gate.release)
        await handle.signal(Gate.finish)
        assert await handle.result() == ["e1"]
    rows = Store(settings.database_url).messages("S1")
    assert [(r.outcome, r.detail) for r in rows] == [("pending", PENDING_DETAIL)]


async def test_a_message_left_pending_by_a_stopped_gateway_is_settled_by_another(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """Two gateways on one database: the one that took a pending message stops; the other's
    sweep asks Temporal for the update by its id and records what became of it, once."""
    queue = f"pending-sweep-{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        task_queue=queue,
        update_wait_seconds=0.2,
        pending_sweep_seconds=0,  # the first gateway never sweeps
    )
    first = gate_app(env, settings)
    handle = await env.client.start_workflow(Gate.run, id="gate-O1", task_queue=queue)
    Store(settings.database_url).record_application(
        ApplicationRecord(
            application_id="O1",
            workflow_id="gate-O1",
            channel="bank",
            merchant_type="individual",
            merchant_name="sweep test",
            stage="testing",
        )
    )
    async with Worker(env.client, task_queue=queue, workflows=[Gate]):
        async with serving(first) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
            pending = await http.post("/test/O1/ping", json={"event_id": "e1", "wait": True})
            assert pending.status_code == 202
        # The first gateway is gone, its wait with it; the message is safe in the workflow.
        await handle.signal(Gate.release)
        store = Store(settings.database_url)
        for _ in range(100):
            if await handle.query(Gate.applied_ids) == ["e1"]:
                break
            await asyncio.sleep(0.05)
        assert [r.outcome for r in store.messages("O1")] == ["pending"]
        second = gate_app(
            env,
            GatewaySettings(
                database_url=settings.database_url,
                task_queue=queue,
                pending_sweep_seconds=0.2,
                pending_sweep_after_seconds=0,
            ),
        )
        async with serving(second):
            for _ in range(100):
                rows = store.messages("O1")
                if rows[0].outcome != "pending":
                    break
                await asyncio.sleep(0.1)
        await handle.signal(Gate.finish)
        assert await handle.result() == ["e1"]
    (row,) = store.messages("O1")
    assert row.outcome == "applied" and row.settled_at is not None
    assert row.detail.startswith("applied e1") and "sweep" in row.detail


def test_store_settles_only_pending_rows_and_masks_the_detail(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'gateway.db'}")
    common = {"application_id": "A1", "source": "review", "kind": "review_decision"}
    first = store.record_message(**common, message_id="m1", outcome="pending", detail="p")
    second = store.record_message(**common, message_id="m1", outcome="pending", detail="p")
    store.record_message(**common, message_id="m1", outcome="invalid", detail="bad signature")
    assert store.settle_message("A1", "m1", "applied", "done", row=first) == 1
    assert store.settle_message("A1", "m1", "applied", "done", row=first) == 0  # settled once
    number = "110101199003070000"
    assert store.settle_message("A1", "m1", "refused", f"StaleMessage: {number}") == 1
    rows = store.messages("A1")
    assert [(r.id, r.outcome) for r in rows] == [
        (first, "applied"),
        (second, "refused"),
        (rows[2].id, "invalid"),
    ]
    assert number not in rows[1].detail
    with pytest.raises(ValueError):
        store.settle_message("A1", "m1", "maybe", "")
    assert store.message_counts()[("review", "applied")] == 1


def test_a_store_from_before_pending_gets_its_new_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE gateway_messages (id INTEGER PRIMARY KEY, application_id VARCHAR "
                "NOT NULL, source VARCHAR NOT NULL, kind VARCHAR NOT NULL, message_id VARCHAR "
                "NOT NULL, received_at DATETIME NOT NULL, outcome VARCHAR NOT NULL, detail "
                "VARCHAR NOT NULL, body VARCHAR NOT NULL)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO gateway_messages VALUES (1, 'A1', 'review', 'review_decision', "
                "'m1', '2026-01-01 00:00:00', 'applied', 'ok', '')"
            )
        )
    engine.dispose()
    store = Store(url)
    [old] = store.messages("A1")
    assert old.update_id == "" and old.settled_at is None
    store.record_message(
        application_id="A1",
        source="review",
        kind="review_decision",
        message_id="m2",
        outcome="pending",
        update_id="m2",
        body={"x": 1},
    )
    assert [json.loads(r.body) if r.body else None for r in store.messages("A1")] == [
        None,
        {"x": 1},
    ]
