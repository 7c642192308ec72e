"""The review service over real HTTP: cases and rounds, idempotent writes, signed decision and
survey callbacks (retried until the gateway takes them), restarts, the demo auto-reviewer, and the
Temporal activities that call it; after go-live, rebinding reviews and their decisions, called back
to the merchant's route."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.review import review_activities
from schemas import steps
from schemas.application import Application
from schemas.merchant import RebindingDecision
from schemas.messages import ReviewDecision, ReviewOutcome, SiteSurveyResult
from schemas.policy import RiskLevel
from services.base import Callback, Service, ServiceConfig
from services.review import ReviewRules, auto_review_once, build, stable_bucket
from tests.factories import enterprise_application, individual_application, valid_documents
from tests.servers import CallbackRecorder, free_port, serving

_keys = itertools.count(1)


def key() -> str:
    return f"test-key-{next(_keys)}"


def open_request(
    app: Application, round: int = 1, category: str = "retail"
) -> steps.OpenReviewCase:
    return steps.OpenReviewCase(
        idempotency_key=key(),
        application_id=app.application_id,
        round=round,
        merchant_name=app.merchant.name,
        merchant_type=app.merchant.merchant_type.value,
        channel=app.channel.value,
        business_category=category,
        documents=valid_documents(app),
    )


def body(request: steps.Step) -> dict[str, Any]:
    """The step as its activity sends it: without its key and what the worker carries with it."""
    return request.model_dump(mode="json", exclude={"idempotency_key", *steps.Step.CARRIED})


def app_id(bucket_zero: bool, start: int) -> str:
    """An application id the auto-reviewer sends back for photos in round 1 (or not)."""
    return next(
        f"APP-{i}"
        for i in itertools.count(start)
        if (stable_bucket(f"APP-{i}") == 0) == bucket_zero
    )


class Stack:
    def __init__(self, service: Service, client: httpx.AsyncClient, url: str) -> None:
        self.service = service
        self.client = client
        self.url = url

    async def post(
        self, path: str, json: dict[str, Any], idem: str | None = None
    ) -> httpx.Response:
        return await self.client.post(path, json=json, headers={"Idempotency-Key": idem or key()})

    async def open(self, app: Application, round: int = 1, category: str = "retail") -> str:
        response = await self.post("/cases", body(open_request(app, round, category)))
        assert response.status_code == 200, response.text
        return str(response.json()["case_id"])

    def callbacks(self) -> list[Callback]:
        with self.service.session() as session:
            return list(session.exec(select(Callback)).all())


async def until(condition: Callable[[], bool], seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not come true in time")


@asynccontextmanager
async def running(db: Path, gateway: str, **options: str) -> AsyncIterator[Stack]:
    config = ServiceConfig(
        name="review", database_url=f"sqlite:///{db}", gateway_url=gateway, options=options
    )
    service = build(config)
    async with serving(service.app) as url, httpx.AsyncClient(base_url=url) as client:
        yield Stack(service, client, url)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[CallbackRecorder, str]]:
    rec = CallbackRecorder()
    async with serving(rec.app) as url:
        yield rec, url


@pytest.fixture
async def stack(tmp_path: Path, recorder: tuple[CallbackRecorder, str]) -> AsyncIterator[Stack]:
    async with running(tmp_path / "review.db", recorder[1]) as s:
        yield s


# --- cases and rounds ------------------------------------------------------------------------


async def test_risk_level_by_rule_and_a_later_round_reopens_the_same_case(stack: Stack) -> None:
    cases = [
        (individual_application(application_id="APP-LOW"), "retail", RiskLevel.LOW),
        (individual_application(application_id="APP-JEWEL"), "Jewelry", RiskLevel.HIGH),
        (individual_application(application_id="APP-TOKENS"), "gaming_tokens", RiskLevel.HIGH),
        (
            enterprise_application(legacy=True, application_id="APP-LEGACY"),
            "retail",
            RiskLevel.MEDIUM,
        ),
        (enterprise_application(application_id="APP-USCC"), "retail", RiskLevel.LOW),
        (
            individual_application(application_id="APP-PASS", passport=True),
            "retail",
            RiskLevel.MEDIUM,
        ),
    ]
    for app, category, risk in cases:
        response = await stack.post("/cases", body(open_request(app, category=category)))
        assert response.status_code == 200, response.text
        opened = steps.ReviewCaseOpened.model_validate(response.json())
        assert opened.risk_level is risk, app.application_id

    app = individual_application(application_id="APP-ROUNDS")
    case_id = await stack.open(app)
    decided = await stack.post(
        f"/cases/{case_id}/decision",
        {
            "decision": "needs_more_info",
            "required_documents": ["premises_photos"],
            "reasons": ["blurred"],
            "reviewer": "li",
        },
    )
    assert decided.status_code == 200, decided.text
    assert (await stack.client.get(f"/cases/{case_id}")).json()["status"] == "decided"

    assert await stack.open(app, round=2) == case_id
    case = (await stack.client.get(f"/cases/{case_id}")).json()
    assert (case["status"], case["round"], case["reviewer"]) == ("open", 2, "")
    assert [d["decision"]["round"] for d in case["decisions"]] == [1]
    # Personal numbers are not kept: only the kinds of the documents.
    assert "number" not in str(case["document_kinds"])

    stale = await stack.post("/cases", body(open_request(app, round=1)))
    assert (stale.status_code, stale.json()["error"]) == (409, "stale_round")

    queue = (await stack.client.get("/cases", params={"status": "open"})).json()["cases"]
    assert case_id in [c["case_id"] for c in queue]
    assert all(c["status"] == "open" for c in queue)
    assigned = await stack.post(f"/cases/{case_id}/assign", {"reviewer": "wang"})
    assert (assigned.json()["status"], assigned.json()["reviewer"]) == ("in_review", "wang")
    queue = (await stack.client.get("/cases", params={"status": "open"})).json()["cases"]
    assert case_id not in [c["case_id"] for c in queue]

    missing = await stack.client.get("/cases/rc-nope")
    assert missing.status_code == 404
    assert set(missing.json()) == {"error", "message", "fields"}


async def test_idempotent_writes(stack: Stack) -> None:
    request = body(open_request(individual_application(application_id="APP-IDEM")))
    first = await stack.post("/cases", request, idem="same-key")
    again = await stack.post("/cases", request, idem="same-key")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replay"] == "true"
    cases = (await stack.client.get("/cases")).json()["cases"]
    assert [c["application_id"] for c in cases] == ["APP-IDEM"]

    reused = await stack.post("/cases", {**request, "merchant_name": "other"}, idem="same-key")
    assert (reused.status_code, reused.json()["error"]) == (409, "idempotency_key_reused")

    no_key = await stack.client.post("/cases", json=request)
    assert (no_key.status_code, no_key.json()["error"]) == (400, "idempotency_key_required")

    invalid = await stack.post("/cases", {**request, "round": 0})
    assert invalid.status_code == 422
    assert "round" in invalid.json()["fields"]


# --- decisions and callbacks -----------------------------------------------------------------


async def test_decision_is_called_back_signed_and_retried_and_only_once_per_round(
    stack: Stack, recorder: tuple[CallbackRecorder, str]
) -> None:
    rec, _ = recorder
    rec.fail_first = 2
    app = individual_application(application_id="APP-DECIDE")
    case_id = await stack.open(app)

    incomplete = await stack.post(
        f"/cases/{case_id}/decision", {"decision": "needs_more_info", "reviewer": "li"}
    )
    assert (incomplete.status_code, incomplete.json()["error"]) == (422, "invalid_decision")

    response = await stack.post(
        f"/cases/{case_id}/decision",
        {
            "decision": "needs_more_info",
            "required_documents": ["premises_photos"],
            "reasons": ["photos do not show the shop front"],
            "reviewer": "li",
        },
    )
    assert response.status_code == 200, response.text
    decision = ReviewDecision.model_validate(response.json())
    assert (decision.case_id, decision.round) == (case_id, 1)

    [(path, sent)] = await rec.wait_for(1)
    assert path == "/api/applications/APP-DECIDE/review-decision"
    assert ReviewDecision.model_validate(sent) == decision
    assert rec.refused == []  # every attempt carried a valid signature
    await until(lambda: stack.callbacks()[0].delivered_at is not None)  # the outbox commits after
    [callback] = stack.callbacks()
    assert callback.attempts == 3

    second = await stack.post(
        f"/cases/{case_id}/decision", {"decision": "approved", "reviewer": "wang"}
    )
    assert (second.status_code, second.json()["error"]) == (409, "already_decided")
    assert len(stack.callbacks()) == 1


async def test_site_survey_escalation_and_close(
    stack: Stack, recorder: tuple[CallbackRecorder, str]
) -> None:
    rec, _ = recorder
    app = individual_application(application_id="APP-SURVEY")
    case_id = await stack.open(app, category="jewelry")
    address = app.merchant.address.model_dump(mode="json")

    requested = await stack.post(f"/cases/{case_id}/site-surveys", {"address": address})
    survey_id = steps.SiteSurveyRequested.model_validate(requested.json()).survey_id
    again = await stack.post(f"/cases/{case_id}/site-surveys", {"address": address})
    assert again.json()["survey_id"] == survey_id  # one pending survey per case

    early = await stack.post(
        f"/cases/{case_id}/decision", {"decision": "approved", "reviewer": "li"}
    )
    assert (early.status_code, early.json()["error"]) == (409, "survey_pending")

    result = await stack.post(
        f"/surveys/{survey_id}/result", {"passed": True, "surveyor": "zhao", "notes": "shop ok"}
    )
    assert result.status_code == 200, result.text
    [(path, sent)] = await rec.wait_for(1)
    assert path == "/api/applications/APP-SURVEY/site-survey"
    survey = SiteSurveyResult.model_validate(sent)
    assert (survey.survey_id, survey.passed, survey.surveyor) == (survey_id, True, "zhao")
    twice = await stack.post(f"/surveys/{survey_id}/result", {"passed": False, "surveyor": "zhao"})
    assert (twice.status_code, twice.json()["error"]) == (409, "survey_completed")

    escalated = await stack.post(
        f"/cases/{case_id}/escalations",
        {"level": 1, "round": 1, "overdue_since": datetime.now(UTC).isoformat()},
    )
    assert steps.Escalated.model_validate(escalated.json()).escalation_id
    bad_level = await stack.post(
        f"/cases/{case_id}/escalations",
        {"level": 3, "round": 1, "overdue_since": datetime.now(UTC).isoformat()},
    )
    assert bad_level.status_code == 422

    closed = steps.Undone.model_validate(
        (await stack.post(f"/cases/{case_id}/close", {"reason": "withdrawn"})).json()
    )
    assert closed.reference == case_id
    reclosed = await stack.post(f"/cases/{case_id}/close", {"reason": "withdrawn again"})
    assert reclosed.status_code == 200 and "already closed" in reclosed.json()["detail"]
    late = await stack.post(
        f"/cases/{case_id}/decision", {"decision": "approved", "reviewer": "li"}
    )
    assert (late.status_code, late.json()["error"]) == (409, "case_closed")

    case = (await stack.client.get(f"/cases/{case_id}")).json()
    assert (case["status"], case["escalation_level"], case["close_reason"]) == (
        "closed",
        1,
        "withdrawn",
    )
    assert [s["status"] for s in case["surveys"]] == ["completed"]
    assert len(case["escalations"]) == 1


async def test_state_and_undelivered_callbacks_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "review.db"
    rec = CallbackRecorder(fail_first=1_000)  # the gateway is down at first
    async with serving(rec.app) as gateway:
        app = individual_application(application_id="APP-RESTART")
        async with running(db, gateway) as first:
            case_id = await first.open(app)
            decided = await first.post(
                f"/cases/{case_id}/decision", {"decision": "approved", "reviewer": "li"}
            )
            decision_id = decided.json()["decision_id"]
            await until(lambda: first.callbacks()[0].attempts > 0)
        assert rec.received == []

        rec.fail_first = 0  # the gateway is back
        async with running(db, gateway) as second:
            case = (await second.client.get(f"/cases/{case_id}")).json()
            assert case["status"] == "decided"
            assert [d["decision"]["decision_id"] for d in case["decisions"]] == [decision_id]
            [(_, sent)] = await rec.wait_for(1)
            assert sent["decision_id"] == decision_id
            assert await second.open(app, round=2) == case_id


# --- the auto-reviewer -----------------------------------------------------------------------


async def test_auto_reviewer_decides_by_rule_through_callbacks(
    tmp_path: Path, recorder: tuple[CallbackRecorder, str]
) -> None:
    rec, gateway = recorder
    async with running(
        tmp_path / "review.db", gateway, auto_review="true", auto_review_delay_ms="50"
    ) as stack:
        normal = individual_application(application_id=app_id(False, 1))
        photos = individual_application(application_id=app_id(True, 1))
        banned = individual_application(application_id=app_id(False, 1000))
        jewel = individual_application(application_id=app_id(False, 2000))
        cases = {
            normal.application_id: await stack.open(normal),
            photos.application_id: await stack.open(photos),
            banned.application_id: await stack.open(banned, category="prepaid_cards"),
            jewel.application_id: await stack.open(jewel, category="jewelry"),
        }
        # Both high-risk cases wait for their survey, however long it takes to be requested.
        await asyncio.sleep(0.3)
        for high_risk in (jewel, banned):
            address = high_risk.merchant.address.model_dump(mode="json")
            survey = await stack.post(
                f"/cases/{cases[high_risk.application_id]}/site-surveys", {"address": address}
            )
            assert survey.status_code == 200

        received = await rec.wait_for(6)
        by_app: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for path, sent in received:
            by_app.setdefault(path.split("/")[3], []).append((path.rsplit("/", 1)[1], sent))

        def outcome(application_id: str) -> ReviewDecision:
            [(_, sent)] = [e for e in by_app[application_id] if e[0] == "review-decision"]
            decision = ReviewDecision.model_validate(sent)
            assert decision.reviewer == "auto-reviewer"
            assert decision.case_id == cases[application_id]
            return decision

        assert outcome(normal.application_id).outcome is ReviewOutcome.APPROVED
        banned_decision = outcome(banned.application_id)
        assert banned_decision.outcome is ReviewOutcome.REJECTED and banned_decision.reasons
        photos_decision = outcome(photos.application_id)
        assert photos_decision.outcome is ReviewOutcome.NEEDS_MORE_INFO
        assert photos_decision.required_documents == ["premises_photos"]
        assert photos_decision.reasons == ["photos do not show the shop front"]
        # The survey is completed first; the decision follows it.
        for high_risk in (jewel, banned):
            kinds = [k for k, _ in by_app[high_risk.application_id]]
            assert kinds == ["site-survey", "review-decision"]
        surveyed = SiteSurveyResult.model_validate(by_app[jewel.application_id][0][1])
        assert (surveyed.passed, surveyed.surveyor) == (True, "auto-surveyor")
        assert outcome(jewel.application_id).outcome is ReviewOutcome.APPROVED

        # Round 2 of the application sent back for photos is approved.
        assert await stack.open(photos, round=2) == cases[photos.application_id]
        [(_, sent)] = (await rec.wait_for(7))[6:]
        assert (sent["round"], sent["outcome"]) == (2, "approved")


# --- the activities --------------------------------------------------------------------------


async def test_activities_against_the_running_service(stack: Stack) -> None:
    acts = review_activities(stack.url)
    env = ActivityEnvironment()
    app = individual_application(application_id="APP-ACTS")
    try:
        request = open_request(app, category="precious_metals")
        opened = await env.run(acts.open_review_case, request)
        assert isinstance(opened, steps.ReviewCaseOpened)
        assert opened.risk_level is RiskLevel.HIGH
        assert await env.run(acts.open_review_case, request) == opened  # a retried activity

        requested = await env.run(
            acts.request_site_survey,
            steps.RequestSiteSurvey(
                idempotency_key=key(),
                application_id=app.application_id,
                case_id=opened.case_id,
                address=app.merchant.address,
            ),
        )
        assert isinstance(requested, steps.SiteSurveyRequested)
        escalated = await env.run(
            acts.escalate_review,
            steps.EscalateReview(
                idempotency_key=key(),
                application_id=app.application_id,
                case_id=opened.case_id,
                round=1,
                level=2,
                overdue_since=datetime.now(UTC),
            ),
        )
        assert isinstance(escalated, steps.Escalated)
        close = steps.CloseReviewCase(
            idempotency_key=key(),
            application_id=app.application_id,
            case_id=opened.case_id,
            reason="withdrawn",
        )
        undone = await env.run(acts.close_review_case, close)
        assert isinstance(undone, steps.Undone) and undone.reference == opened.case_id

        with pytest.raises(ApplicationError) as refused:
            await env.run(
                acts.close_review_case,
                close.model_copy(update={"case_id": "rc-none", "idempotency_key": key()}),
            )
        assert refused.value.non_retryable
        assert refused.value.type == "case_not_found"
    finally:
        await acts.client.aclose()


async def test_activity_against_a_closed_port_is_retryable() -> None:
    acts = review_activities(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ApplicationError) as unavailable:
            await ActivityEnvironment().run(
                acts.open_review_case, open_request(individual_application())
            )
        assert unavailable.value.type == "ServiceUnavailable"
        assert not unavailable.value.non_retryable
    finally:
        await acts.client.aclose()


def test_rules_come_from_options_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ServiceConfig(name="review", database_url="sqlite://")
    monkeypatch.delenv("POSFLOW_REVIEW_AUTO", raising=False)
    assert not ReviewRules.from_config(config).auto_review

    monkeypatch.setenv("POSFLOW_REVIEW_AUTO", "true")
    monkeypatch.setenv("POSFLOW_REVIEW_AUTO_DELAY_MS", "20")
    monkeypatch.setenv("POSFLOW_REVIEW_PROHIBITED_CATEGORIES", "Crypto Exchange, ")
    rules = ReviewRules.from_config(config)
    assert rules.auto_review and rules.auto_delay == timedelta(milliseconds=20)
    assert rules.prohibited_categories == {"crypto_exchange"}
    assert rules.risk_level("individual", "crypto-exchange", []) is RiskLevel.HIGH

    options = {"auto_review": "false", "high_risk_categories": "pawnshop"}
    rules = ReviewRules.from_config(ServiceConfig("review", "sqlite://", options=options))
    assert not rules.auto_review
    assert rules.risk_level("individual", "pawnshop", []) is RiskLevel.HIGH
    assert rules.risk_level("individual", "jewelry", []) is RiskLevel.LOW


# --- rebinding reviews (after go-live) -------------------------------------------------------

MID = "102310058120001"


def rebinding_request(holder: str = "杭州西湖小吃店", **changes: Any) -> steps.OpenRebindingReview:
    request = steps.OpenRebindingReview(
        idempotency_key=key(),
        application_id="APP-LIVE",
        merchant_id=MID,
        mid=MID,
        merchant_name="杭州西湖小吃店",
        holder_name=holder,
        bank_name="中国工商银行",
        account_kind="corporate",
        account_last4="6789",
    )
    return request.model_copy(update=changes)


async def open_rebinding(stack: Stack, holder: str = "杭州西湖小吃店") -> str:
    response = await stack.post("/rebinding-reviews", body(rebinding_request(holder)))
    assert response.status_code == 201, response.text
    return str(response.json()["case_id"])


async def test_rebinding_review_decisions_are_called_back_to_the_merchant(
    stack: Stack, recorder: tuple[CallbackRecorder, str]
) -> None:
    rec, _ = recorder
    request = body(rebinding_request())
    opened = await stack.post("/rebinding-reviews", request, idem="rebind-1")
    assert opened.status_code == 201, opened.text
    case_id = steps.RebindingReviewOpened.model_validate(opened.json()).case_id
    assert case_id.startswith("RB-")
    replay = await stack.post("/rebinding-reviews", request, idem="rebind-1")
    assert (replay.status_code, replay.json()) == (201, opened.json())
    assert replay.headers["Idempotent-Replay"] == "true"
    shown = (await stack.client.get(f"/rebinding-reviews/{case_id}")).json()
    assert (shown["status"], shown["merchant_id"], shown["account_last4"]) == ("open", MID, "6789")

    bare = await stack.post(
        f"/rebinding-reviews/{case_id}/decision", {"approved": False, "reviewer": "li"}
    )
    assert bare.status_code == 422 and "reasons" in bare.json()["fields"]
    refused = await stack.post(
        f"/rebinding-reviews/{case_id}/decision",
        {"approved": False, "reasons": ["holder is not the merchant"], "reviewer": "li"},
    )
    assert refused.status_code == 200, refused.text
    twice = await stack.post(
        f"/rebinding-reviews/{case_id}/decision", {"approved": True, "reviewer": "wang"}
    )
    assert (twice.status_code, twice.json()["error"]) == (409, "already_decided")

    other = await open_rebinding(stack)
    approved = await stack.post(
        f"/rebinding-reviews/{other}/decision", {"approved": True, "reviewer": "wang"}
    )
    assert approved.status_code == 200, approved.text

    received = await rec.wait_for(2)
    assert [path for path, _ in received] == [f"/api/merchants/{MID}/rebinding-decision"] * 2
    first, second = (RebindingDecision.model_validate(sent) for _, sent in received)
    assert first == RebindingDecision.model_validate(refused.json())
    assert (first.case_id, first.approved, first.reasons) == (
        case_id,
        False,
        ["holder is not the merchant"],
    )
    assert (second.case_id, second.approved, second.reviewer) == (other, True, "wang")
    events = (await stack.client.get(f"/merchants/{MID}/events")).json()["events"]
    assert [(e["kind"], e["body"]["decision_id"]) for e in events] == [
        ("rebinding-decision", first.decision_id),
        ("rebinding-decision", second.decision_id),
    ]

    decided = (await stack.client.get(f"/rebinding-reviews/{case_id}")).json()
    assert (decided["status"], decided["approved"], decided["reviewer"]) == ("decided", False, "li")
    listed = (await stack.client.get("/rebinding-reviews", params={"merchant_id": MID})).json()[
        "reviews"
    ]
    assert [r["case_id"] for r in listed] == [case_id, other]
    unknown = await stack.post(
        "/rebinding-reviews/RB-nope/decision", {"approved": True, "reviewer": "li"}
    )
    assert unknown.status_code == 404


async def test_rebinding_review_needs_its_merchant(stack: Stack) -> None:
    no_mid = await stack.post(
        "/rebinding-reviews", body(rebinding_request(merchant_id=None, mid=None))
    )
    assert no_mid.status_code == 422 and "merchant_id" in no_mid.json()["fields"]
    two = await stack.post("/rebinding-reviews", body(rebinding_request(mid="102310058120002")))
    assert two.status_code == 422 and "mid" in two.json()["fields"]
    full_number = await stack.post(
        "/rebinding-reviews", {**body(rebinding_request()), "account_last4": "6222020200112233"}
    )
    assert full_number.status_code == 422 and "account_last4" in full_number.json()["fields"]
    assert (await stack.client.get("/rebinding-reviews")).json()["reviews"] == []


async def test_auto_reviewer_decides_rebinding_reviews(
    stack: Stack, recorder: tuple[CallbackRecorder, str]
) -> None:
    rec, _ = recorder
    approve = await open_rebinding(stack)
    refuse = await open_rebinding(stack, holder="王五 [refuse]")
    rules = ReviewRules(auto_review=True, auto_delay=timedelta(0))
    assert auto_review_once(stack.service, rules) == 2
    assert auto_review_once(stack.service, rules) == 0  # decided once
    decisions = {
        d.case_id: d
        for d in (RebindingDecision.model_validate(sent) for _, sent in await rec.wait_for(2))
    }
    assert (decisions[approve].approved, decisions[approve].reviewer) == (True, "auto-reviewer")
    assert decisions[refuse].approved is False and decisions[refuse].reasons


async def test_auto_reviewer_in_the_background_decides_rebinding_reviews(
    tmp_path: Path, recorder: tuple[CallbackRecorder, str]
) -> None:
    rec, gateway = recorder
    async with running(
        tmp_path / "auto.db", gateway, auto_review="true", auto_review_delay_ms="20"
    ) as s:
        case_id = await open_rebinding(s)
        [(path, sent)] = await rec.wait_for(1)
        assert path == f"/api/merchants/{MID}/rebinding-decision"
        assert RebindingDecision.model_validate(sent).case_id == case_id


async def test_open_rebinding_review_activity(stack: Stack) -> None:
    acts = review_activities(stack.url)
    env = ActivityEnvironment()
    try:
        request = rebinding_request()
        opened = await env.run(acts.open_rebinding_review, request)
        assert isinstance(opened, steps.RebindingReviewOpened)
        assert await env.run(acts.open_rebinding_review, request) == opened  # a retry
        by_mid = rebinding_request(merchant_id=None)
        assert (await env.run(acts.open_rebinding_review, by_mid)).case_id != opened.case_id
        shown = (await stack.client.get(f"/rebinding-reviews/{opened.case_id}")).json()
        assert (shown["merchant_id"], shown["application_id"]) == (MID, "APP-LIVE")
        with pytest.raises(ApplicationError) as refused:
            await env.run(
                acts.open_rebinding_review, rebinding_request(merchant_id=None, mid="123")
            )
        assert refused.value.non_retryable and refused.value.type == "invalid_request"
        assert acts.open_rebinding_review in acts.all()
    finally:
        await acts.client.aclose()
