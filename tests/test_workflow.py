"""The onboarding workflow, path by path, asserted on its status query and the steps it ran."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import structlog
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.service import RPCError

from activities import catalog as act
from schemas.application import Channel, Fulfilment
from schemas.documents import DocumentKind, IssueCode
from schemas.messages import (
    ContractEventKind,
    DeliveryOutcome,
    DeliveryOutcomeKind,
    ReviewDecision,
    ReviewOutcome,
    ShipmentScan,
)
from schemas.policy import RiskLevel
from schemas.status import AttentionKind, Stage
from schemas.steps import Notice
from tests.factories import enterprise_application, individual_application, valid_documents
from tests.scenario import Bench, new_id, refused
from workers.logging import configure_logging
from workers.temporal import build_replayer
from workflows import search_attributes as sa
from workflows.onboarding import PosOnboarding

HAPPY_MAIL = [
    act.VALIDATE_DOCUMENTS,
    act.OPEN_REVIEW_CASE,
    act.ISSUE_CONTRACT,
    act.RESERVE_TERMINALS,
    act.REGISTER_TERMINALS,
    act.CREATE_SHIPMENT,
    act.ISSUE_ACTIVATION_CODES,
    act.RUN_TEST_TRANSACTION,
    act.SCHEDULE_TRAINING,
    act.ENABLE_ACQUIRING,
]


# --- happy paths ---------------------------------------------------------------------------------


async def test_individual_by_mail_goes_live(bench: Bench) -> None:
    run = await bench.start()
    result = await run.submit()
    assert result.complete and not result.issues and result.outstanding == []
    await run.decide(ReviewOutcome.APPROVED)
    await run.sign_and_pay()
    await run.delivery()
    await run.activate_all()
    await run.train()
    outcome = await run.outcome()

    assert outcome.stage is Stage.LIVE
    assert outcome.mid is not None and len(outcome.mid) == 15 and outcome.mid.isdigit()
    assert len(outcome.tids) == 1 and len(outcome.tids[0]) == 8
    assert outcome.compensations == []
    assert bench.services.names() == HAPPY_MAIL
    assert bench.services.notices() == [
        Notice.RECEIVED,
        Notice.CONTRACT_READY,
        Notice.SHIPPED,
        Notice.ACTIVATION_CODES,
        Notice.TRAINING_BOOKED,
        Notice.WENT_LIVE,
    ]
    status = await run.status()
    # Each notice in full, as the notification service renders it, with the merchant's page.
    received, contract, shipped, codes, training, live = bench.services.texts
    assert f"申请码：{run.app.application_id}" in received
    (welcome,) = bench.services.requests(act.NOTIFY_MERCHANT)[:1]
    assert welcome.contact == run.app.contact  # registered with the first notice
    assert status.contract.signing_url and status.contract.signing_url in contract
    assert status.shipment is not None and status.shipment.tracking_number in shipped
    issued = bench.services.requests(act.ISSUE_ACTIVATION_CODES)
    assert len(issued) == 1 and "激活码" in codes
    assert "培训已安排" in training
    assert outcome.mid in live
    assert all(f"/m/{run.app.application_id}." in text for text in bench.services.texts)
    assert not run.events(status, "notification_failed")
    assert status.stage is Stage.LIVE
    assert status.shipment is not None and status.shipment.delivered_at is not None
    assert all(t.activated_at and t.test_transaction for t in status.terminals)
    entered = [e.detail for e in run.events(status, "stage_entered")]
    assert entered == [
        "collecting_documents",
        "in_review",
        "contract",
        "preparing_devices",
        "delivering",
        "activating",
        "training",
        "going_live",
        "live",
    ]
    await run.save_golden("individual_mail_live")


async def test_a_notice_its_step_could_not_send_is_sent_by_the_workflow_once(bench: Bench) -> None:
    """A step carries its notice (one activity, not two); when the notice could not go out
    with it, the workflow sends it itself, under the same key, so it goes out exactly once."""
    run = await bench.start()
    await run.submit()
    await run.decide(ReviewOutcome.APPROVED)
    await run.sign_and_pay()
    await run.until(lambda s: s.stage is Stage.PREPARING_DEVICES, "contract done")
    bench.services.fail(act.NOTIFY_MERCHANT, times=1)  # the notification service hiccups once
    await run.delivery()
    (shipment,) = bench.services.requests(act.CREATE_SHIPMENT)
    carried = shipment.then_notify
    assert carried is not None and carried.notice is Notice.SHIPPED
    sent = [r for r in bench.services.requests(act.NOTIFY_MERCHANT) if r.notice is Notice.SHIPPED]
    assert [r.idempotency_key for r in sent] == [carried.idempotency_key]
    assert sent[0].fields["tracking_number"]  # filled in from the shipment, as the step would
    status = await run.status()
    assert not run.events(status, "notification_failed")
    # The notices the steps carried went out with them: no activity of their own.
    (contract,) = bench.services.requests(act.ISSUE_CONTRACT)
    assert contract.then_notify is not None and contract.then_notify.notice is Notice.CONTRACT_READY


async def test_enterprise_on_site_with_deposit_goes_live(bench: Bench) -> None:
    app = enterprise_application(application_id=new_id())  # bank channel: deposit due, 3 terminals
    run = await bench.start(app)
    await run.submit()
    await run.decide(ReviewOutcome.APPROVED)
    status = await run.at(Stage.CONTRACT)
    assert status.contract.deposit_due == "299.00"
    await run.contract(ContractEventKind.SIGNED)
    assert (await run.status()).stage is Stage.CONTRACT  # signed but not paid: still waiting
    await run.contract(ContractEventKind.DEPOSIT_PAID, run.policy.deposit_amount)
    await run.delivery()
    await run.activate_all()
    await run.train()
    outcome = await run.outcome()

    assert outcome.stage is Stage.LIVE and len(outcome.tids) == 3 and len(set(outcome.tids)) == 3
    names = bench.services.names()
    assert act.BOOK_INSTALLATION in names and act.CREATE_SHIPMENT not in names
    assert names.count(act.RUN_TEST_TRANSACTION) == 3
    status = await run.status()
    assert status.installation is not None and status.installation.installed_at is not None
    training = bench.services.requests(act.SCHEDULE_TRAINING)[0]
    assert training.on_site is True
    await run.save_golden("enterprise_on_site_live")


async def test_lakala_pick_up_at_a_branch_goes_live(bench: Bench) -> None:
    """领取: the terminals wait at a branch; the merchant gets the branch and a code, collects,
    and the contract carries Lakala's card rate."""
    app = individual_application(
        application_id=new_id(), channel=Channel.LAKALA, fulfilment=Fulfilment.PICK_UP
    )
    run = await bench.start(app)
    await run.submit()
    await run.decide(ReviewOutcome.APPROVED)
    await run.sign_and_pay()
    await run.delivery()
    await run.activate_all()
    await run.train()
    outcome = await run.outcome()

    assert outcome.stage is Stage.LIVE
    names = bench.services.names()
    assert act.BOOK_PICK_UP in names
    assert act.CREATE_SHIPMENT not in names and act.BOOK_INSTALLATION not in names
    status = await run.status()
    assert status.pick_up is not None and status.pick_up.collected_at is not None
    assert status.shipment is None and status.installation is None
    (contract,) = bench.services.requests(act.ISSUE_CONTRACT)
    assert str(contract.card_rate_percent) == "0.60" and str(contract.deposit_amount) == "99.00"
    ready = bench.services.texts[bench.services.notices().index(Notice.PICK_UP_READY)]
    (held,) = bench.services.requests(act.BOOK_PICK_UP)
    assert held.serials == [t.serial for t in status.terminals]
    assert "杭州服务网点" in ready and "取件码" in ready
    assert not run.events(status, "notification_failed")
    await run.save_golden("lakala_pick_up_live")


async def test_a_pick_up_withdrawn_is_cancelled_at_the_branch(bench: Bench) -> None:
    app = individual_application(
        application_id=new_id(), channel=Channel.LAKALA, fulfilment=Fulfilment.PICK_UP
    )
    run = await bench.start(app)
    await run.submit()
    await run.decide(ReviewOutcome.APPROVED)
    await run.sign_and_pay()
    await run.until(lambda s: s.pick_up is not None, "held at the branch")
    await run.cancel()
    outcome = await run.outcome()

    assert outcome.stage is Stage.CANCELLED
    assert outcome.compensations[0] == "cancel_pick_up"
    assert [r.pickup_id for r in bench.services.requests(act.CANCEL_PICK_UP)] == [
        (await run.status()).pick_up.pickup_id  # type: ignore[union-attr]
    ]


async def test_alipay_training_declined_goes_live_after_activation(bench: Bench) -> None:
    """Alipay's profile makes training optional (the set-up guide): a merchant who declines it
    goes live after activation, with no training step at all."""
    run = await bench.start(
        individual_application(
            application_id=new_id(), channel=Channel.ALIPAY, decline_training=True
        )
    )
    await run.submit()
    await run.decide(ReviewOutcome.APPROVED)
    await run.sign_and_pay()
    await run.delivery()
    await run.activate_all()
    outcome = await run.outcome()

    assert outcome.stage is Stage.LIVE
    assert act.SCHEDULE_TRAINING not in bench.services.names()
    status = await run.status()
    assert Stage.TRAINING.value not in [e.detail for e in run.events(status, "stage_entered")]
    assert run.events(status, "training_declined")
    (contract,) = bench.services.requests(act.ISSUE_CONTRACT)
    assert str(contract.card_rate_percent) == "0.38"  # Alipay's rate, not the bank card rate


async def test_tmall_training_is_booked_in_two_sessions(bench: Bench) -> None:
    run = await bench.start(
        individual_application(
            application_id=new_id(), channel=Channel.TMALL, tmall_store="好运来旗舰店"
        )
    )
    await run.submit()
    await run.decide(ReviewOutcome.APPROVED)
    await run.sign_and_pay()
    await run.delivery()
    await run.activate_all()
    await run.train()
    assert (await run.outcome()).stage is Stage.LIVE
    (training,) = bench.services.requests(act.SCHEDULE_TRAINING)
    assert training.sessions == 2
    booked = bench.services.texts[bench.services.notices().index(Notice.TRAINING_BOOKED)]
    assert "共2次" in booked
    await run.save_golden("tmall_two_training_sessions_live")


async def test_legacy_licence_needs_tax_and_organisation_code_certificates(bench: Bench) -> None:
    app = enterprise_application(legacy=True, application_id=new_id(), fulfilment=Fulfilment.MAIL)
    run = await bench.start(app)
    status = await run.status()
    assert DocumentKind.TAX_REGISTRATION in status.documents.outstanding
    assert DocumentKind.ORGANISATION_CODE in status.documents.outstanding
    docs = valid_documents(app)
    without_certificates = [
        d
        for d in docs
        if d.kind not in (DocumentKind.TAX_REGISTRATION, DocumentKind.ORGANISATION_CODE)
    ]
    first = await run.submit(without_certificates)
    assert not first.complete
    assert set(first.outstanding) == {DocumentKind.TAX_REGISTRATION, DocumentKind.ORGANISATION_CODE}
    assert (await run.status()).stage is Stage.COLLECTING_DOCUMENTS
    second = await run.submit([d for d in docs if d not in without_certificates])
    assert second.complete
    await run.to(Stage.LIVE)
    assert (await run.outcome()).stage is Stage.LIVE
    await run.save_golden("enterprise_legacy_live")


# --- documents -----------------------------------------------------------------------------------


async def test_bad_document_is_named_and_the_application_keeps_waiting(bench: Bench) -> None:
    run = await bench.start()
    docs = valid_documents(run.app)
    card = next(d for d in docs if d.kind is DocumentKind.IDENTITY_CARD)
    wrong = card.number[:-1] + ("1" if card.number[-1] != "1" else "2")
    bad = [card.model_copy(update={"number": wrong}) if d is card else d for d in docs]
    result = await run.submit(bad)

    assert not result.complete
    assert DocumentKind.IDENTITY_CARD not in result.filed
    assert result.outstanding == [DocumentKind.IDENTITY_CARD]
    issue = next(i for i in result.issues if i.field == "documents.identity_card.number")
    assert issue.code is IssueCode.CHECKSUM
    assert wrong not in issue.message and card.number not in issue.message
    status = await run.status()
    assert status.stage is Stage.COLLECTING_DOCUMENTS
    assert status.documents.outstanding == [DocumentKind.IDENTITY_CARD]
    assert DocumentKind.BUSINESS_LICENCE in status.documents.on_file

    fixed = await run.submit([card])
    assert fixed.complete and fixed.filed == [DocumentKind.IDENTITY_CARD]
    await run.at(Stage.IN_REVIEW)
    # The merchant is told by notice too, the document named, its number nowhere.
    await run.until(lambda s: bool(run.events(s, "merchant_notified")[1:]), "told")
    assert bench.services.notices() == [Notice.RECEIVED, Notice.DOCUMENTS_INCOMPLETE]
    told = bench.services.texts[1]
    assert "材料不完整：法定代表人身份证（number：" in told
    assert wrong not in told and card.number not in told


async def test_documents_expire_after_reminders_on_the_policys_schedule(bench: Bench) -> None:
    run = await bench.start()
    status = await run.status()
    started = status.stage_entered_at
    assert status.deadlines.stage_deadline == started + 30 * bench.unit
    assert status.deadlines.next_reminder == started + 3 * bench.unit
    await bench.sleep(31)
    outcome = await run.outcome()

    assert outcome.stage is Stage.EXPIRED
    assert "identity_card" in outcome.reason and outcome.compensations == []
    status = await run.status()
    offsets = [e.at - started for e in run.events(status, "reminder_sent")]
    expected = [3 * bench.unit, 7 * bench.unit, 14 * bench.unit]
    assert len(offsets) == 3
    assert all(abs(o - e) < bench.unit / 4 for o, e in zip(offsets, expected, strict=True))
    assert bench.services.notices() == [Notice.RECEIVED] + [Notice.DOCUMENTS_REMINDER] * 3 + [
        Notice.EXPIRED
    ]
    reminder, expired = bench.services.texts[1], bench.services.texts[-1]
    assert "仍缺少：法定代表人身份证" in reminder and "逾期申请将自动失效" in reminder
    assert "失效" in expired and "identity_card" in expired
    await run.save_golden("documents_expired")


async def test_two_resubmission_rounds_then_approval(bench: Bench) -> None:
    run = await bench.start()
    await run.submit()
    await run.decide(
        ReviewOutcome.NEEDS_MORE_INFO,
        required_documents=[DocumentKind.BANK_ACCOUNT_PROOF],
        reasons=["account proof is illegible"],
    )
    status = await run.until(
        lambda s: s.round == 2 and s.stage is Stage.COLLECTING_DOCUMENTS, "round 2"
    )
    assert status.documents.outstanding == [DocumentKind.BANK_ACCOUNT_PROOF]
    assert status.documents.requested_by_review == [DocumentKind.BANK_ACCOUNT_PROOF]
    proof = [d for d in valid_documents(run.app) if d.kind is DocumentKind.BANK_ACCOUNT_PROOF]
    assert (await run.submit(proof)).complete
    await run.decide(
        ReviewOutcome.NEEDS_MORE_INFO, required_documents=[DocumentKind.PREMISES_PHOTOS]
    )
    await run.until(lambda s: s.round == 3 and s.stage is Stage.COLLECTING_DOCUMENTS, "round 3")
    photos = [d for d in valid_documents(run.app) if d.kind is DocumentKind.PREMISES_PHOTOS]
    await run.submit(photos)
    await run.decide(ReviewOutcome.APPROVED)
    status = await run.at(Stage.CONTRACT)

    assert [r.round for r in status.review.rounds] == [1, 2, 3]
    assert [r.outcome for r in status.review.rounds] == [
        ReviewOutcome.NEEDS_MORE_INFO,
        ReviewOutcome.NEEDS_MORE_INFO,
        ReviewOutcome.APPROVED,
    ]
    assert [r.round for r in bench.services.requests(act.OPEN_REVIEW_CASE)] == [1, 2, 3]
    assert bench.services.notices()[:3] == [Notice.RECEIVED] + [Notice.MORE_INFORMATION_NEEDED] * 2
    first_request = bench.services.texts[1]
    assert "需要补充材料：结算账户证明" in first_request
    assert "account proof is illegible" in first_request
    assert await run.written(sa.STAGE.name, "contract") == "contract"
    assert await run.search_attribute(sa.REVIEW_ROUND.name) == 3
    assert await run.search_attribute(sa.STAGE_DEADLINE.name) is not None
    await run.save_golden("two_rounds_then_approved")


async def test_review_rounds_exhausted_rejects(bench: Bench) -> None:
    run = await bench.start(max_review_rounds=2)
    await run.submit()
    await run.decide(
        ReviewOutcome.NEEDS_MORE_INFO,
        required_documents=[DocumentKind.PREMISES_PHOTOS],
        reasons=["photos do not show the shop front"],
    )
    await run.until(lambda s: s.round == 2, "round 2")
    await run.submit(
        [d for d in valid_documents(run.app) if d.kind is DocumentKind.PREMISES_PHOTOS]
    )
    await run.decide(
        ReviewOutcome.NEEDS_MORE_INFO,
        required_documents=[DocumentKind.PREMISES_PHOTOS],
        reasons=["photos still unclear"],
    )
    outcome = await run.outcome()

    assert outcome.stage is Stage.REJECTED
    assert "2 review rounds" in outcome.reason and "photos still unclear" in outcome.reason
    assert outcome.compensations == ["close_review_case"]
    assert bench.services.notices()[-1] == Notice.REJECTED
    await run.save_golden("rounds_exhausted")


# --- review --------------------------------------------------------------------------------------


async def test_rejection_ends_with_the_reasons(bench: Bench) -> None:
    run = await bench.start()
    await run.submit()
    await run.decide(ReviewOutcome.REJECTED, reasons=["high-risk business category"])
    outcome = await run.outcome()
    assert outcome.stage is Stage.REJECTED and outcome.reason == "high-risk business category"
    assert outcome.compensations == ["close_review_case"]
    assert bench.services.names() == [
        act.VALIDATE_DOCUMENTS,
        act.OPEN_REVIEW_CASE,
        act.CLOSE_REVIEW_CASE,
    ]
    await run.save_golden("rejected")


async def test_review_sla_escalates_then_flags_at_the_hard_deadline(bench: Bench) -> None:
    run = await bench.start()
    await run.submit()
    status = await run.until(lambda s: s.deadlines.review_sla is not None, "review under way")
    assert status.deadlines.review_sla == status.review.rounds[0].opened_at + 5 * bench.unit
    await bench.sleep(6)
    status = await run.until(lambda s: s.review.rounds[-1].escalations == 1, "first escalation")
    assert status.attention is None
    await bench.sleep(9)
    status = await run.parked()

    assert [r.level for r in bench.services.requests(act.ESCALATE_REVIEW)] == [1, 2]
    # At the SLA and at the deadline the review service was asked for a lost decision first.
    asked = bench.services.requests(act.READ_SERVICE_EVENTS)
    assert [(r.application_id, r.service) for r in asked] == [
        (run.app.application_id, "review")
    ] * 2
    assert status.attention is not None
    assert status.attention.kind is AttentionKind.REVIEW_OVERDUE
    assert await run.search_attribute(sa.NEEDS_ATTENTION.name) is True
    # An admin's retry asks the review service again: still nothing, so it stays flagged.
    assert status.attention.retryable
    await run.admin("retry")
    status = await run.until(
        lambda s: len(run.events(s, "needs_attention")) == 2, "flagged again after the retry"
    )
    assert status.attention is not None and status.stage is Stage.IN_REVIEW
    assert len(bench.services.requests(act.READ_SERVICE_EVENTS)) == 3
    await run.decide(ReviewOutcome.APPROVED)
    status = await run.at(Stage.CONTRACT)
    assert status.attention is None
    await run.save_golden("review_escalated")


async def test_a_site_survey_the_merchant_asks_for_comes_whatever_the_risk(bench: Bench) -> None:
    bench.services.risk = RiskLevel.LOW
    run = await bench.start(
        individual_application(application_id=new_id(), request_site_survey=True)
    )
    await run.submit()
    status = await run.at(Stage.SITE_SURVEY)
    assert status.review.risk_level is RiskLevel.LOW
    await run.survey(passed=True)
    await run.decide(ReviewOutcome.APPROVED)
    status = await run.at(Stage.CONTRACT)
    assert status.review.survey_passed is True
    assert act.REQUEST_SITE_SURVEY in bench.services.names()


async def test_site_survey_comes_before_the_decision(bench: Bench) -> None:
    bench.services.risk = RiskLevel.HIGH
    run = await bench.start()
    await run.submit()
    status = await run.at(Stage.SITE_SURVEY)
    assert status.review.risk_level is RiskLevel.HIGH
    case_id = status.review.case_id
    assert case_id is not None
    # The review service decides only after the survey: a decision that overtakes the survey's
    # result on the way waits for it, then counts.
    early = ReviewDecision(
        decision_id="early", case_id=case_id, round=1, outcome=ReviewOutcome.APPROVED, reviewer="r1"
    )
    pending = await run.handle.start_update(
        PosOnboarding.review_decision, early, wait_for_stage=WorkflowUpdateStage.ACCEPTED
    )
    assert (await run.status()).review.rounds[0].decision_id is None
    await run.survey(passed=True)
    assert not (await pending.result()).duplicate
    status = await run.at(Stage.CONTRACT)
    assert status.review.rounds[0].decision_id == "early"
    assert status.review.survey_passed is True
    assert bench.services.names()[:3] == [
        act.VALIDATE_DOCUMENTS,
        act.OPEN_REVIEW_CASE,
        act.REQUEST_SITE_SURVEY,
    ]
    await run.save_golden("site_survey_passed")


async def test_failed_site_survey_rejects(bench: Bench) -> None:
    bench.services.risk = RiskLevel.HIGH
    run = await bench.start()
    await run.submit()
    status = await run.at(Stage.SITE_SURVEY)
    assert status.review.case_id is not None
    crossing = await run.handle.start_update(
        PosOnboarding.review_decision,
        ReviewDecision(
            decision_id="crossing",
            case_id=status.review.case_id,
            round=1,
            outcome=ReviewOutcome.APPROVED,
            reviewer="r1",
        ),
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
    )
    await run.survey(passed=False)
    # The decision that was waiting for the survey is refused with the real reason.
    assert (await refused(crossing.result())).type in ("OutOfStage", "ApplicationFinished")
    outcome = await run.outcome()
    assert outcome.stage is Stage.REJECTED and "site survey failed" in outcome.reason
    assert outcome.compensations == ["close_review_case"]


# --- contract ------------------------------------------------------------------------------------


async def test_unsigned_contract_expires_and_is_voided(bench: Bench) -> None:
    run = await bench.start(individual_application(application_id=new_id(), channel=Channel.BANK))
    await run.to(Stage.CONTRACT)
    await run.until(lambda s: s.contract.contract_id is not None, "contract issued")
    await run.contract(ContractEventKind.SIGNED)
    await bench.sleep(16)
    outcome = await run.outcome()
    assert outcome.stage is Stage.EXPIRED and "deposit" in outcome.reason
    assert outcome.compensations == ["void_contract", "close_review_case"]
    assert bench.services.notices().count(Notice.CONTRACT_REMINDER) == 2
    await run.save_golden("contract_expired")


# --- withdrawal at every stage -------------------------------------------------------------------

REVIEWED = ["close_review_case"]
CONTRACTED = ["refund_deposit", "void_contract", *REVIEWED]
RESERVED = ["release_terminals", *CONTRACTED]


@pytest.mark.parametrize(
    ("stage", "fulfilment", "prepare", "expected"),
    [
        (Stage.COLLECTING_DOCUMENTS, Fulfilment.MAIL, None, []),
        (Stage.IN_REVIEW, Fulfilment.MAIL, None, REVIEWED),
        (Stage.CONTRACT, Fulfilment.MAIL, None, ["void_contract", *REVIEWED]),
        (Stage.PREPARING_DEVICES, Fulfilment.MAIL, act.REGISTER_TERMINALS, RESERVED),
        (Stage.DELIVERING, Fulfilment.MAIL, None, ["recall_shipment", *RESERVED]),
        (Stage.DELIVERING, Fulfilment.ON_SITE, None, ["cancel_installation", *RESERVED]),
        (Stage.ACTIVATING, Fulfilment.MAIL, None, ["arrange_return", *RESERVED]),
        (
            Stage.TRAINING,
            Fulfilment.ON_SITE,
            None,
            ["cancel_training", "arrange_return", *RESERVED],
        ),
    ],
    ids=[
        "documents",
        "review",
        "contract",
        "devices",
        "shipping",
        "installing",
        "activating",
        "training",
    ],
)
async def test_withdrawal_undoes_exactly_what_was_done(
    bench: Bench, stage: Stage, fulfilment: Fulfilment, prepare: str | None, expected: list[str]
) -> None:
    app = individual_application(
        application_id=new_id(), channel=Channel.BANK, fulfilment=fulfilment
    )
    if prepare:
        bench.services.fail(prepare)  # park the application in this stage
    run = await bench.start(app)
    await run.to(stage)
    if stage is Stage.CONTRACT:
        await run.until(lambda s: s.contract.contract_id is not None, "contract issued")
    if stage is Stage.DELIVERING:
        await run.until(lambda s: (s.shipment or s.installation) is not None, "dispatched")
    if prepare:
        await run.parked()
    ack = await run.cancel()
    assert not ack.duplicate
    outcome = await run.outcome()

    assert outcome.stage is Stage.CANCELLED
    assert outcome.compensations == expected
    assert bench.services.names()[len(bench.services.names()) - len(expected) :] == expected
    assert bench.services.notices()[-1] == Notice.WITHDRAWN
    status = await run.status()
    assert status.withdrawal_reason == "merchant changed their mind"
    await run.save_golden(f"withdrawn_{stage.value}_{fulfilment.value}")


async def test_withdrawal_after_go_live_is_refused(bench: Bench) -> None:
    run = await bench.start()
    await run.to(Stage.LIVE)
    assert (await run.outcome()).stage is Stage.LIVE
    # The workflow has ended: the server itself refuses the update, and nothing changes.
    with pytest.raises((WorkflowUpdateFailedError, RPCError)):
        await run.cancel()
    assert (await run.outcome()).stage is Stage.LIVE
    assert (await run.status()).withdrawal_reason is None


# --- parking and re-driving ----------------------------------------------------------------------


async def test_failing_step_parks_and_retry_re_runs_it(bench: Bench) -> None:
    bench.services.fail(act.RESERVE_TERMINALS)
    run = await bench.start()
    await run.to(Stage.PREPARING_DEVICES)
    status = await run.parked()
    assert status.attention is not None
    assert status.attention.kind is AttentionKind.STEP_FAILED
    assert status.attention.step == act.RESERVE_TERMINALS
    assert "503" in status.attention.reason
    assert await run.search_attribute(sa.NEEDS_ATTENTION.name) is True
    assert (await refused(run.admin("skip"))).type == "NotSkippable"

    await run.admin("retry")  # still failing: parks again
    await run.until(
        lambda s: s.attention is not None and len(run.events(s, "needs_attention")) == 2,
        "parked again",
    )
    bench.services.heal(act.RESERVE_TERMINALS)
    ack = await run.admin("retry", request_id="retry-2")
    assert ack.detail == f"retry {act.RESERVE_TERMINALS}"
    assert (await run.admin("retry", request_id="retry-2")).duplicate
    status = await run.at(Stage.DELIVERING)
    assert status.attention is None and status.mid is not None
    assert await run.written(sa.STAGE.name, "delivering") == "delivering"
    assert await run.search_attribute(sa.NEEDS_ATTENTION.name) is False
    await run.save_golden("parked_then_retried")


async def test_failing_compensation_can_be_skipped_by_an_admin(bench: Bench) -> None:
    bench.services.fail(act.VOID_CONTRACT)
    run = await bench.start()
    await run.to(Stage.CONTRACT)
    await run.until(lambda s: s.contract.contract_id is not None, "contract issued")
    await run.cancel()
    status = await run.parked()
    assert status.stage is Stage.CLOSING
    assert status.attention is not None and status.attention.skippable
    assert (await refused(run.cancel(request_id="cx-again"))).type == "StaleMessage"
    await run.admin("skip")
    outcome = await run.outcome()
    assert outcome.compensations == ["void_contract (skipped by admin)", "close_review_case"]


async def test_failed_delivery_parks_and_retry_ships_again(bench: Bench) -> None:
    run = await bench.start()
    await run.to(Stage.DELIVERING)
    await run.delivery(DeliveryOutcomeKind.FAILED, "parcel refused at the door")
    status = await run.parked()
    assert status.attention is not None
    assert status.attention.kind is AttentionKind.DELIVERY_FAILED
    assert "refused" in status.attention.reason
    await run.admin("retry")
    await run.until(
        lambda s: (
            s.attention is None
            and s.shipment is not None
            and s.shipment.delivered_at is None
            and len(bench.services.requests(act.CREATE_SHIPMENT)) == 2
        ),
        "shipped again",
    )
    keys = [r.idempotency_key for r in bench.services.requests(act.CREATE_SHIPMENT)]
    assert len(set(keys)) == 2
    await run.delivery()
    await run.at(Stage.ACTIVATING)
    await run.save_golden("delivery_failed_then_reshipped")


async def test_overdue_delivery_is_flagged_and_a_late_delivery_still_counts(bench: Bench) -> None:
    run = await bench.start()
    await run.to(Stage.DELIVERING)
    await run.until(lambda s: s.shipment is not None, "shipped")
    await bench.sleep(8)
    status = await run.parked()
    assert status.attention is not None
    assert status.attention.kind is AttentionKind.DELIVERY_OVERDUE
    status = await run.status()
    assert status.shipment is not None
    await run.handle.execute_update(
        PosOnboarding.delivery_outcome,
        DeliveryOutcome(
            event_id="late",
            reference=status.shipment.shipment_id,
            kind=DeliveryOutcomeKind.DELIVERED,
        ),
    )
    status = await run.at(Stage.ACTIVATING)
    assert status.attention is None


async def test_declined_test_transaction_parks_until_retried(bench: Bench) -> None:
    bench.services.declines = 1
    run = await bench.start()
    await run.to(Stage.ACTIVATING)
    await run.activate_all()
    status = await run.parked()
    assert status.attention is not None
    assert status.attention.kind is AttentionKind.TEST_TRANSACTION_DECLINED
    assert "05" in status.attention.reason
    await run.admin("retry")
    status = await run.at(Stage.TRAINING)
    assert all(t.test_transaction for t in status.terminals)


async def test_overdue_activation_and_training_are_flagged_and_reminded(bench: Bench) -> None:
    run = await bench.start()
    await run.to(Stage.ACTIVATING)
    await run.until(lambda s: all(t.activation_code_issued for t in s.terminals), "codes issued")
    await bench.sleep(8)
    status = await run.parked()
    assert status.attention is not None
    assert status.attention.kind is AttentionKind.ACTIVATION_OVERDUE
    assert bench.services.notices().count(Notice.ACTIVATION_REMINDER) == 2
    await run.activate_all()
    await run.at(Stage.TRAINING)
    await run.until(lambda s: s.training_session_id is not None, "training scheduled")
    await bench.sleep(8)
    status = await run.parked()
    assert status.attention is not None
    assert status.attention.kind is AttentionKind.TRAINING_OVERDUE
    assert bench.services.notices().count(Notice.TRAINING_REMINDER) == 1
    await run.train()
    assert (await run.outcome()).stage is Stage.LIVE


# --- duplicates and out-of-stage messages --------------------------------------------------------


async def test_duplicates_are_acknowledged_once_and_out_of_stage_messages_refused(
    bench: Bench,
) -> None:
    run = await bench.start(individual_application(application_id=new_id(), channel=Channel.BANK))
    # A decision before the review: refused, and nothing changes.
    early = ReviewDecision(
        decision_id="d-early",
        case_id="RC-x",
        round=1,
        outcome=ReviewOutcome.APPROVED,
        reviewer="r1",
    )
    error = await refused(run.handle.execute_update(PosOnboarding.review_decision, early))
    assert error.type == "OutOfStage" and "collecting_documents" in error.message
    assert (await run.status()).stage is Stage.COLLECTING_DOCUMENTS

    first = await run.submit(submission_id="sub-1")
    again = await run.submit(submission_id="sub-1")
    assert again.duplicate and again.filed == first.filed
    assert bench.services.names().count(act.VALIDATE_DOCUMENTS) == 1

    ack = await run.decide(
        ReviewOutcome.NEEDS_MORE_INFO,
        decision_id="d-1",
        required_documents=[DocumentKind.PREMISES_PHOTOS],
    )
    status = await run.until(lambda s: s.round == 2, "round 2")
    resent = await run.handle.execute_update(
        PosOnboarding.review_decision,
        ReviewDecision(
            decision_id="d-1",
            case_id=status.review.case_id or "",
            round=1,
            outcome=ReviewOutcome.NEEDS_MORE_INFO,
            required_documents=[DocumentKind.PREMISES_PHOTOS],
            reviewer="reviewer-7",
        ),
    )
    assert resent.duplicate and resent.message_id == ack.message_id
    await run.submit(
        [d for d in valid_documents(run.app) if d.kind is DocumentKind.PREMISES_PHOTOS]
    )
    stale = ReviewDecision(
        decision_id="d-stale",
        case_id=status.review.case_id or "",
        round=1,
        outcome=ReviewOutcome.APPROVED,
        reviewer="r1",
    )
    await run.at(Stage.IN_REVIEW)
    assert (
        await refused(run.handle.execute_update(PosOnboarding.review_decision, stale))
    ).type == "StaleMessage"
    other_case = stale.model_copy(
        update={"decision_id": "d-other", "case_id": "RC-other", "round": 2}
    )
    assert (
        await refused(run.handle.execute_update(PosOnboarding.review_decision, other_case))
    ).type == "UnknownReference"
    await run.decide(ReviewOutcome.APPROVED)
    assert len(run.events(await run.status(), "review_decided")) == 2

    await run.until(lambda s: s.contract.contract_id is not None, "contract issued")
    wrong_amount = await refused(
        run.contract(ContractEventKind.DEPOSIT_PAID, run.policy.deposit_amount / 2)
    )
    assert wrong_amount.type == "InvalidMessage" and "amount" in wrong_amount.message
    assert (await refused(run.admin("retry"))).type == "NotParked"
    assert (await refused(run.submit())).type == "OutOfStage"

    await run.handle.signal(
        PosOnboarding.shipment_scanned,
        ShipmentScan(
            event_id="scan-1",
            shipment_id="SH-unknown",
            location="Shanghai hub",
            scanned_at=(await run.status()).stage_entered_at,
        ),
    )
    status = await run.until(lambda s: bool(run.events(s, "message_refused")), "scan refused")
    assert status.stage is Stage.CONTRACT

    first_cancel = await run.cancel(request_id="cx-1")
    again_cancel = await run.cancel(request_id="cx-1")
    assert again_cancel.duplicate and again_cancel.message_id == first_cancel.message_id
    outcome = await run.outcome()
    assert outcome.stage is Stage.CANCELLED
    assert len(run.events(await run.status(), "withdrawal_requested")) == 1
    await run.save_golden("duplicates_and_refusals")


# --- logs ----------------------------------------------------------------------------------------


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """posflow's logging as JSON lines; the function returns the lines written since its last
    call (the first call configures it: capture swaps stdout between set-up and the test)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def lines() -> list[dict[str, Any]]:
        if root.handlers == handlers:
            configure_logging(json=True)
        out = capsys.readouterr().out
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    yield lines
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


async def test_logs_are_bound_to_the_application_and_its_stage_and_silent_on_replay(
    bench: Bench, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    json_logs()
    run = await bench.start()
    await run.submit()
    await run.at(Stage.IN_REVIEW)
    app_id = run.app.application_id
    lines = json_logs()
    entered = [line for line in lines if line["event"] == "stage_entered"]
    assert [(e["stage"], e["previous_stage"]) for e in entered] == [
        ("collecting_documents", None),
        ("in_review", "collecting_documents"),
    ]
    assert all(
        e["application_id"] == app_id and e["workflow_id"] == f"pos-application-{app_id}"
        for e in entered
    )
    # The document check (a real activity, logging through the SDK's activity logger) carries
    # the stage the workflow was in when it scheduled it.
    checked = [line for line in lines if line.get("activity") == act.VALIDATE_DOCUMENTS]
    assert checked and all(
        c["stage"] == "collecting_documents" and c["application_id"] == app_id for c in checked
    )
    # Personal numbers never reach the log, whichever logger wrote the line.
    text = json.dumps(lines, ensure_ascii=False)
    assert run.app.legal_representative.id_number not in text
    assert run.app.settlement_account.account_number not in text

    # Replaying the same history (as a worker does after a restart) logs nothing again.
    history = await run.handle.fetch_history()
    result = await build_replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None
    assert [line for line in json_logs() if line["event"] == "stage_entered"] == []


async def test_an_overdue_activation_is_extended_and_completes(bench: Bench) -> None:
    run = await bench.start()
    await run.to(Stage.ACTIVATING)
    await run.until(lambda s: all(t.activation_code_issued for t in s.terminals), "codes issued")
    await bench.sleep(8)
    status = await run.parked()
    assert status.attention is not None and status.attention.extendable
    # Only an overdue wait can be extended: a retry asks the device service again instead.
    await run.admin("extend", period=timedelta(days=3))
    status = await run.until(lambda s: s.attention is None, "extended")
    assert status.deadlines.stage_deadline is not None
    assert [e.kind for e in status.timeline][-2:] == ["attention_cleared", "deadline_extended"]
    extended_to = status.deadlines.stage_deadline
    assert extended_to - status.timeline[-1].at == timedelta(days=3)
    await run.activate_all()
    await run.at(Stage.TRAINING)


async def test_an_extension_that_runs_out_flags_the_case_again(bench: Bench) -> None:
    run = await bench.start()
    await run.to(Stage.ACTIVATING)
    await run.until(lambda s: all(t.activation_code_issued for t in s.terminals), "codes issued")
    await bench.sleep(8)
    await run.parked()
    await run.admin("extend")  # the stage's own period from the policy: 7 days
    await run.until(lambda s: s.attention is None, "extended")
    await bench.sleep(8)
    status = await run.parked()
    assert status.attention is not None
    assert "after the extension" in status.attention.reason
    # A parked failing step cannot be extended.
    assert (await refused(run.admin("skip"))).type == "NotSkippable"
