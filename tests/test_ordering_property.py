"""Whole applications with every callback sent in a random order relative to its step: before
the step answers, together with it, or late; some sent twice or three times; stale ones from the
earlier review round and delivery attempt mixed in. Two review rounds and two delivery attempts
each time. Whatever the order, every message is applied exactly once, to its own round and
attempt, nothing valid is refused, and the application goes live."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.exceptions import ApplicationError

from activities import catalog as act
from schemas import steps
from schemas.application import Channel
from schemas.documents import DocumentKind
from schemas.messages import (
    Ack,
    ContractEvent,
    ContractEventKind,
    DeliveryOutcome,
    DeliveryOutcomeKind,
    ReviewDecision,
    ReviewOutcome,
    TerminalActivated,
    TrainingCompleted,
    message_id,
)
from schemas.status import Stage
from tests.factories import individual_application, valid_documents
from tests.scenario import Bench, Run, new_id
from tests.standins import attempt_of
from workflows.onboarding import PosOnboarding

TIMINGS = ("inside", "together", "late")


@dataclass(frozen=True)
class Delivery:
    """How one message travels: when it is sent, how often, and after how long (ms)."""

    timing: str
    copies: int
    delay_ms: int


deliveries = st.builds(
    Delivery,
    timing=st.sampled_from(TIMINGS),
    copies=st.integers(min_value=1, max_value=3),
    delay_ms=st.integers(min_value=0, max_value=40),
)

# The steps whose answers the services follow with callbacks, in the order they happen.
STEPS = (
    ("review_1", act.OPEN_REVIEW_CASE),
    ("review_2", act.OPEN_REVIEW_CASE),
    ("contract", act.ISSUE_CONTRACT),
    ("delivery_1", act.CREATE_SHIPMENT),
    ("delivery_2", act.CREATE_SHIPMENT),
    ("activation", act.ISSUE_ACTIVATION_CODES),
    ("training", act.SCHEDULE_TRAINING),
)


@dataclass
class World:
    """Plays the review, contract, logistics and device services for one application."""

    run: Run
    plan: dict[str, Delivery]
    stale: bool  # also resend the earlier round's and attempt's outcomes with new ids
    sent: list[tuple[BaseModel, asyncio.Task[Ack | ApplicationError]]] = field(default_factory=list)

    def messages(self, name: str, request: Any, result: BaseModel) -> list[BaseModel]:
        app_id = self.run.app.application_id
        if name == act.OPEN_REVIEW_CASE:
            assert isinstance(result, steps.ReviewCaseOpened)
            if request.round == 1:
                return [
                    ReviewDecision(
                        decision_id=f"{app_id}-decision-1",
                        case_id=result.case_id,
                        round=1,
                        outcome=ReviewOutcome.NEEDS_MORE_INFO,
                        required_documents=[DocumentKind.PREMISES_PHOTOS],
                        reviewer="r1",
                    )
                ]
            return [
                ReviewDecision(
                    decision_id=f"{app_id}-decision-2",
                    case_id=result.case_id,
                    round=2,
                    outcome=ReviewOutcome.APPROVED,
                    reviewer="r2",
                )
            ]
        if name == act.ISSUE_CONTRACT:
            assert isinstance(result, steps.ContractIssued)
            signed = ContractEvent(
                event_id=f"{app_id}-signed",
                contract_id=result.contract_id,
                kind=ContractEventKind.SIGNED,
            )
            paid = ContractEvent(
                event_id=f"{app_id}-paid",
                contract_id=result.contract_id,
                kind=ContractEventKind.DEPOSIT_PAID,
                amount=self.run.policy.deposit_amount,
                payment_reference="PAY-1",
            )
            return [signed, paid]
        if name == act.CREATE_SHIPMENT:
            assert isinstance(result, steps.ShipmentCreated)
            attempt = attempt_of(request)
            kind = DeliveryOutcomeKind.FAILED if attempt == 1 else DeliveryOutcomeKind.DELIVERED
            return [
                DeliveryOutcome(
                    event_id=f"{app_id}-delivery-{attempt}",
                    reference=result.shipment_id,
                    kind=kind,
                    detail="parcel refused at the door" if attempt == 1 else "",
                )
            ]
        if name == act.ISSUE_ACTIVATION_CODES:
            return [
                TerminalActivated(event_id=f"{app_id}-on-{t.serial}", serial=t.serial, tid=t.tid)
                for t in request.terminals
            ]
        if name == act.SCHEDULE_TRAINING:
            assert isinstance(result, steps.TrainingScheduled)
            return [
                TrainingCompleted(
                    event_id=f"{app_id}-trained", session_id=result.session_id, trainer="t1"
                )
            ]
        return []

    def which(self, name: str, request: Any) -> str | None:
        if name == act.OPEN_REVIEW_CASE:
            return f"review_{request.round}"
        if name == act.CREATE_SHIPMENT:
            return f"delivery_{attempt_of(request)}"
        return {
            act.ISSUE_CONTRACT: "contract",
            act.ISSUE_ACTIVATION_CODES: "activation",
            act.SCHEDULE_TRAINING: "training",
        }.get(name)

    async def answering(self, name: str, request: Any, result: BaseModel) -> None:
        """The service sends its callbacks as the plan says, around the step's answer."""
        key = self.which(name, request)
        if key is None:
            return
        plan = self.plan[key]
        messages = self.messages(name, request, result)
        if self.stale and key == "review_2":
            messages.append(_stale_decision(self.run.app.application_id))
        for message in messages:
            for _ in range(plan.copies):
                if plan.timing == "inside":
                    # Sent and accepted before the step's answer reaches the workflow.
                    accepted = await self.start(message)
                    self.sent.append((message, asyncio.ensure_future(accepted)))
                else:
                    delay = plan.delay_ms / 1000 if plan.timing == "late" else 0
                    self.sent.append((message, asyncio.create_task(self.send(message, delay))))

    async def start(self, message: BaseModel) -> Awaitable[Ack | ApplicationError]:
        try:
            handle = await self.run.handle.start_update(
                _update_for(message), message, wait_for_stage=WorkflowUpdateStage.ACCEPTED
            )
        except WorkflowUpdateFailedError as err:
            return _done(_refusal(err))
        return _outcome(handle.result())

    async def send(self, message: BaseModel, delay: float) -> Ack | ApplicationError:
        await asyncio.sleep(delay)
        return await _outcome(self.run.handle.execute_update(_update_for(message), message))


def _stale_decision(app_id: str) -> ReviewDecision:
    return ReviewDecision(
        decision_id=f"{app_id}-decision-1-again",
        case_id=f"RC-{app_id}-1",
        round=1,
        outcome=ReviewOutcome.APPROVED,
        reviewer="r1",
    )


def _update_for(message: BaseModel) -> Any:
    return {
        ReviewDecision: PosOnboarding.review_decision,
        ContractEvent: PosOnboarding.contract_event,
        DeliveryOutcome: PosOnboarding.delivery_outcome,
        TerminalActivated: PosOnboarding.terminal_activated,
        TrainingCompleted: PosOnboarding.training_completed,
    }[type(message)]


async def _done(value: ApplicationError) -> ApplicationError:
    return value


def _refusal(err: WorkflowUpdateFailedError) -> ApplicationError:
    assert isinstance(err.cause, ApplicationError), err
    return err.cause


async def _outcome(result: Awaitable[Ack]) -> Ack | ApplicationError:
    try:
        return await result
    except WorkflowUpdateFailedError as err:
        return _refusal(err)


async def _drive(run: Run, world: World) -> None:
    """The merchant and the admin: documents, the supplement asked for, a retry after the
    failed delivery. The services' part is played by `world`."""
    await run.submit()
    await run.until(lambda s: s.round == 2 and s.stage is Stage.COLLECTING_DOCUMENTS, "round 2")
    photos = [d for d in valid_documents(run.app) if d.kind is DocumentKind.PREMISES_PHOTOS]
    await run.submit(photos)
    await run.until(
        lambda s: s.attention is not None and s.attention.kind.value == "delivery_failed",
        "the first delivery failed",
    )
    await run.admin("retry")


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=st.fixed_dictionaries({key: deliveries for key, _ in STEPS}), stale=st.booleans())
async def test_any_order_of_callbacks_applies_each_once_to_its_own_round_and_attempt(
    bench: Bench, plan: dict[str, Delivery], stale: bool
) -> None:
    app = individual_application(application_id=new_id(), channel=Channel.BANK)
    run = await bench.start(app)
    world = World(run, plan, stale)
    bench.services.answering = world.answering
    try:
        await _drive(run, world)
        # Queries only: waiting on the result would let the test server skip to a deadline.
        status = await run.until(lambda s: s.stage is Stage.LIVE, "live", seconds=30)
    finally:
        bench.services.answering = None
    answers = [(message, await task) for message, task in world.sent]

    # Every valid message was taken: applied once, its copies acknowledged as duplicates.
    applied: dict[str, int] = {}
    for message, answer in answers:
        key = message_id(message)
        if key.endswith("-again"):
            assert isinstance(answer, ApplicationError) and answer.type == "StaleMessage"
            continue
        assert isinstance(answer, Ack), f"{key} refused: {answer}"
        applied[key] = applied.get(key, 0) + (0 if answer.duplicate else 1)
    assert applied and all(count == 1 for count in applied.values()), applied

    # Each to its own round and attempt.
    app_id = app.application_id
    assert [(r.round, r.case_id, r.decision_id, r.outcome) for r in status.review.rounds] == [
        (1, f"RC-{app_id}-1", f"{app_id}-decision-1", ReviewOutcome.NEEDS_MORE_INFO),
        (2, f"RC-{app_id}-2", f"{app_id}-decision-2", ReviewOutcome.APPROVED),
    ]
    outcomes = [
        (e.kind, e.detail)
        for e in status.timeline
        if e.kind in ("delivery_failed", "delivery_delivered")
    ]
    assert outcomes == [
        ("delivery_failed", f"SH-{app_id}-1"),
        ("delivery_delivered", f"SH-{app_id}-2"),
    ]
    assert status.shipment is not None and status.shipment.shipment_id == f"SH-{app_id}-2"
    assert status.contract.signed_at is not None and status.contract.deposit_paid_at is not None
    assert all(t.activated_at is not None for t in status.terminals)
    assert len([e for e in status.timeline if e.kind == "review_decided"]) == 2
    assert len([e for e in status.timeline if e.kind == "training_completed"]) == 1
