"""The world answers in any order: a callback that names what a step is still creating is held
until the step has recorded it, a stale one is refused, and a deadline never cuts off what was
accepted before it. Each message is sent before, during, with and after its step, and the
application must end the same way every time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio.client import WorkflowUpdateHandle, WorkflowUpdateStage

from activities import catalog as act
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
    SiteSurveyResult,
    TerminalActivated,
    TrainingCompleted,
)
from schemas.policy import RiskLevel
from schemas.status import ApplicationStatus, Stage
from tests.factories import individual_application, valid_documents
from tests.scenario import Bench, Run, new_id, refused
from tests.standins import case_id, contract_id, shipment_id, survey_id, training_id
from workflows.onboarding import PosOnboarding

ORDERS = ("before", "during", "together", "after")


@dataclass
class Kind:
    """One kind of message and the step that creates what it names."""

    step: str
    reach: Callable[[Run], Awaitable[Any]]  # drive the application up to that step
    stage: Stage  # the stage the step runs in
    message: Callable[[Run, ApplicationStatus], BaseModel]
    update: Any
    recorded: Callable[[ApplicationStatus], bool]  # the step's result is visible
    finish: Callable[[Run], Awaitable[ApplicationStatus]]  # what follows, up to the next stage
    effect: Callable[[Run, ApplicationStatus], object]  # what the message changed


async def _to_review(run: Run) -> None:
    await run.submit()


async def _to_contract(run: Run) -> None:
    await run.submit()
    await run.decide(ReviewOutcome.APPROVED)


async def _to_devices(run: Run) -> None:
    await _to_contract(run)
    await run.sign_and_pay()


async def _to_activation(run: Run) -> None:
    await _to_devices(run)
    await run.delivery()


async def _to_training(run: Run) -> None:
    await _to_activation(run)
    await run.activate_all()


async def _approve(run: Run) -> ApplicationStatus:
    await run.decide(ReviewOutcome.APPROVED)
    return await run.at(Stage.CONTRACT)


KINDS: dict[str, Kind] = {
    "review_decision": Kind(
        step=act.OPEN_REVIEW_CASE,
        reach=_to_review,
        stage=Stage.IN_REVIEW,
        message=lambda run, _: ReviewDecision(
            decision_id="decision-1",
            case_id=case_id(run.app.application_id, 1),
            round=1,
            outcome=ReviewOutcome.APPROVED,
            reviewer="reviewer-3",
        ),
        update=PosOnboarding.review_decision,
        recorded=lambda s: bool(s.review.rounds),
        finish=lambda run: run.at(Stage.CONTRACT),
        effect=lambda run, s: [
            (r.round, r.case_id == case_id(run.app.application_id, 1), r.decision_id, r.outcome)
            for r in s.review.rounds
        ],
    ),
    "site_survey": Kind(
        step=act.REQUEST_SITE_SURVEY,
        reach=_to_review,
        stage=Stage.SITE_SURVEY,
        message=lambda run, _: SiteSurveyResult(
            event_id="survey-1",
            survey_id=survey_id(run.app.application_id),
            passed=True,
            surveyor="surveyor-1",
        ),
        update=PosOnboarding.site_survey_result,
        recorded=lambda s: s.review.survey_id is not None,
        finish=_approve,
        effect=lambda run, s: (s.review.survey_passed, s.stage),
    ),
    "contract_signed": Kind(
        step=act.ISSUE_CONTRACT,
        reach=_to_contract,
        stage=Stage.CONTRACT,
        message=lambda run, _: ContractEvent(
            event_id="signed-1",
            contract_id=contract_id(run.app.application_id),
            kind=ContractEventKind.SIGNED,
        ),
        update=PosOnboarding.contract_event,
        recorded=lambda s: s.contract.contract_id is not None,
        finish=lambda run: run.at(Stage.DELIVERING),
        effect=lambda run, s: (
            s.contract.contract_id == contract_id(run.app.application_id),
            s.contract.signed_at is not None,
        ),
    ),
    "delivery": Kind(
        step=act.CREATE_SHIPMENT,
        reach=_to_devices,
        stage=Stage.DELIVERING,
        message=lambda run, _: DeliveryOutcome(
            event_id="delivered-1",
            reference=shipment_id(run.app.application_id, 1),
            kind=DeliveryOutcomeKind.DELIVERED,
        ),
        update=PosOnboarding.delivery_outcome,
        recorded=lambda s: s.shipment is not None,
        finish=lambda run: run.at(Stage.ACTIVATING),
        effect=lambda run, s: (
            s.shipment is not None
            and s.shipment.shipment_id == shipment_id(run.app.application_id, 1),
            s.shipment is not None and s.shipment.delivered_at is not None,
        ),
    ),
    "activation": Kind(
        step=act.ISSUE_ACTIVATION_CODES,
        reach=_to_activation,
        stage=Stage.ACTIVATING,
        message=lambda _, s: TerminalActivated(
            event_id="activated-1", serial=s.terminals[0].serial, tid=s.terminals[0].tid or ""
        ),
        update=PosOnboarding.terminal_activated,
        recorded=lambda s: bool(s.terminals) and all(t.activation_code_issued for t in s.terminals),
        finish=lambda run: run.at(Stage.TRAINING),
        effect=lambda run, s: [
            (t.activated_at is not None, t.test_transaction is not None) for t in s.terminals
        ],
    ),
    "training": Kind(
        step=act.SCHEDULE_TRAINING,
        reach=_to_training,
        stage=Stage.TRAINING,
        message=lambda run, _: TrainingCompleted(
            event_id="trained-1", session_id=training_id(run.app.application_id), trainer="t-1"
        ),
        update=PosOnboarding.training_completed,
        recorded=lambda s: s.training_session_id is not None,
        finish=lambda run: run.at(Stage.LIVE),
        effect=lambda run, s: (s.training_session_id == training_id(run.app.application_id),),
    ),
}

EXPECTED: dict[str, Callable[[Run], object]] = {
    "review_decision": lambda run: [(1, True, "decision-1", ReviewOutcome.APPROVED)],
    "site_survey": lambda run: (True, Stage.CONTRACT),
    "contract_signed": lambda run: (True, True),
    "delivery": lambda run: (True, True),
    "activation": lambda run: [(True, True)],
    "training": lambda run: (True,),
}


async def _send(
    bench: Bench, run: Run, kind: Kind, order: str, message: BaseModel, gate: asyncio.Event
) -> Ack:
    """Send `message` in the given order relative to the held step, then let the step answer."""
    if order == "before":  # as soon as the stage is entered, whether or not the step started
        update = await run.handle.start_update(
            kind.update, message, wait_for_stage=WorkflowUpdateStage.ACCEPTED
        )
        return await _release_then_result(update, gate)
    await bench.services.started[kind.step].wait()
    if order == "during":  # the step is running at the service
        update = await run.handle.start_update(
            kind.update, message, wait_for_stage=WorkflowUpdateStage.ACCEPTED
        )
        assert not kind.recorded(await run.status())
        return await _release_then_result(update, gate)
    if order == "together":  # the answer and the callback reach the workflow at once
        gate.set()
        return await run.handle.execute_update(kind.update, message)
    gate.set()  # after: the step's result is recorded first
    await run.until(kind.recorded, "the step recorded")
    return await run.handle.execute_update(kind.update, message)


async def _release_then_result(update: WorkflowUpdateHandle[Ack], gate: asyncio.Event) -> Ack:
    # Poll before letting the step go: the test server forgets an update of a workflow that
    # has completed, and the last step's message completes it.
    result = asyncio.create_task(update.result())
    await asyncio.sleep(0.05)
    gate.set()
    return await result


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", list(KINDS))
async def test_a_message_lands_the_same_whenever_it_arrives(
    bench: Bench, name: str, order: str
) -> None:
    kind = KINDS[name]
    if name == "site_survey":
        bench.services.risk = RiskLevel.HIGH
    gate = bench.services.hold(kind.step)
    run = await bench.start()
    await kind.reach(run)
    status = await run.at(kind.stage)
    message = kind.message(run, status)

    ack = await _send(bench, run, kind, order, message, gate)

    assert not ack.duplicate
    final = await kind.finish(run)
    assert kind.effect(run, final) == EXPECTED[name](run)
    assert final.attention is None
    if not final.stage.finished:
        # Applied once: a resend is a duplicate, whichever order the first one came in.
        assert (await run.handle.execute_update(kind.update, message)).duplicate


# --- rounds and attempts: a message for an earlier one is stale, never applied ------------------


async def test_a_decision_waits_for_its_own_round_and_an_earlier_rounds_is_stale(
    bench: Bench,
) -> None:
    run = await bench.start()
    await run.submit()
    await run.decide(
        ReviewOutcome.NEEDS_MORE_INFO,
        decision_id="round-1",
        required_documents=[DocumentKind.PREMISES_PHOTOS],
    )
    gate = bench.services.hold(act.OPEN_REVIEW_CASE)
    await run.until(lambda s: s.round == 2, "round 2")
    photos = [d for d in valid_documents(run.app) if d.kind is DocumentKind.PREMISES_PHOTOS]
    await run.submit(photos)
    await bench.services.started[act.OPEN_REVIEW_CASE].wait()
    app_id = run.app.application_id

    # While the round-2 case is being opened: a new round-1 decision is stale at once...
    late = ReviewDecision(
        decision_id="round-1-late",
        case_id=case_id(app_id, 1),
        round=1,
        outcome=ReviewOutcome.APPROVED,
        reviewer="r1",
    )
    assert (
        await refused(run.handle.execute_update(PosOnboarding.review_decision, late))
    ).type == "StaleMessage"
    # ...a round-2 decision naming another case waits, then is refused with the real reason...
    wrong = late.model_copy(
        update={"decision_id": "round-2-wrong", "case_id": "RC-other", "round": 2}
    )
    wrong_update = await run.handle.start_update(
        PosOnboarding.review_decision, wrong, wait_for_stage=WorkflowUpdateStage.ACCEPTED
    )
    # ...and the right one waits for its case, and is applied to round 2 only.
    right = late.model_copy(
        update={"decision_id": "round-2", "case_id": case_id(app_id, 2), "round": 2}
    )
    right_update = await run.handle.start_update(
        PosOnboarding.review_decision, right, wait_for_stage=WorkflowUpdateStage.ACCEPTED
    )
    gate.set()
    assert not (await right_update.result()).duplicate
    assert (await refused(wrong_update.result())).type == "UnknownReference"
    status = await run.at(Stage.CONTRACT)
    assert [(r.round, r.case_id, r.decision_id, r.outcome) for r in status.review.rounds] == [
        (1, case_id(app_id, 1), "round-1", ReviewOutcome.NEEDS_MORE_INFO),
        (2, case_id(app_id, 2), "round-2", ReviewOutcome.APPROVED),
    ]


async def test_a_late_outcome_for_a_replaced_shipment_is_stale(bench: Bench) -> None:
    run = await bench.start()
    await run.to(Stage.DELIVERING)
    await run.delivery(DeliveryOutcomeKind.FAILED, "parcel lost")
    await run.parked()
    gate = bench.services.hold(act.CREATE_SHIPMENT)
    await run.admin("retry")
    await bench.services.started[act.CREATE_SHIPMENT].wait()
    app_id = run.app.application_id
    first = DeliveryOutcome(
        event_id="late-1", reference=shipment_id(app_id, 1), kind=DeliveryOutcomeKind.DELIVERED
    )
    error = await refused(run.handle.execute_update(PosOnboarding.delivery_outcome, first))
    assert error.type == "StaleMessage" and "earlier delivery attempt" in error.message
    second = first.model_copy(update={"event_id": "second", "reference": shipment_id(app_id, 2)})
    update = await run.handle.start_update(
        PosOnboarding.delivery_outcome, second, wait_for_stage=WorkflowUpdateStage.ACCEPTED
    )
    gate.set()
    await update.result()
    status = await run.at(Stage.ACTIVATING)
    assert status.shipment is not None and status.shipment.shipment_id == shipment_id(app_id, 2)
    assert [e.detail for e in run.events(status, "delivery_delivered")] == [shipment_id(app_id, 2)]


async def test_a_pending_message_is_refused_when_the_application_is_withdrawn(bench: Bench) -> None:
    run = await bench.start()
    gate = bench.services.hold(act.ISSUE_CONTRACT)
    await run.submit()
    await run.decide(ReviewOutcome.APPROVED)
    await bench.services.started[act.ISSUE_CONTRACT].wait()
    signed = ContractEvent(
        event_id="signed-1",
        contract_id=contract_id(run.app.application_id),
        kind=ContractEventKind.SIGNED,
    )
    pending = await run.handle.start_update(
        PosOnboarding.contract_event, signed, wait_for_stage=WorkflowUpdateStage.ACCEPTED
    )
    await run.cancel()
    gate.set()
    error = await refused(pending.result())
    assert error.type in ("OutOfStage", "ApplicationFinished")
    outcome = await run.outcome()
    assert outcome.stage is Stage.CANCELLED
    # The contract the step created is voided; nothing after the withdrawal was recorded.
    assert outcome.compensations == ["void_contract", "close_review_case"]
    status = await run.status()
    after = status.timeline[[e.kind for e in status.timeline].index("withdrawal_requested") :]
    assert "contract_issued" not in [e.kind for e in after]
    assert "contract_signed" not in [e.kind for e in after]


# --- deadlines: what was accepted before is counted; money and devices come back ---------------


async def test_a_submission_being_validated_at_the_deadline_is_counted(bench: Bench) -> None:
    # Real seconds: the test server does not skip time while the validation is held.
    run = await bench.start(document_deadline=timedelta(seconds=2), document_reminders=[])
    gate = bench.services.hold(act.VALIDATE_DOCUMENTS)
    submitting = asyncio.create_task(run.submit())
    await bench.services.started[act.VALIDATE_DOCUMENTS].wait()
    await asyncio.sleep(3)  # the deadline passes while the documents are being checked
    late = await refused(run.submit(submission_id="after-the-deadline"))
    assert late.type == "OutOfStage" and "deadline" in late.message
    gate.set()
    result = await submitting
    assert result.complete
    status = await run.at(Stage.IN_REVIEW)
    assert status.documents.outstanding == []
    # The next round has a deadline of its own: the merchant's supplement is taken (found in
    # the demo: the first round's passed deadline refused the second round's documents).
    del bench.services.gates[act.VALIDATE_DOCUMENTS]
    notice = bench.services.hold(act.NOTIFY_MERCHANT)  # the request for more is slow to go out
    await run.decide(
        ReviewOutcome.NEEDS_MORE_INFO, required_documents=[DocumentKind.PREMISES_PHOTOS]
    )
    await run.until(lambda s: s.round == 2, "round 2")
    await bench.services.started[act.NOTIFY_MERCHANT].wait()
    photos = [d for d in valid_documents(run.app) if d.kind is DocumentKind.PREMISES_PHOTOS]
    assert (await run.submit(photos)).complete
    notice.set()
    await run.until(lambda s: s.stage is Stage.IN_REVIEW and s.round == 2, "round 2 review")


async def test_a_deposit_paid_while_closing_is_taken_and_refunded(bench: Bench) -> None:
    # Real seconds: the test server would time the held compensation out while skipping time.
    run = await bench.start(
        individual_application(application_id=new_id(), channel=Channel.BANK),
        contract_deadline=timedelta(seconds=2),
        contract_reminders=[],
    )
    gate = bench.services.hold(act.VOID_CONTRACT)
    await run.to(Stage.CONTRACT)
    await run.contract(ContractEventKind.SIGNED)
    await run.at(Stage.CLOSING)  # the contract deadline passed without the deposit
    await bench.services.started[act.VOID_CONTRACT].wait()
    paid = ContractEvent(
        event_id="paid-while-closing",
        contract_id=contract_id(run.app.application_id),
        kind=ContractEventKind.DEPOSIT_PAID,
        amount=run.policy.deposit_amount,
        payment_reference="PAY-LATE",
    )
    # Accepted before the held step is let go: the test server skips time while a client
    # waits, and would time the held step out.
    update = await run.handle.start_update(
        PosOnboarding.contract_event, paid, wait_for_stage=WorkflowUpdateStage.ACCEPTED
    )
    gate.set()
    assert "refunded" in (await update.result()).detail
    outcome = await run.outcome()
    assert outcome.stage is Stage.EXPIRED
    assert outcome.compensations == ["void_contract", "refund_deposit", "close_review_case"]
    (refund,) = bench.services.requests(act.REFUND_DEPOSIT)
    assert refund.amount == run.policy.deposit_amount


async def test_a_recall_refused_because_the_parcel_arrived_becomes_a_return(bench: Bench) -> None:
    run = await bench.start()
    await run.to(Stage.DELIVERING)
    await run.until(lambda s: s.shipment is not None, "shipped")
    bench.services.refuse(act.RECALL_SHIPMENT, "shipment_delivered")
    await run.cancel()
    outcome = await run.outcome()
    assert outcome.stage is Stage.CANCELLED
    assert outcome.compensations == [
        "arrange_return",
        "release_terminals",
        "void_contract",
        "close_review_case",
    ]
    (returned,) = bench.services.requests(act.ARRANGE_RETURN)
    assert returned.serials == [t.serial for t in (await run.status()).terminals]


async def test_a_failing_escalation_never_holds_up_a_decision(bench: Bench) -> None:
    run = await bench.start()
    bench.services.fail(act.ESCALATE_REVIEW)
    await run.submit()
    await run.until(lambda s: s.deadlines.review_sla is not None, "review under way")
    await bench.sleep(6)
    status = await run.until(lambda s: bool(run.events(s, "escalation_failed")), "escalation")
    assert status.attention is None
    await run.decide(ReviewOutcome.APPROVED)
    await run.at(Stage.CONTRACT)


# --- push, then pull: a callback lost anywhere is found at the deadline -------------------------


@dataclass
class Lost:
    reach: Callable[[Run], Awaitable[Any]]
    stage: Stage
    service: str
    kind: str
    message: Callable[[Run, ApplicationStatus], BaseModel]
    ready: Callable[[ApplicationStatus], bool]
    days: float  # past the stage's deadline (or SLA)
    then: Stage


LOST: dict[str, Lost] = {
    "review_decision": Lost(
        _to_review,
        Stage.IN_REVIEW,
        "review",
        "review-decision",
        lambda run, s: ReviewDecision(
            decision_id="lost-decision",
            case_id=case_id(run.app.application_id, 1),
            round=1,
            outcome=ReviewOutcome.APPROVED,
            reviewer="r1",
        ),
        lambda s: bool(s.review.rounds),
        6,
        Stage.CONTRACT,
    ),
    "contract_signed": Lost(
        _to_contract,
        Stage.CONTRACT,
        "contract",
        "contract",
        lambda run, s: ContractEvent(
            event_id="lost-signature",
            contract_id=contract_id(run.app.application_id),
            kind=ContractEventKind.SIGNED,
        ),
        lambda s: s.contract.contract_id is not None,
        16,
        Stage.DELIVERING,
    ),
    "delivery": Lost(
        _to_devices,
        Stage.DELIVERING,
        "logistics",
        "delivery",
        lambda run, s: DeliveryOutcome(
            event_id="lost-delivery",
            reference=shipment_id(run.app.application_id, 1),
            kind=DeliveryOutcomeKind.DELIVERED,
        ),
        lambda s: s.shipment is not None,
        8,
        Stage.ACTIVATING,
    ),
    "activation": Lost(
        _to_activation,
        Stage.ACTIVATING,
        "device",
        "activation",
        lambda run, s: TerminalActivated(
            event_id="lost-activation", serial=s.terminals[0].serial, tid=s.terminals[0].tid or ""
        ),
        lambda s: bool(s.terminals) and all(t.activation_code_issued for t in s.terminals),
        8,
        Stage.TRAINING,
    ),
    "training": Lost(
        _to_training,
        Stage.TRAINING,
        "logistics",
        "training",
        lambda run, s: TrainingCompleted(
            event_id="lost-training", session_id=training_id(run.app.application_id), trainer="t"
        ),
        lambda s: s.training_session_id is not None,
        8,
        Stage.LIVE,
    ),
}


@pytest.mark.parametrize("name", list(LOST))
async def test_a_lost_callback_is_read_back_from_the_service_at_the_deadline(
    bench: Bench, name: str
) -> None:
    lost = LOST[name]
    run = await bench.start()
    await lost.reach(run)
    status = await run.until(lambda s: s.stage is lost.stage and lost.ready(s), "step recorded")
    # The service did its part and recorded the callback, which never reached the gateway.
    bench.services.record(
        run.app.application_id, lost.service, lost.kind, lost.message(run, status)
    )
    await bench.sleep(lost.days)
    status = await run.at(lost.then)
    recovered = run.events(status, "message_recovered")
    assert [(e.detail, e.data["service"]) for e in recovered] == [(lost.kind, lost.service)]
    assert not run.events(status, "needs_attention")
    assert not run.events(status, "review_escalated")
