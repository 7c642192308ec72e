"""The gateway's HTTP API against a running workflow: starts, documents, signed callbacks, the
outcome of every message, and the audit trail."""

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
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.testing import WorkflowEnvironment

from activities import catalog
from activities.projection import ProjectionActivities
from gateway.app import SIGNERS, GatewaySettings, create_app
from schemas.documents import DocumentKind
from services.signing import HEADER, sign
from tests.factories import individual_application, valid_documents
from tests.servers import serving
from tests.standins import StandIns
from workers.temporal import build_worker

SECRET = "review-secret"
ADMIN, VIEWER = "admin-token", "viewer-token"
TOKENS = {ADMIN: "admin", "operator-token": "operator", VIEWER: "viewer"}
MERCHANT_KEY = "merchant-key-all"


@dataclass
class Api:
    http: httpx.AsyncClient
    env: WorkflowEnvironment
    services: StandIns

    async def signed(
        self, path: str, body: dict[str, Any], secret: str = SECRET, timestamp: int | None = None
    ) -> httpx.Response:
        raw = json.dumps(body).encode()
        header = sign(raw, secret, timestamp or int(time.time()))
        return await self.http.post(
            path, content=raw, headers={HEADER: header, "Content-Type": "application/json"}
        )

    async def until_stage(self, app_id: str, stage: str) -> dict[str, Any]:
        for _ in range(500):
            status = (await self.http.get(f"/api/applications/{app_id}")).json()
            if status["stage"] == stage and (stage != "in_review" or status["review"]["rounds"]):
                return dict(status)
            await asyncio.sleep(0.01)
        raise AssertionError(f"{app_id} never reached {stage}")


@pytest.fixture
async def api(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Api]:
    queue = f"gateway-test-{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        task_queue=queue,
        secrets={s: f"{s}-secret" for s in SIGNERS},
        tokens=TOKENS,
        merchant_keys={MERCHANT_KEY: "all"},
    )
    async with serving(create_app(env.client, settings)) as url:
        # Snapshots reach the list over HTTP from the real activity, as in production.
        projection = ProjectionActivities(base_url=url, secret="worker-secret")
        services = StandIns()
        activities = [*services.activities(projection=False), projection.project_status]
        async with (
            build_worker(env.client, queue, activities),
            # As operations, with the admin token (merchant keys: tests/test_security.py).
            httpx.AsyncClient(
                base_url=url, timeout=20, headers={"Authorization": f"Bearer {ADMIN}"}
            ) as http,
        ):
            yield Api(http, env, services)
        await projection.aclose()


def application_body(**overrides: Any) -> dict[str, Any]:
    app = individual_application(application_id=f"G{uuid.uuid4().hex[:10]}")
    return {**app.model_dump(mode="json"), **overrides}


async def test_start_is_idempotent_and_status_answers(api: Api) -> None:
    body = application_body()
    first = await api.http.post("/api/applications", json=body)
    assert first.status_code == 201, first.text
    assert first.json()["workflow_id"] == f"pos-application-{body['application_id']}"
    again = await api.http.post("/api/applications", json=body)
    assert again.status_code == 200 and again.json()["created"] is False
    status = (await api.http.get(f"/api/applications/{body['application_id']}")).json()
    assert status["stage"] == "collecting_documents"
    listed = (
        await api.http.get("/api/applications", params={"stage": "collecting_documents"})
    ).json()
    assert [row["application_id"] for row in listed] == [body["application_id"]]


async def test_invalid_application_names_the_field_masks_it_and_starts_nothing(api: Api) -> None:
    body = application_body()
    good = body["legal_representative"]["id_number"]
    bad = good[:-1] + ("1" if good[-1] != "1" else "2")
    body["legal_representative"]["id_number"] = bad
    response = await api.http.post("/api/applications", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["error"] == "invalid_application"
    assert "legal_representative.id_number" in error["fields"]
    assert bad not in response.text
    assert (await api.http.get(f"/api/applications/{body['application_id']}")).status_code == 404


async def test_bad_document_gets_422_and_the_application_keeps_waiting(api: Api) -> None:
    body = application_body()
    await api.http.post("/api/applications", json=body)
    app = individual_application(application_id=body["application_id"])
    docs = [d.model_dump(mode="json") for d in valid_documents(app)]
    card = next(d for d in docs if d["kind"] == DocumentKind.IDENTITY_CARD.value)
    card["number"] = card["number"][:-1] + ("1" if card["number"][-1] != "1" else "2")
    response = await api.http.post(
        f"/api/applications/{body['application_id']}/documents",
        json={"submission_id": "s1", "documents": docs},
    )
    assert response.status_code == 422
    assert "documents.identity_card.number" in response.json()["fields"]
    assert card["number"] not in response.text
    status = (await api.http.get(f"/api/applications/{body['application_id']}")).json()
    assert status["stage"] == "collecting_documents"
    assert status["documents"]["outstanding"] == ["identity_card"]


async def test_review_callbacks_are_verified_applied_once_and_audited(api: Api) -> None:
    body = application_body()
    app_id = body["application_id"]
    await api.http.post("/api/applications", json=body)
    app = individual_application(application_id=app_id)
    docs = [d.model_dump(mode="json") for d in valid_documents(app)]
    assert (
        await api.http.post(
            f"/api/applications/{app_id}/documents", json={"submission_id": "s1", "documents": docs}
        )
    ).status_code == 200
    status = await api.until_stage(app_id, "in_review")
    decision = {
        "decision_id": "d-1",
        "case_id": status["review"]["case_id"],
        "round": 1,
        "outcome": "approved",
        "reviewer": "reviewer-7",
    }
    path = f"/api/applications/{app_id}/review-decision"

    unsigned = await api.http.post(path, json=decision)
    assert unsigned.status_code == 401
    forged = await api.signed(path, decision, secret="not-the-secret")
    assert forged.status_code == 401 and forged.json()["error"] == "bad_signature"
    stale = await api.signed(path, decision, timestamp=int(time.time()) - 3600)
    assert stale.status_code == 401
    assert (await api.http.get(f"/api/applications/{app_id}")).json()["stage"] == "in_review"

    raw = json.dumps(decision).encode()
    header = sign(raw, SECRET, int(time.time()))
    as_json = {"Content-Type": "application/json"}
    applied = await api.http.post(path, content=raw, headers={HEADER: header, **as_json})
    assert applied.status_code == 200 and applied.json()["outcome"] == "applied"
    replayed = await api.http.post(path, content=raw, headers={HEADER: header, **as_json})
    assert replayed.status_code == 401 and replayed.json()["error"] == "replayed_signature"
    resent = await api.signed(path, decision, timestamp=int(time.time()) + 1)
    assert resent.status_code == 200 and resent.json()["outcome"] == "duplicate"
    await api.until_stage(app_id, "contract")

    survey = {"event_id": "sv-1", "survey_id": "SV-x", "passed": True, "surveyor": "s"}
    out_of_stage = await api.signed(f"/api/applications/{app_id}/site-survey", survey)
    assert out_of_stage.status_code == 409 and out_of_stage.json()["error"] == "OutOfStage"
    assert out_of_stage.json()["retry"] is False  # final: the sender must not try again
    assert "Retry-After" not in out_of_stage.headers

    audit = (await api.http.get(f"/api/applications/{app_id}/messages")).json()
    outcomes = [(m["kind"], m["outcome"]) for m in audit]
    assert outcomes == [
        ("documents", "applied"),
        ("review_decision", "invalid"),
        ("review_decision", "invalid"),
        ("review_decision", "invalid"),
        ("review_decision", "applied"),
        ("review_decision", "invalid"),
        ("review_decision", "duplicate"),
        ("site_survey", "refused"),
    ]
    assert all(card not in json.dumps(audit) for card in [app.legal_representative.id_number])


async def test_cancel_and_unknown_application(api: Api) -> None:
    body = application_body()
    app_id = body["application_id"]
    await api.http.post("/api/applications", json=body)
    cancel = {"request_id": "cx-1", "reason": "changed my mind", "requested_by": "merchant"}
    response = await api.http.post(f"/api/applications/{app_id}/cancel", json=cancel)
    assert response.status_code == 200 and response.json()["outcome"] == "applied"
    await api.until_stage(app_id, "cancelled")
    missing = await api.http.post("/api/applications/nobody/cancel", json=cancel)
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_application"
    assert missing.json()["retry"] is False
    malformed = await api.http.post(f"/api/applications/{app_id}/cancel", json={"reason": 3})
    assert malformed.status_code == 422 and "request_id" in malformed.json()["fields"]


async def listed(api: Api, **params: Any) -> list[str]:
    response = await api.http.get("/api/applications", params=params)
    assert response.status_code == 200, response.text
    return [row["application_id"] for row in response.json()]


async def until_listed(api: Api, app_id: str, **params: Any) -> None:
    for _ in range(500):
        if app_id in await listed(api, **params):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{app_id} never listed with {params}")


async def test_the_list_follows_each_stage_change_and_agrees_with_visibility(api: Api) -> None:
    body = application_body()
    app_id = body["application_id"]
    await api.http.post("/api/applications", json=body)
    await until_listed(api, app_id, stage="collecting_documents", overdue="false")
    app = individual_application(application_id=app_id)
    docs = [d.model_dump(mode="json") for d in valid_documents(app)]
    submitted = await api.http.post(
        f"/api/applications/{app_id}/documents", json={"submission_id": "s1", "documents": docs}
    )
    assert submitted.status_code == 200, submitted.text
    await until_listed(api, app_id, stage="in_review")
    assert app_id not in await listed(api, stage="collecting_documents")
    # The same stage in the list, the status query and the search attribute operators filter on.
    status = (await api.http.get(f"/api/applications/{app_id}")).json()
    description = await api.env.client.workflow_service.describe_workflow_execution(
        DescribeWorkflowExecutionRequest(
            namespace=api.env.client.namespace,
            execution=WorkflowExecution(workflow_id=f"pos-application-{app_id}"),
        )
    )
    fields = description.workflow_execution_info.search_attributes.indexed_fields
    row = next(r for r in (await api.http.get("/api/applications", params={"q": app_id})).json())
    assert row["stage"] == status["stage"] == json.loads(fields["PosStage"].data) == "in_review"
    assert row["review_round"] == status["round"] == 1
    assert row["stage_deadline"] is not None and row["overdue"] is False


async def test_the_list_refuses_a_bad_filter_by_name(api: Api) -> None:
    response = await api.http.get("/api/applications", params={"stage": "on_the_moon"})
    assert response.status_code == 422
    assert set(response.json()["fields"]) == {"stage"}
    response = await api.http.get("/api/applications", params={"limit": "0", "color": "red"})
    assert response.status_code == 422
    assert set(response.json()["fields"]) == {"limit", "color"}


async def test_snapshots_must_be_signed_by_the_worker(api: Api) -> None:
    body = application_body()
    app_id = body["application_id"]
    await api.http.post("/api/applications", json=body)
    await until_listed(api, app_id, stage="collecting_documents")
    forged = {
        "application_id": app_id,
        "workflow_id": f"pos-application-{app_id}",
        "version": 10_000,
        "channel": "bank",
        "merchant_type": "individual",
        "merchant_name": "x",
        "fulfilment": "mail",
        "stage": "live",
        "stage_entered_at": "2026-01-01T00:00:00Z",
        "review_round": 1,
        "started_at": "2026-01-01T00:00:00Z",
    }
    for secret in ("review-secret", "wrong"):
        response = await api.signed("/api/internal/projections", forged, secret=secret)
        assert response.status_code == 401
    assert app_id in await listed(api, stage="collecting_documents")


async def test_metrics_count_stages_and_messages(api: Api) -> None:
    body = application_body()
    app_id = body["application_id"]
    await api.http.post("/api/applications", json=body)
    await until_listed(api, app_id, stage="collecting_documents", overdue="false")
    cancel = {"request_id": "cx-9", "reason": "changed my mind", "requested_by": "merchant"}
    cancelled = await api.http.post(f"/api/applications/{app_id}/cancel", json=cancel)
    assert cancelled.status_code == 200, cancelled.text
    await until_listed(api, app_id, stage="cancelled")
    text = (await api.http.get("/metrics")).text
    assert 'posflow_applications{stage="cancelled"} 1.0' in text
    assert "posflow_applications_overdue 0.0" in text
    assert (
        'posflow_gateway_messages_total{kind="cancel",outcome="applied",source="operator"}' in text
    )
    assert 'posflow_gateway_request_seconds_count{method="POST",route="/api/applications"' in text


async def test_documents_that_cannot_be_validated_now_get_503_and_a_resend_is_validated(
    api: Api,
) -> None:
    body = application_body(policy={"activity_max_attempts": 1})
    app_id = body["application_id"]
    await api.http.post("/api/applications", json=body)
    app = individual_application(application_id=app_id)
    docs = [d.model_dump(mode="json") for d in valid_documents(app)]
    submission = {"submission_id": "s1", "documents": docs}
    path = f"/api/applications/{app_id}/documents"

    api.services.fail(catalog.VALIDATE_DOCUMENTS)
    unavailable = await api.http.post(path, json=submission)
    assert unavailable.status_code == 503, unavailable.text
    assert unavailable.headers["Retry-After"] == "5"
    error = unavailable.json()
    assert error["error"] == "TemporarilyUnavailable" and error["retry"] is True
    assert set(error) == {"error", "message", "fields", "retry"}

    # The same submission again, as Retry-After asks: Temporal keeps the refused update's result
    # under its id, so the gateway sends it under a fresh one and it is validated this time.
    api.services.heal(catalog.VALIDATE_DOCUMENTS)
    filed = await api.http.post(path, json=submission)
    assert filed.status_code == 200, filed.text
    assert filed.json()["complete"] is True and filed.json()["duplicate"] is False
    again = await api.http.post(path, json=submission)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    await api.until_stage(app_id, "in_review")
    audit = (await api.http.get(f"/api/applications/{app_id}/messages")).json()
    assert [(m["outcome"], m["update_id"]) for m in audit] == [
        ("failed", "documents:s1"),
        ("applied", "documents:s1~1"),
        ("duplicate", "documents:s1~1"),
    ]


def test_the_update_wait_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POSFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("POSFLOW_OPEN_GATEWAY", "1")
    monkeypatch.setenv("POSFLOW_GATEWAY_UPDATE_WAIT_SECONDS", "2.5")
    assert GatewaySettings.from_env().update_wait_seconds == 2.5
    monkeypatch.delenv("POSFLOW_GATEWAY_UPDATE_WAIT_SECONDS")
    assert GatewaySettings.from_env().update_wait_seconds == 5.0
    for bad in ("soon", "-1"):
        monkeypatch.setenv("POSFLOW_GATEWAY_UPDATE_WAIT_SECONDS", bad)
        with pytest.raises(ValueError, match="POSFLOW_GATEWAY_UPDATE_WAIT_SECONDS"):
            GatewaySettings.from_env()
