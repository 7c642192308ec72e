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
from temporalio.testing import WorkflowEnvironment

from gateway.app import GatewaySettings, create_app
from schemas.documents import DocumentKind
from services.signing import HEADER, sign
from tests.factories import individual_application, valid_documents
from tests.servers import serving
from tests.standins import StandIns
from workers.temporal import build_worker

SECRET = "review-secret"


@dataclass
class Api:
    http: httpx.AsyncClient

    async def signed(
        self, path: str, body: dict[str, Any], secret: str = SECRET, timestamp: int | None = None
    ) -> httpx.Response:
        raw = json.dumps(body).encode()
        header = sign(raw, secret, timestamp or int(time.time()))
        return await self.http.post(path, content=raw, headers={HEADER: header})

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
        secrets={s: f"{s}-secret" for s in ("review", "contract", "device", "logistics")},
    )
    async with (
        build_worker(env.client, queue, StandIns().activities()),
        serving(create_app(env.client, settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=20) as http,
    ):
        yield Api(http)


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
    applied = await api.http.post(path, content=raw, headers={HEADER: header})
    assert applied.status_code == 200 and applied.json()["outcome"] == "applied"
    replayed = await api.http.post(path, content=raw, headers={HEADER: header})
    assert replayed.status_code == 401 and replayed.json()["error"] == "replayed_signature"
    resent = await api.signed(path, decision, timestamp=int(time.time()) + 1)
    assert resent.status_code == 200 and resent.json()["outcome"] == "duplicate"
    await api.until_stage(app_id, "contract")

    survey = {"event_id": "sv-1", "survey_id": "SV-x", "passed": True, "surveyor": "s"}
    out_of_stage = await api.signed(f"/api/applications/{app_id}/site-survey", survey)
    assert out_of_stage.status_code == 409 and out_of_stage.json()["error"] == "OutOfStage"

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
    malformed = await api.http.post(f"/api/applications/{app_id}/cancel", json={"reason": 3})
    assert malformed.status_code == 422 and "request_id" in malformed.json()["fields"]
