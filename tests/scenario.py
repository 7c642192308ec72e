"""Drives one application through the workflow the way the services and people would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import (
    DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse,
)
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.documents import required_documents
from gateway.store import PROCESS
from schemas.application import Application
from schemas.documents import Document, DocumentSubmission
from schemas.merchant import merchant_workflow_id
from schemas.messages import (
    Ack,
    AdminAction,
    CancelRequest,
    ContractEvent,
    ContractEventKind,
    DeliveryOutcome,
    DeliveryOutcomeKind,
    ReviewDecision,
    ReviewOutcome,
    SiteSurveyResult,
    SubmissionResult,
    TerminalActivated,
    TrainingCompleted,
)
from schemas.policy import Policy, policy_for
from schemas.status import ApplicationStatus, OnboardingStart, Outcome, Stage
from tests.factories import individual_application, valid_documents
from tests.standins import StandIns
from workflows.onboarding import PosOnboarding

GOLDEN = Path(__file__).parent / "golden"


def fast_policy(app: Application, unit: timedelta, **overrides: Any) -> Policy:
    """The channel's policy with every duration in test units (a day, or a second on a real
    server) and steps that give up quickly, so parking is reached in a test."""
    u = unit
    fields: dict[str, Any] = {
        "document_deadline": 30 * u,
        "document_reminders": [3 * u, 7 * u, 14 * u],
        "review_sla": 5 * u,
        "review_deadline": 14 * u,
        "site_survey_deadline": 10 * u,
        "contract_deadline": 15 * u,
        "contract_reminders": [2 * u, 7 * u],
        "mail_delivery_deadline": 7 * u,
        "installation_deadline": 10 * u,
        "activation_deadline": 7 * u,
        "activation_reminders": [1 * u, 3 * u],
        "training_deadline": 7 * u,
        "training_reminders": [2 * u],
        "activity_timeout": timedelta(seconds=10),
        "activity_retry_interval": timedelta(milliseconds=50),
        "activity_retry_max_interval": timedelta(milliseconds=100),
        "activity_max_attempts": 2,
    }
    return policy_for(app.channel, {**fields, **overrides})


# The stages of the happy path, in order: the funnel's, without the site survey (by mail).
HAPPY_PATH = tuple(stage for stage in PROCESS if stage is not Stage.SITE_SURVEY)


class Run:
    def __init__(
        self,
        env: WorkflowEnvironment,
        handle: WorkflowHandle[PosOnboarding, Outcome],
        app: Application,
        policy: Policy,
    ) -> None:
        self.env = env
        self.handle = handle
        self.app = app
        self.policy = policy

    @classmethod
    async def start(
        cls, env: WorkflowEnvironment, task_queue: str, app: Application, policy: Policy
    ) -> Run:
        handle = await env.client.start_workflow(
            PosOnboarding.run,
            OnboardingStart(
                application=app, policy=policy, required_documents=required_documents(app)
            ),
            id=app.workflow_id,
            task_queue=task_queue,
        )
        return cls(env, handle, app, policy)

    # --- looking ---------------------------------------------------------------------------------

    async def status(self) -> ApplicationStatus:
        return await self.handle.query(PosOnboarding.status)

    async def until(
        self, check: Callable[[ApplicationStatus], bool], what: str, seconds: float = 15
    ) -> ApplicationStatus:
        """Poll the status query (real time) until `check` holds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + seconds
        while True:
            status = await self.status()
            if check(status):
                return status
            if loop.time() > give_up:
                raise AssertionError(
                    f"timed out waiting for {what}; status: {status.stage}, "
                    f"attention: {status.attention}"
                )
            await asyncio.sleep(0.02)

    async def at(self, stage: Stage) -> ApplicationStatus:
        return await self.until(lambda s: s.stage is stage, f"stage {stage.value}")

    async def parked(self) -> ApplicationStatus:
        return await self.until(lambda s: s.attention is not None, "needs attention")

    async def describe_raw(self) -> DescribeWorkflowExecutionResponse:
        """The server's description, undecoded: the time-skipping test server encodes an unset
        Datetime attribute in a way the typed `describe()` cannot decode."""
        return await self.env.client.workflow_service.describe_workflow_execution(
            DescribeWorkflowExecutionRequest(
                namespace=self.env.client.namespace,
                execution=WorkflowExecution(workflow_id=self.handle.id),
            )
        )

    async def search_attribute(self, name: str) -> Any:
        """A search attribute as the server holds it (None when unset)."""
        raw = await self.describe_raw()
        payload = raw.workflow_execution_info.search_attributes.indexed_fields.get(name)
        return json.loads(payload.data) if payload is not None and payload.data else None

    async def written(self, name: str, expected: Any, within: float = 10.0) -> Any:
        """A search attribute once the workflow has written `expected` (or what it holds after
        `within` seconds): what changed is written in one upsert when the workflow next waits
        for the world, after the step it may be running when its status already shows it."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + within
        while True:
            value = await self.search_attribute(name)
            if value == expected or loop.time() >= give_up:
                return value
            await asyncio.sleep(0.05)

    async def outcome(self) -> Outcome:
        return await self.handle.result()

    def events(self, status: ApplicationStatus, kind: str) -> list[Any]:
        return [e for e in status.timeline if e.kind == kind]

    # --- acting as the merchant, the services and the admins -------------------------------------

    async def submit(
        self, documents: list[Document] | None = None, submission_id: str | None = None
    ) -> SubmissionResult:
        return await self.handle.execute_update(
            PosOnboarding.submit_documents,
            DocumentSubmission(
                submission_id=submission_id or f"sub-{uuid.uuid4().hex[:8]}",
                documents=documents if documents is not None else valid_documents(self.app),
            ),
        )

    async def decide(
        self,
        outcome: ReviewOutcome,
        *,
        decision_id: str | None = None,
        round: int | None = None,
        **details: Any,
    ) -> Ack:
        status = await self.until(
            lambda s: (
                s.stage is Stage.IN_REVIEW
                and bool(s.review.rounds)
                and s.review.rounds[-1].round == s.round
            ),
            "review case opened",
        )
        if outcome is ReviewOutcome.REJECTED:
            details.setdefault("reasons", ["business scope does not allow card acquiring"])
        assert status.review.case_id is not None
        return await self.handle.execute_update(
            PosOnboarding.review_decision,
            ReviewDecision(
                decision_id=decision_id or f"dec-{uuid.uuid4().hex[:8]}",
                case_id=status.review.case_id,
                round=round or status.round,
                outcome=outcome,
                reviewer="reviewer-7",
                **details,
            ),
        )

    async def survey(self, passed: bool = True) -> Ack:
        status = await self.at(Stage.SITE_SURVEY)
        status = await self.until(lambda s: s.review.survey_id is not None, "survey requested")
        assert status.review.survey_id is not None
        return await self.handle.execute_update(
            PosOnboarding.site_survey_result,
            SiteSurveyResult(
                event_id=f"sv-{uuid.uuid4().hex[:8]}",
                survey_id=status.review.survey_id,
                passed=passed,
                surveyor="surveyor-2",
                notes="" if passed else "no shop at the address",
            ),
        )

    async def contract(self, kind: ContractEventKind, amount: Decimal | None = None) -> Ack:
        status = await self.until(lambda s: s.contract.contract_id is not None, "contract issued")
        assert status.contract.contract_id is not None
        return await self.handle.execute_update(
            PosOnboarding.contract_event,
            ContractEvent(
                event_id=f"ct-{uuid.uuid4().hex[:8]}",
                contract_id=status.contract.contract_id,
                kind=kind,
                amount=amount,
                payment_reference="PAY-1" if amount else "",
            ),
        )

    async def sign_and_pay(self) -> None:
        await self.contract(ContractEventKind.SIGNED)
        if self.policy.deposit_due:
            await self.contract(ContractEventKind.DEPOSIT_PAID, self.policy.deposit_amount)

    async def delivery(self, kind: DeliveryOutcomeKind | None = None, detail: str = "") -> Ack:
        status = await self.until(
            lambda s: (
                s.stage is Stage.DELIVERING
                and (s.shipment or s.installation or s.pick_up) is not None
                and s.attention is None
            ),
            "dispatched",
        )
        reference = status.shipment.shipment_id if status.shipment else None
        if status.installation is not None:
            reference = status.installation.appointment_id
        if status.pick_up is not None:
            reference = status.pick_up.pickup_id
        if kind is None:
            kind = (
                DeliveryOutcomeKind.INSTALLED
                if status.installation
                else DeliveryOutcomeKind.DELIVERED  # signed for, or collected at the branch
            )
        assert reference is not None
        return await self.handle.execute_update(
            PosOnboarding.delivery_outcome,
            DeliveryOutcome(
                event_id=f"dl-{uuid.uuid4().hex[:8]}", reference=reference, kind=kind, detail=detail
            ),
        )

    async def activate_all(self) -> None:
        status = await self.until(
            lambda s: (
                s.stage is Stage.ACTIVATING
                and bool(s.terminals)
                and all(t.activation_code_issued for t in s.terminals)
            ),
            "activation codes issued",
        )
        for terminal in status.terminals:
            assert terminal.tid is not None
            await self.handle.execute_update(
                PosOnboarding.terminal_activated,
                TerminalActivated(
                    event_id=f"act-{terminal.serial}", serial=terminal.serial, tid=terminal.tid
                ),
            )

    async def train(self) -> Ack:
        status = await self.until(lambda s: s.training_session_id is not None, "training scheduled")
        assert status.training_session_id is not None
        return await self.handle.execute_update(
            PosOnboarding.training_completed,
            TrainingCompleted(
                event_id=f"tr-{uuid.uuid4().hex[:8]}",
                session_id=status.training_session_id,
                trainer="trainer-1",
                topics=["sale", "refund", "settlement"],
            ),
        )

    async def cancel(
        self, reason: str = "merchant changed their mind", request_id: str = ""
    ) -> Ack:
        return await self.handle.execute_update(
            PosOnboarding.cancel,
            CancelRequest(
                request_id=request_id or f"cx-{uuid.uuid4().hex[:8]}",
                reason=reason,
                requested_by="merchant",
            ),
        )

    async def admin(self, verb: str, request_id: str = "", period: timedelta | None = None) -> Ack:
        update = {
            "retry": PosOnboarding.retry,
            "skip": PosOnboarding.skip,
            "extend": PosOnboarding.extend_deadline,
        }[verb]
        return await self.handle.execute_update(
            update,
            AdminAction(
                request_id=request_id or f"adm-{uuid.uuid4().hex[:8]}",
                admin="admin-1",
                note="fixed upstream",
                period=period,
            ),
        )

    async def to(self, stage: Stage) -> ApplicationStatus:
        """Move along the happy path until the application waits in `stage`."""
        order = [s for s in HAPPY_PATH if s is not Stage.GOING_LIVE]
        actions = [
            self.submit,
            lambda: self.decide(ReviewOutcome.APPROVED),
            self.sign_and_pay,
            None,
            self.delivery,
            self.activate_all,
            self.train,
        ]
        now = (await self.status()).stage
        for here, action in zip(order, actions, strict=False):
            if here is stage:
                break
            if action is not None and order.index(here) >= order.index(now):
                await action()
        return await self.at(stage)

    async def save_golden(self, name: str) -> None:
        """Keep this run's history as a golden one (`POSFLOW_RECORD_GOLDEN=1`) for replay."""
        if not os.environ.get("POSFLOW_RECORD_GOLDEN"):
            return
        history = await self.handle.fetch_history()
        GOLDEN.mkdir(exist_ok=True)
        data = json.loads(history.to_json())
        (GOLDEN / f"{name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


@dataclass
class Bench:
    env: WorkflowEnvironment
    services: StandIns
    task_queue: str
    unit: timedelta

    runs: list[Run] = field(default_factory=list)

    async def start(self, app: Application | None = None, **policy: Any) -> Run:
        app = app or individual_application(application_id=new_id())
        run = await Run.start(self.env, self.task_queue, app, fast_policy(app, self.unit, **policy))
        self.runs.append(run)
        return run

    async def end_runs(self) -> None:
        """Leave nothing running: the shared server's clock must not wake another test's runs."""
        for gate in self.services.gates.values():
            gate.set()  # a step a test held and never let go
        for run in self.runs:
            # Terminating with an activity in flight leaks a time-skipping lock on the test
            # server (every later env.sleep then hangs), so let in-flight activities finish.
            for _ in range(250):
                if not (await run.describe_raw()).pending_activities:
                    break
                await asyncio.sleep(0.02)
            with contextlib.suppress(RPCError):  # already finished
                await run.handle.terminate("test finished")
            # A run that went live handed its merchant over to an account that runs for years.
            with contextlib.suppress(RPCError):
                mid = (await run.status()).mid
                if mid is not None:
                    await self.env.client.get_workflow_handle(merchant_workflow_id(mid)).terminate(
                        "test finished"
                    )

    async def sleep(self, units: float) -> None:
        # The time-skipping server's sleep may never return while an activity is in flight
        # (a status snapshot just scheduled, say): let those finish first, for a moment at most.
        for run in self.runs:
            for _ in range(50):
                with contextlib.suppress(RPCError):
                    if not (await run.describe_raw()).pending_activities:
                        break
                await asyncio.sleep(0.02)
        await self.env.sleep(self.unit * units)


def new_id() -> str:
    return f"T{uuid.uuid4().hex[:12]}"


async def refused(update: Awaitable[Any]) -> ApplicationError:
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await update
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    return cause
