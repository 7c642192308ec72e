"""The gateway's security, as an attacker probed it: every route has a declared audience, each
role does what it may and no more, policy overrides stay within bounds, signature headers are
read strictly, bodies and ids are bounded and refusals cannot fill the store, an application id
means one application, the OpenAPI description says all of it, and `posflow up`'s credentials
are generated, private and read by everything it runs."""

from __future__ import annotations

import json
import stat
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import func
from sqlmodel import select
from starlette.routing import Mount, Route
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.projection import ProjectionActivities
from gateway.app import SIGNERS, GatewaySettings, create_app
from gateway.auth import COOKIE, GUARDS
from gateway.settings import GatewayConfigError, InsecureGateway
from gateway.store import ApplicationRecord, MessageRecord, Store
from schemas.application import Channel
from services.signing import HEADER, sign
from tests.factories import individual_application, valid_documents
from tests.servers import serving
from tests.standins import StandIns
from workers.config import ensure_credentials, read_credentials
from workers.temporal import build_worker, data_converter

VIEWER, OPERATOR, ADMIN = "viewer-token", "operator-token", "admin-token"
TOKENS = {VIEWER: "viewer", OPERATOR: "operator", ADMIN: "admin"}
ALIPAY_KEY, BANK_KEY = "merchant-key-alipay", "merchant-key-bank"
SECRETS = {s: f"{s}-secret-for-tests" for s in SIGNERS}
# Routes anyone may call: the health check and signing in (`gateway.auth.public`).
PUBLIC = {("/health", "GET"), ("/", "GET"), ("/ui/login", "GET"), ("/ui/login", "POST")}
PUBLIC |= {("/ui/logout", "POST")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def key(value: str) -> dict[str, str]:
    return {"X-Api-Key": value}


def settings(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    fields: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / f'gateway-{uuid.uuid4().hex[:6]}.db'}",
        "task_queue": f"security-{uuid.uuid4().hex[:8]}",
        "secrets": dict(SECRETS),
        "tokens": dict(TOKENS),
        "merchant_keys": {ALIPAY_KEY: "alipay", BANK_KEY: "bank"},
    }
    return GatewaySettings(**{**fields, **overrides})


class NoTemporal:
    """A client for gateways whose tests never reach a workflow; `start_error` is what a start
    gets from Temporal."""

    def __init__(self, start_error: Exception | None = None) -> None:
        self.data_converter = data_converter()
        self.start_error = start_error

    async def start_workflow(self, *_: Any, **__: Any) -> Any:
        raise self.start_error or AssertionError("no workflow starts here")

    def get_workflow_handle_for(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("no workflow here")


def offline(tmp_path: Path, start_error: Exception | None = None, **overrides: Any) -> FastAPI:
    return create_app(cast(Client, NoTemporal(start_error)), settings(tmp_path, **overrides))


def asgi(app: FastAPI, cookies: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway", cookies=cookies
    )


def application_body(**overrides: Any) -> dict[str, Any]:
    app = individual_application(application_id=f"S{uuid.uuid4().hex[:10]}")
    return {**app.model_dump(mode="json"), **overrides}


def message_rows(app: FastAPI) -> int:
    store: Store = app.state.store
    with store.session() as session:
        return int(session.exec(select(func.count()).select_from(MessageRecord)).one())


# --- every route has an audience ------------------------------------------------------------


def test_every_route_declares_its_audience(tmp_path: Path) -> None:
    """A route added without a guard fails here: the guard comes with the router it is on."""
    app = offline(tmp_path)
    seen: dict[tuple[str, str], str] = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Mount):
            assert route.path == "/static", route.path  # the dashboard's CSS and script
            continue
        path = str(context.path)
        methods = set(context.methods or ())
        if isinstance(route, APIRoute):
            audiences = [
                GUARDS[d.dependency]
                for d in context.dependencies
                if d.dependency is not None and d.dependency in GUARDS
            ]
            assert audiences, f"{methods} {path} has no declared audience"
            for method in methods:
                seen[(path, method)] = audiences[0]
                if "public" in audiences:
                    assert (path, method) in PUBLIC, f"{method} {path} is public"
        else:
            # Plain routes: the codec's CORS preflights only, which browsers send without
            # credentials and which answer headers, never payloads (gateway.codec).
            assert isinstance(route, Route) and methods == {"OPTIONS"}, path
            assert path.startswith("/codec/"), path
    assert {p for p, audience in seen.items() if audience == "public"} == PUBLIC
    assert seen[("/api/applications", "POST")] == "merchant|viewer"
    assert seen[("/api/applications/{application_id}/review-decision", "POST")] == "signed:review"
    assert seen[("/api/applications/{application_id}/activation", "POST")] == "signed:device"
    assert seen[("/api/internal/projections", "POST")] == "signed:worker"
    assert seen[("/api/applications/{application_id}/cancel", "POST")] == "viewer"
    assert seen[("/api/admin/applications/{application_id}/retry", "POST")] == "admin"
    assert seen[("/metrics", "GET")] == "viewer"
    assert seen[("/openapi.json", "GET")] == "viewer"
    assert seen[("/codec/decode", "POST")] == "admin"
    assert seen[("/ui", "GET")] == "dashboard:viewer"


async def test_nothing_but_health_and_sign_in_answers_without_a_credential(tmp_path: Path) -> None:
    app = offline(tmp_path)
    body = application_body()
    app_id = body["application_id"]
    async with asgi(app) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/ui/login")).status_code == 200
        for method, path, payload in [
            ("GET", f"/api/applications/{app_id}", None),
            ("POST", f"/api/applications/{app_id}/cancel", {"request_id": "c", "reason": "r"}),
            ("POST", "/api/applications", body),
            ("POST", f"/api/applications/{app_id}/documents", {"submission_id": "s"}),
            ("GET", "/api/applications", None),
            ("GET", "/api/overview", None),
            ("GET", f"/api/applications/{app_id}/messages", None),
            ("POST", f"/api/admin/applications/{app_id}/retry", {"request_id": "r"}),
            ("GET", "/metrics", None),
            ("GET", "/docs", None),
            ("GET", "/openapi.json", None),
            ("POST", "/codec/decode", {"payloads": []}),
        ]:
            answer = await http.request(method, path, json=payload)
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["error"] == "unauthenticated"
            wrong = await http.request(method, path, json=payload, headers=bearer("guess"))
            assert wrong.status_code == 401, (method, path)
        page = await http.get("/ui/applications")
        assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
        for path in ("review-decision", "delivery", "activation", "contract"):
            unsigned = await http.post(f"/api/applications/{app_id}/{path}", json={})
            assert unsigned.status_code == 401 and unsigned.json()["error"] == "bad_signature"
        metrics = (await http.get("/metrics", headers=bearer(VIEWER))).text
    refusals = [m for m in metrics.splitlines() if m.startswith("posflow_gateway_refusals_total")]
    assert sorted(refusals) == [  # 24 API calls, the dashboard page, 4 unsigned callbacks
        'posflow_gateway_refusals_total{reason="bad_signature"} 4.0',
        'posflow_gateway_refusals_total{reason="unauthenticated"} 25.0',
    ]
    assert message_rows(app) == 0  # refusals for unknown applications are counted, not kept


async def test_each_role_does_what_it_may_and_no_more(tmp_path: Path) -> None:
    app = offline(tmp_path)
    body = application_body()
    app_id = body["application_id"]
    cancel = {"request_id": "cx-1", "reason": "no", "requested_by": "ops"}
    action = {"request_id": "r-1", "admin": "ops"}
    async with asgi(app) as http:
        # Reads: viewer and above; a merchant key is not an ops credential.
        for token in (VIEWER, OPERATOR, ADMIN):
            assert (await http.get("/api/applications", headers=bearer(token))).status_code == 200
            assert (await http.get("/metrics", headers=bearer(token))).status_code == 200
            assert (await http.get("/openapi.json", headers=bearer(token))).status_code == 200
        for path in ("/api/applications", "/metrics", f"/api/applications/{app_id}/messages"):
            assert (await http.get(path, headers=key(ALIPAY_KEY))).status_code == 401
        # Withdraw: operator and above.
        refused = await http.post(
            f"/api/applications/{app_id}/cancel", json=cancel, headers=bearer(VIEWER)
        )
        assert refused.status_code == 403 and "operator" in refused.json()["message"]
        # Retry and skip: admin only.
        for token in (VIEWER, OPERATOR):
            for verb in ("retry", "skip"):
                answer = await http.post(
                    f"/api/admin/applications/{app_id}/{verb}", json=action, headers=bearer(token)
                )
                assert answer.status_code == 403
        # Starting: a merchant key or an admin, never a viewer or an operator; a policy: admin.
        for token in (VIEWER, OPERATOR):
            answer = await http.post("/api/applications", json=body, headers=bearer(token))
            assert answer.status_code == 403
        with_policy = {**body, "policy": {"document_deadline": "PT20S"}}
        refused = await http.post("/api/applications", json=with_policy, headers=key(ALIPAY_KEY))
        assert refused.status_code == 403 and "admin" in refused.json()["message"]
        # Even an invalid policy is refused as forbidden to a merchant, before validation.
        invalid = {**body, "policy": {"activity_timeout": "PT0S"}}
        refused = await http.post("/api/applications", json=invalid, headers=key(ALIPAY_KEY))
        assert refused.status_code == 403
        # A merchant key is its channel's: another channel's application is not its to start.
        other = await http.post("/api/applications", json=body, headers=key(BANK_KEY))
        assert other.status_code == 403 and "bank" in other.json()["message"]
        # The codec decrypts payloads: admins only.
        for token in (VIEWER, OPERATOR):
            codec = await http.post("/codec/decode", json={"payloads": []}, headers=bearer(token))
            assert codec.status_code == 403
        decoded = await http.post("/codec/decode", json={"payloads": []}, headers=bearer(ADMIN))
        assert decoded.status_code == 200, decoded.text


@dataclass
class Live:
    """A gateway with roles on, in front of a real workflow on the time-skipping server."""

    url: str
    app: FastAPI

    def client(self, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=20, headers=headers or {})


@pytest.fixture
async def live(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Live]:
    configured = settings(tmp_path)
    app = create_app(env.client, configured)
    async with serving(app) as url:
        projection = ProjectionActivities(base_url=url, secret=SECRETS["worker"])
        activities = [*StandIns().activities(projection=False), projection.project_status]
        async with build_worker(env.client, configured.task_queue, activities):
            yield Live(url, app)
        await projection.aclose()


async def test_a_merchant_starts_files_and_reads_only_its_channels_applications(live: Live) -> None:
    body = application_body()
    app_id = body["application_id"]
    application = individual_application(application_id=app_id)
    docs = [d.model_dump(mode="json") for d in valid_documents(application)]
    async with live.client(key(ALIPAY_KEY)) as merchant, live.client(key(BANK_KEY)) as bank:
        started = await merchant.post("/api/applications", json=body)
        assert started.status_code == 201, started.text
        assert (await merchant.get(f"/api/applications/{app_id}")).status_code == 200
        # Another channel's key: as if there were no such application.
        missing = await bank.get(f"/api/applications/{app_id}")
        assert missing.status_code == 404 and missing.json()["error"] == "unknown_application"
        filed = await bank.post(
            f"/api/applications/{app_id}/documents", json={"submission_id": "s1", "documents": docs}
        )
        assert filed.status_code == 404
        filed = await merchant.post(
            f"/api/applications/{app_id}/documents", json={"submission_id": "s1", "documents": docs}
        )
        assert filed.status_code == 200, filed.text
        # The merchant cannot withdraw through the ops API: operations do.
        cancel = {"request_id": "cx-1", "reason": "no longer", "requested_by": "merchant"}
        refused = await merchant.post(f"/api/applications/{app_id}/cancel", json=cancel)
        assert refused.status_code == 401
    async with live.client(bearer(OPERATOR)) as operator:
        withdrawn = await operator.post(f"/api/applications/{app_id}/cancel", json=cancel)
        assert withdrawn.status_code == 200 and withdrawn.json()["outcome"] == "applied"
        audit = (await operator.get(f"/api/applications/{app_id}/messages")).json()
        assert [(m["source"], m["kind"]) for m in audit] == [
            ("merchant", "documents"),
            ("operator", "cancel"),
        ]


# --- the policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"document_deadline": "P999999999D"}, "policy.document_deadline"),
        ({"activity_timeout": "PT0S"}, "policy.activity_timeout"),
        ({"activity_timeout": "PT2H"}, "policy.activity_timeout"),
        ({"activity_retry_interval": "-PT1S"}, "policy.activity_retry_interval"),
        ({"activity_retry_interval": "PT0.001S"}, "policy.activity_retry_interval"),
        ({"activity_retry_interval": "PT30M"}, "policy.activity_retry_max_interval"),
        ({"review_sla": "PT0S"}, "policy.review_sla"),
        ({"site_survey_risk_levels": []}, "policy.site_survey_risk_levels"),
        ({"deposit_amount": "0"}, "policy.deposit_amount"),
        ({"channel": "tmall"}, "policy.channel"),
        ({"activity_max_attempts": 1000}, "policy.activity_max_attempts"),
        ({"document_reminders": ["PT1S"] * 21}, "policy.document_reminders"),
        ({"document_deadline": "PT10S", "document_reminders": ["PT20S"]}, "policy"),
    ],
)
async def test_a_policy_override_out_of_bounds_is_refused_before_anything_starts(
    tmp_path: Path, override: dict[str, Any], field: str
) -> None:
    async with asgi(offline(tmp_path)) as http:  # a start would fail: NoTemporal
        answer = await http.post(
            "/api/applications", json=application_body(policy=override), headers=bearer(ADMIN)
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_policy"
    assert field in answer.json()["fields"], answer.json()


async def test_twenty_thousand_reminders_are_refused(tmp_path: Path) -> None:
    reminders = {"document_deadline": "P300D", "document_reminders": ["PT1H"] * 20_000}
    async with asgi(offline(tmp_path)) as http:
        answer = await http.post(
            "/api/applications", json=application_body(policy=reminders), headers=bearer(ADMIN)
        )
    assert answer.status_code in (413, 422), answer.text


async def test_an_admin_may_ask_for_more_site_surveys_and_faster_timings(live: Live) -> None:
    policy = {
        "document_deadline": "PT20S",
        "document_reminders": ["PT5S"],
        "site_survey_risk_levels": ["medium", "high"],
        "activity_retry_interval": "PT0.5S",
    }
    body = application_body(policy=policy)
    async with live.client(bearer(ADMIN)) as admin:
        started = await admin.post("/api/applications", json=body)
        assert started.status_code == 201, started.text


# --- one application per id ------------------------------------------------------------------


async def test_the_same_id_with_another_body_is_409_the_same_body_200(live: Live) -> None:
    body = application_body()
    async with live.client(key(ALIPAY_KEY)) as merchant, live.client(bearer(ADMIN)) as admin:
        assert (await merchant.post("/api/applications", json=body)).status_code == 201
        again = await merchant.post("/api/applications", json=json.loads(json.dumps(body)))
        assert again.status_code == 200 and again.json()["created"] is False
        other = {**body, "merchant": {**body["merchant"], "name": "另一家便利店"}}
        reused = await merchant.post("/api/applications", json=other)
        assert reused.status_code == 409, reused.text
        assert reused.json()["error"] == "application_id_reused"
        faster = await admin.post(
            "/api/applications", json={**body, "policy": {"activity_retry_interval": "PT0.5S"}}
        )
        assert faster.status_code == 409


async def test_a_start_temporal_refuses_is_answered_with_the_reason_never_500(
    tmp_path: Path,
) -> None:
    too_large = RPCError("Blob data size exceeds limit.", RPCStatusCode.INVALID_ARGUMENT, b"")
    async with asgi(offline(tmp_path, start_error=too_large)) as http:
        answer = await http.post(
            "/api/applications", json=application_body(), headers=bearer(ADMIN)
        )
    assert answer.status_code == 422 and answer.json()["error"] == "start_refused"
    assert "Blob data size exceeds limit" in answer.json()["message"]
    down = RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
    async with asgi(offline(tmp_path, start_error=down)) as http:
        answer = await http.post(
            "/api/applications", json=application_body(), headers=bearer(ADMIN)
        )
    assert answer.status_code == 503 and answer.json()["retry"] is True
    assert "Retry-After" in answer.headers


# --- signatures ------------------------------------------------------------------------------


async def test_a_signature_header_in_any_other_shape_is_401_and_a_reordered_one_a_replay(
    live: Live,
) -> None:
    body = application_body()
    app_id = body["application_id"]
    path = f"/api/applications/{app_id}/site-survey"
    survey = json.dumps({"event_id": "sv-1", "survey_id": "SV-x", "passed": True, "surveyor": "s"})
    raw = survey.encode()
    header = sign(raw, SECRETS["review"], int(time.time()))
    t, v1 = header.split(",")
    as_json = {"Content-Type": "application/json"}
    async with live.client(bearer(ADMIN)) as admin, live.client() as service:
        assert (await admin.post("/api/applications", json=body)).status_code == 201
        first = await service.post(path, content=raw, headers={HEADER: header, **as_json})
        assert first.status_code == 409, first.text  # out of stage: applied or not, it counted
        for replay in (f"{v1},{t}", header):
            again = await service.post(path, content=raw, headers={HEADER: replay, **as_json})
            assert again.status_code == 401 and again.json()["error"] == "replayed_signature"
        extra = await service.post(path, content=raw, headers={HEADER: f"{header},x=1", **as_json})
        assert extra.status_code == 401 and extra.json()["error"] == "bad_signature"
        # Header bytes that are not ASCII: refused as a bad signature, never a 500.
        foreign = await service.post(
            path, content=raw, headers={HEADER: f"{t},v1=é".encode(), **as_json}
        )
        assert foreign.status_code == 401 and foreign.json()["error"] == "bad_signature"
        audit = (await admin.get(f"/api/applications/{app_id}/messages")).json()
    assert [m["outcome"] for m in audit] == ["refused", "invalid", "invalid", "invalid", "invalid"]


# --- bodies, ids and refusals are bounded ----------------------------------------------------


async def test_a_large_body_is_413_before_it_is_read_and_a_refused_one_kept_as_an_excerpt(
    live: Live,
) -> None:
    body = application_body()
    app_id = body["application_id"]
    path = f"/api/applications/{app_id}/review-decision"
    async with live.client(bearer(ADMIN)) as admin, live.client() as anyone:
        assert (await admin.post("/api/applications", json=body)).status_code == 201
        huge = b'{"decision_id": "' + b"x" * 10_000_000 + b'"}'
        answer = await anyone.post(path, content=huge, headers={"Content-Type": "application/json"})
        assert answer.status_code == 413 and answer.json()["error"] == "body_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(100):
                yield b"x" * 100_000

        streamed = await anyone.post(path, content=chunks())
        assert streamed.status_code == 413, streamed.text
        # Under the limit but unsigned: refused, and only a masked excerpt is kept.
        card = "6222021234567890123"
        padded = json.dumps({"decision_id": "d", "note": card + " " + "y" * 200_000})
        refused = await anyone.post(
            path, content=padded.encode(), headers={"Content-Type": "application/json"}
        )
        assert refused.status_code == 401
        audit = (await admin.get(f"/api/applications/{app_id}/messages")).json()
        metrics = (await admin.get("/metrics")).text
    assert len(audit) == 1 and audit[0]["outcome"] == "invalid"
    kept = json.loads(audit[0]["body"])
    assert kept["truncated"] is True and kept["bytes"] == len(padded)
    assert len(kept["excerpt"]) <= 1000 and card not in kept["excerpt"]
    assert 'posflow_gateway_refusals_total{reason="too_large"} 2.0' in metrics


async def test_long_ids_are_refused_without_being_echoed(tmp_path: Path) -> None:
    long_id = "A" * 10_000
    async with asgi(offline(tmp_path), cookies={COOKIE: VIEWER}) as http:
        for path in (f"/api/applications/{long_id}/messages", f"/api/applications/{long_id}"):
            answer = await http.get(path, headers=bearer(ADMIN))
            assert answer.status_code == 422, answer.text
            assert long_id[:100] not in answer.text
            assert set(answer.json()["fields"]) == {"application_id"}
        page = await http.get(f"/ui/applications/{long_id}")
        assert page.status_code == 404 and long_id[:100] not in page.text
        signed = await http.post(f"/api/applications/{long_id}/delivery", json={})
        assert signed.status_code == 401 and long_id[:100] not in signed.text


async def test_unknown_applications_refusals_are_counted_never_stored(tmp_path: Path) -> None:
    app = offline(tmp_path)
    async with asgi(app) as http:
        for n in range(50):
            raw = json.dumps({"event_id": f"e{n}"}).encode()
            header = sign(raw, "not-the-secret", int(time.time()))
            answer = await http.post(
                f"/api/applications/NOBODY-{n}/delivery",
                content=raw,
                headers={HEADER: header, "Content-Type": "application/json"},
            )
            assert answer.status_code == 401
        metrics = (await http.get("/metrics", headers=bearer(VIEWER))).text
    assert message_rows(app) == 0
    assert 'posflow_gateway_refusals_total{reason="bad_signature"} 50.0' in metrics


# --- the OpenAPI description -----------------------------------------------------------------


async def test_the_openapi_description_tells_bodies_answers_bounds_and_credentials(
    tmp_path: Path,
) -> None:
    async with asgi(offline(tmp_path), cookies={COOKIE: VIEWER}) as http:
        spec = (await http.get("/openapi.json", headers=bearer(VIEWER))).json()
        docs = await http.get("/docs")  # as a signed-in browser asks for it
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = spec["paths"]

    def body_of(path: str) -> str:
        content = paths[path]["post"]["requestBody"]["content"]["application/json"]
        return str(content["schema"]["$ref"]).rsplit("/", 1)[-1]

    assert body_of("/api/applications") == "StartRequest"
    assert body_of("/api/applications/{application_id}/review-decision") == "ReviewDecision"
    assert body_of("/api/applications/{application_id}/documents") == "DocumentSubmission"
    assert body_of("/api/applications/{application_id}/cancel") == "CancelRequest"
    assert body_of("/api/admin/applications/{application_id}/retry") == "AdminAction"
    assert body_of("/api/internal/projections") == "Projection"
    start = paths["/api/applications"]["post"]["responses"]
    assert {"200", "201", "401", "403", "409", "413", "422", "503"} <= set(start)
    decision = paths["/api/applications/{application_id}/review-decision"]["post"]
    assert {"200", "202", "401", "404", "409", "413", "422", "503"} <= set(decision["responses"])
    parameters = {p["name"]: p for p in decision["parameters"]}
    assert parameters["application_id"]["schema"]["maxLength"] == 64
    assert parameters[HEADER]["in"] == "header"
    listing = {p["name"]: p["schema"] for p in paths["/api/applications"]["get"]["parameters"]}
    assert listing["limit"]["maximum"] == 500 and listing["limit"]["minimum"] == 1
    assert listing["offset"]["minimum"] == 0
    overview = paths["/api/overview"]["get"]["parameters"][0]["schema"]
    assert overview["exclusiveMinimum"] == 0 and overview["maximum"] == 366
    schemes = spec["components"]["securitySchemes"]
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schemes)
    assert schemes["APIKeyHeader"]["name"] == "X-Api-Key"
    policy = spec["components"]["schemas"]["PolicyOverrides"]["properties"]
    assert "deposit_amount" not in policy and "channel" not in policy
    # Docs can be left out altogether.
    async with asgi(offline(tmp_path, api_docs=False)) as http:
        assert (await http.get("/openapi.json", headers=bearer(VIEWER))).status_code == 404


# --- secure by default ---------------------------------------------------------------------


def test_the_gateway_never_opens_by_itself_and_faces_no_network_open_or_with_a_known_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSFLOW_HOME", str(tmp_path))
    for name in ("POSFLOW_TOKENS", "POSFLOW_MERCHANT_KEYS", "POSFLOW_OPEN_GATEWAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("POSFLOW_CREDENTIALS_FILE", raising=False)
    with pytest.raises(GatewayConfigError, match="POSFLOW_OPEN_GATEWAY"):
        GatewaySettings.from_env()
    monkeypatch.setenv("POSFLOW_OPEN_GATEWAY", "1")
    assert GatewaySettings.from_env().is_open
    monkeypatch.setenv("POSFLOW_GATEWAY_HOST", "0.0.0.0")
    with pytest.raises(InsecureGateway, match="open"):
        create_app(cast(Client, NoTemporal()), GatewaySettings.from_env())
    monkeypatch.delenv("POSFLOW_OPEN_GATEWAY")
    monkeypatch.setenv("POSFLOW_TOKENS", f"admin:{ADMIN}")
    with pytest.raises(InsecureGateway, match="POSFLOW_REVIEW_SECRET"):
        create_app(cast(Client, NoTemporal()), GatewaySettings.from_env())  # dev-secret
    for signer in SIGNERS:
        monkeypatch.setenv(f"POSFLOW_{signer.upper()}_SECRET", uuid.uuid4().hex)
    create_app(cast(Client, NoTemporal()), GatewaySettings.from_env())  # closed, strong: fine


def test_posflow_up_credentials_are_private_and_read_by_every_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("POSFLOW_CREDENTIALS_FILE", raising=False)
    for name in ("POSFLOW_TOKENS", "POSFLOW_MERCHANT_KEYS", "POSFLOW_OPEN_GATEWAY"):
        monkeypatch.delenv(name, raising=False)
    for signer in SIGNERS:
        monkeypatch.delenv(f"POSFLOW_{signer.upper()}_SECRET", raising=False)
    written = ensure_credentials()
    assert written is not None and stat.S_IMODE(written.stat().st_mode) == 0o600
    stored = read_credentials()
    assert stored is not None
    configured = GatewaySettings.from_env()
    assert not configured.is_open
    assert sorted(configured.tokens.values()) == ["admin", "operator", "viewer"]
    assert set(configured.merchant_keys.values()) == {"all"}
    assert configured.secrets == stored.secrets
    values = [*stored.tokens.values(), *stored.merchant_keys.values(), *stored.secrets.values()]
    assert len(set(values)) == len(values) == 9 and all(len(v) >= 32 for v in values)
    # Generated per install: a second install has others.
    other = ensure_credentials(tmp_path / "other" / "credentials.json")
    assert other is not None and read_credentials(other) != stored
    # What `posflow up` prints says where the admin token is, never a secret.
    from cli.main import _how_to_sign_in

    printed = _how_to_sign_in()
    assert str(written) in printed and not any(v in printed for v in values)


def test_merchant_keys_from_the_environment_name_a_channel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POSFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("POSFLOW_TOKENS", f"viewer:{VIEWER}")
    monkeypatch.setenv("POSFLOW_MERCHANT_KEYS", f"bank:{BANK_KEY}, all:front-end-key")
    configured = GatewaySettings.from_env()
    assert configured.merchant_keys == {BANK_KEY: Channel.BANK.value, "front-end-key": "all"}
    monkeypatch.setenv("POSFLOW_MERCHANT_KEYS", "moon:key")
    with pytest.raises(GatewayConfigError, match="bank"):
        GatewaySettings.from_env()


# --- what the fuzzer found (tests/test_fuzz.py) ----------------------------------------------


def snapshot_body(**overrides: Any) -> dict[str, Any]:
    return {
        "application_id": "S-SNAPSHOT",
        "workflow_id": "pos-application-S-SNAPSHOT",
        "version": 1,
        "channel": "bank",
        "merchant_type": "individual",
        "merchant_name": "便利店",
        "fulfilment": "mail",
        "stage": "contract",
        "stage_entered_at": "2026-01-01T00:00:00Z",
        "review_round": 1,
        "started_at": "2026-01-01T00:00:00Z",
        **overrides,
    }


async def signed_post(
    http: httpx.AsyncClient, path: str, raw: bytes, secret: str | None
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[HEADER] = sign(raw, secret, int(time.time()))
    return await http.post(path, content=raw, headers=headers)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"version": 2**63}, "version"),  # was a 500: past SQLite's INTEGER
        ({"version": -1}, "version"),
        ({"review_round": 10**20}, "review_round"),
        ({"stage_entered_at": "0001-01-01T00:30:00+01:00"}, "stage_entered_at"),  # no UTC time
        (
            {"visits": [{"stage": "contract", "entered_at": "9999-12-31T23:59:00-01:00"}]},
            "visits.0.entered_at",
        ),
        ({"merchant_name": "\udc00"}, "merchant_name"),  # a lone surrogate: no UTF-8 form
    ],
)
async def test_a_snapshot_the_store_cannot_keep_is_422_by_field_never_500(
    tmp_path: Path, override: dict[str, Any], field: str
) -> None:
    app = offline(tmp_path)
    async with asgi(app) as http:
        raw = json.dumps(snapshot_body(**override)).encode()
        answer = await signed_post(http, "/api/internal/projections", raw, SECRETS["worker"])
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == "invalid_snapshot"
        assert set(answer.json()["fields"]) == {field}
        kept = await signed_post(
            http,
            "/api/internal/projections",
            json.dumps(snapshot_body()).encode(),
            SECRETS["worker"],
        )
        assert kept.status_code == 200 and kept.json() == {"applied": True, "version": 1}


async def test_a_lone_surrogate_in_a_refused_body_is_kept_as_text_never_500(tmp_path: Path) -> None:
    """JSON may spell a lone surrogate ("\\udc00"): Python's parser takes it, no database can
    keep it. A refused message for a known application keeps a masked excerpt of its body in the
    audit trail: that was a 500, even for a request nobody signed."""
    app = offline(tmp_path)
    store: Store = app.state.store
    store.record_application(
        ApplicationRecord(
            application_id="S-KNOWN",
            workflow_id="pos-application-S-KNOWN",
            channel="alipay",
            merchant_type="individual",
            merchant_name="便利店",
            stage="in_review",
        )
    )
    path = "/api/applications/S-KNOWN/review-decision"
    raw = b'{"decision_id": "d-1", "case_id": "RC-1", "round": 1, "outcome": "approved", '
    raw += b'"reviewer": "r\\udc00"}'
    async with asgi(app) as http:
        unsigned = await signed_post(http, path, raw, None)
        assert unsigned.status_code == 401 and unsigned.json()["error"] == "bad_signature"
        signed = await signed_post(http, path, raw, SECRETS["review"])
        assert signed.status_code == 422 and set(signed.json()["fields"]) == {"reviewer"}
        audit = await http.get("/api/applications/S-KNOWN/messages", headers=bearer(ADMIN))
    assert audit.status_code == 200, audit.text
    assert [m["outcome"] for m in audit.json()] == ["invalid", "invalid"]
    for message in audit.json():
        kept = json.loads(message["body"])
        assert kept["truncated"] is False and "\\udc00" in kept["excerpt"]


async def test_every_operation_declares_what_its_guard_and_the_body_limit_answer(
    tmp_path: Path,
) -> None:
    """A credential refused is a 401, a body past the limit a 413, on every route that takes
    them; the codec's routes did not say so (found by the fuzzer's status code check)."""
    async with asgi(offline(tmp_path)) as http:
        spec = (await http.get("/openapi.json", headers=bearer(VIEWER))).json()
        for method in ("decode", "encode"):
            answer = await http.post(f"/codec/{method}", json={"payloads": []})
            assert answer.status_code == 401
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            declared = set(operation["responses"])
            signed = any(p["name"] == HEADER for p in operation.get("parameters", []))
            if operation.get("security") or signed:
                assert "401" in declared, (method, path)
            if "requestBody" in operation:
                assert "413" in declared, (method, path)


async def test_a_page_past_what_the_store_can_count_to_is_refused_never_500(tmp_path: Path) -> None:
    """An offset past 2**63 was a 500 (SQLite's INTEGER), through the API and the dashboard's
    page number; the bound is in the OpenAPI description, so the fuzzer tries it."""
    async with asgi(offline(tmp_path), cookies={COOKIE: VIEWER}) as http:
        for offset in (2**63, 10**30):
            answer = await http.get(
                "/api/applications", params={"offset": offset}, headers=bearer(VIEWER)
            )
            assert answer.status_code == 422, answer.text
            assert set(answer.json()["fields"]) == {"offset"}
        spec = (await http.get("/openapi.json", headers=bearer(VIEWER))).json()
        page = await http.get("/ui/applications", params={"page": 10**30})
        assert page.status_code == 422 and "<b>offset</b>" in page.text  # the page, named
    listing = {
        p["name"]: p["schema"] for p in spec["paths"]["/api/applications"]["get"]["parameters"]
    }
    assert listing["offset"]["maximum"] == 2**31 - 1
