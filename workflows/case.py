"""The record one onboarding workflow keeps of its application, and the rules for messages to it.

Everything here is deterministic and free of I/O: the workflow module passes it through the
sandbox, so it is imported once per worker rather than once per workflow run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

from activities import catalog
from activities.documents import required_documents_v1
from schemas.documents import Document, DocumentKind, FieldIssue
from schemas.messages import (
    Ack,
    AdminAction,
    CancelRequest,
    ContractEvent,
    ContractEventKind,
    DeliveryOutcome,
    Refusal,
    ReviewDecision,
    ReviewOutcome,
    ShipmentScan,
    SiteSurveyResult,
    TerminalActivated,
    TrainingCompleted,
    message_id,
)
from schemas.status import (
    ApplicationStatus,
    Attention,
    AttentionKind,
    ContractState,
    Deadlines,
    DocumentState,
    Installation,
    OnboardingStart,
    PickUp,
    Projection,
    ProjectionReceipt,
    ReviewRound,
    ReviewState,
    Shipment,
    Stage,
    StageVisit,
    Terminal,
    TimelineEvent,
)
from workflows import search_attributes as sa

# Workflows started before the gateway's projection existed replay without sending snapshots.
PROJECTION_PATCH = "project-status-to-gateway"
# Workflows started before these changes replay as they ran; each marker is written only where
# the new behaviour differs: a deadline reads the service back, a withdrawal accepted during a
# step stops right after it, an escalation is best effort, a refused recall becomes a return.
PULL_PATCH = "pull-service-on-deadline"
CHECKPOINT_PATCH = "stop-after-step-when-withdrawn"
BEST_EFFORT_PATCH = "best-effort-escalation"
RETURN_PATCH = "return-when-recall-refused"
# At go-live the merchant is handed over to its MerchantAccount workflow (after go-live).
HANDOVER_PATCH = "hand-over-to-merchant-account"
# Review deadlines in working days on the mainland calendar, where the channel counts them so.
WORKING_DAYS_PATCH = "review-deadlines-in-working-days"
# The notices that tell the merchant what to do next: the contract with its signing link (in
# place of the bare approval), the installation, pick-up and training appointments, the
# activation codes, and what was wrong with a submission.
NOTICES_PATCH = "notices-with-next-steps"
# The gateway's snapshot rides with the next step the workflow starts (`Step.then_project`), the
# worker delivering it as that activity starts; only a snapshot no step carries goes alone. The
# search attributes that changed meanwhile are written in one upsert when the workflow next waits
# for the world (a message, a deadline) rather than at each change.
SNAPSHOT_RIDES_PATCH = "snapshots-ride-with-steps"


def china_time(moment: datetime) -> str:
    """A moment as merchants read it in a notice: China time, to the minute."""
    return moment.astimezone(CHINA).strftime("%Y-%m-%d %H:%M")


# The logistics service's refusal to recall a parcel already delivered.
SHIPMENT_DELIVERED = "shipment_delivered"

# How often a snapshot is tried before it is given up (about half an hour at the default policy).
PROJECTION_ATTEMPTS = 30

# China has no daylight saving time: a fixed offset gives the merchant's calendar date.
CHINA = timezone(timedelta(hours=8), "CST")

# Stages in which a withdrawal is still possible (go-live is the point of no return).
WITHDRAWABLE = frozenset(
    {
        Stage.COLLECTING_DOCUMENTS,
        Stage.SITE_SURVEY,
        Stage.IN_REVIEW,
        Stage.CONTRACT,
        Stage.PREPARING_DEVICES,
        Stage.DELIVERING,
        Stage.ACTIVATING,
        Stage.TRAINING,
    }
)


Message = TypeVar("Message", bound=BaseModel)


async def receive(
    message: Message,
    check: Callable[[Message], bool],
    apply: Callable[[Message], Ack],
    duplicate: Callable[[str], Ack | None],
) -> Ack:
    """One rule for every message, in both workflows: a duplicate is acknowledged (`duplicate`
    answers the earlier ack); one that refers to something a step is still creating (`check`
    says True) waits here until the step has recorded it; then it is applied, or refused with the
    real reason (`check` raises it)."""
    key = message_id(message)
    if (ack := duplicate(key)) is not None:
        return ack
    if check(message):
        await workflow.wait_condition(
            lambda: duplicate(key) is not None or not still_waiting(lambda: check(message))
        )
        if (ack := duplicate(key)) is not None:
            return ack
        check(message)  # raises the refusal, if that is how it turned out
    return apply(message)


def still_waiting(check: Callable[[], bool]) -> bool:
    """Whether a pending message must still wait (a refusal stops the wait: it is final)."""
    try:
        return check()
    except ApplicationError:
        return False


def innermost(err: BaseException) -> BaseException:
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return cause


def failure_reason(err: ActivityError) -> str:
    """The innermost failure message: what the service or the retry policy said."""
    cause = innermost(err)
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'error'}: {cause.message}"
    return str(cause)


def refuse(kind: Refusal, message: str) -> ApplicationError:
    """A refusal the caller sees; it names the rule and never carries personal data."""
    return ApplicationError(message, type=kind.value, non_retryable=True)


class Ended(Exception):
    """The application ends before go-live: withdrawn, expired or rejected."""

    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


@dataclass
class Undo:
    """One compensation, run in reverse order of the steps that made it necessary."""

    label: str
    run: Callable[[], Awaitable[None]]


@dataclass
class Case:
    start: OnboardingStart
    stage: Stage = Stage.COLLECTING_DOCUMENTS
    round: int = 1
    stage_entered_at: datetime = field(default_factory=workflow.now)
    started_at: datetime = field(default_factory=workflow.now)
    deadlines: Deadlines = field(default_factory=Deadlines)
    documents: dict[DocumentKind, Document] = field(default_factory=dict)
    requested_documents: list[DocumentKind] = field(default_factory=list)
    requested_reasons: list[str] = field(default_factory=list)  # the reviewer's, for the notice
    document_issues: list[FieldIssue] = field(default_factory=list)
    review: ReviewState = field(default_factory=ReviewState)
    decision: ReviewDecision | None = None
    survey: SiteSurveyResult | None = None
    contract: ContractState = field(default_factory=ContractState)
    reservation_id: str | None = None
    mid: str | None = None
    terminals: dict[str, Terminal] = field(default_factory=dict)
    shipment: Shipment | None = None
    installation: Installation | None = None
    pick_up: PickUp | None = None
    delivery: DeliveryOutcome | None = None
    past_deliveries: list[str] = field(default_factory=list)  # shipments/appointments replaced
    training_session_id: str | None = None
    training: TrainingCompleted | None = None
    attention: Attention | None = None
    admin_verb: str | None = None
    extension: timedelta | None = None  # the period an admin's `extend` asked for
    cancel: CancelRequest | None = None
    closing: bool = False
    ending_reason: str = ""
    timeline: list[TimelineEvent] = field(default_factory=list)
    stage_entered: dict[str, datetime] = field(default_factory=dict)
    acks: dict[str, Ack] = field(default_factory=dict)
    # Steps still creating what a message may refer to (a review case, a contract, a shipment...):
    # a message for it is accepted as pending and applied once the step has recorded it.
    creating: set[str] = field(default_factory=set)
    undo: list[Undo] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    notices_sent: int = 0
    _published: dict[str, Any] = field(default_factory=dict)
    _projected: Projection | None = None
    projections: list[workflow.ActivityHandle[ProjectionReceipt]] = field(default_factory=list)
    # The newest snapshot, not yet on its way: the next step started carries it, else the
    # projector (`PosOnboarding.projector`) sends it alone before the workflow waits.
    unsent: Projection | None = None
    # Snapshots riding with steps still running, by version.
    riding: set[int] = field(default_factory=set)
    sent_alone: int = 0  # the newest version sent as an activity of its own
    # Search attributes changed and not yet written, by name: written in one upsert when the
    # workflow next waits with no step running (`write_attributes`).
    pending_attributes: dict[str, SearchAttributeUpdate[Any]] = field(default_factory=dict)
    stepping: int = 0  # activities started by `PosOnboarding.execute` and not yet done

    # --- the record ---------------------------------------------------------------------------

    @property
    def app_id(self) -> str:
        return self.start.application.application_id

    @property
    def workflow_id(self) -> str:
        return self.start.application.workflow_id

    def key(self, step: str, *discriminators: object) -> str:
        """An idempotency key for a step: the same step of the same application, the same key."""
        return ":".join([self.workflow_id, step, *(str(d) for d in discriminators)])

    def event(self, kind: str, detail: str = "", /, **data: Any) -> None:
        self.timeline.append(
            TimelineEvent(at=workflow.now(), stage=self.stage, kind=kind, detail=detail, data=data)
        )

    def enter(self, stage: Stage, deadline: datetime | None = None) -> None:
        previous = self.stage if self.stage_entered else None  # None: the application's start
        stayed = workflow.now() - self.stage_entered_at
        self.stage = stage
        self.stage_entered_at = workflow.now()
        self.stage_entered.setdefault(stage.value, self.stage_entered_at)
        self.deadlines = Deadlines(stage_deadline=deadline)
        self.event(
            "stage_entered", stage.value, deadline=deadline.isoformat() if deadline else None
        )
        self.publish()
        self.report_stage_change(previous, stayed)

    def report_stage_change(self, previous: Stage | None, stayed: timedelta) -> None:
        """The worker's metrics (transitions, time in stage) and a log line. The SDK's meter and
        logger both stay silent while the workflow replays, so each change is counted once."""
        channel = self.start.application.channel.value
        meter = workflow.metric_meter()
        meter.create_counter(
            "posflow_stage_transitions", "Applications entering a stage, by the stage they left"
        ).add(
            1,
            {
                "from_stage": previous.value if previous else "start",
                "to_stage": self.stage.value,
                "channel": channel,
            },
        )
        if previous is not None:
            meter.create_histogram_timedelta(
                "posflow_time_in_stage_seconds", "How long applications stayed in a stage", "s"
            ).record(stayed, {"stage": previous.value, "channel": channel})
        self.log(
            logging.INFO,
            "stage_entered",
            previous_stage=previous.value if previous else None,
            stayed_seconds=round(stayed.total_seconds(), 3) if previous else None,
            deadline=self.deadlines.stage_deadline.isoformat()
            if self.deadlines.stage_deadline
            else None,
        )

    def log(self, level: int, event: str, **fields: Any) -> None:
        """A replay-safe log line bound with the application and its stage (the SDK's logger adds
        the workflow and run ids)."""
        workflow.logger.log(
            level, event, extra={"application_id": self.app_id, "stage": self.stage.value, **fields}
        )

    def set_deadline(self, deadline: datetime) -> datetime:
        self.deadlines.stage_deadline = deadline
        self.publish()
        return deadline

    @property
    def withdrawn(self) -> bool:
        return self.cancel is not None and not self.closing

    def stop_if_withdrawn(self) -> None:
        """Checked before every step and after every wait, so a withdrawal stops the process."""
        if self.withdrawn:
            assert self.cancel is not None
            raise Ended(
                Stage.CANCELLED, f"withdrawn by {self.cancel.requested_by}: {self.cancel.reason}"
            )

    @property
    def lean(self) -> bool:
        """Snapshots ride with steps and search attributes are written once per wait."""
        return workflow.patched(SNAPSHOT_RIDES_PATCH)

    def publish(self) -> None:
        """Upsert the search attributes operators filter on, only those that changed, and send
        the gateway its snapshot (`project`). Both wait for the workflow's next wait (`lean`):
        the snapshot rides with the next step, the attributes are written together then.
        While a step runs (and retries, until it is parked), the search attributes still show
        the stage before it; the gateway's pages have the snapshot at once."""
        wanted: dict[str, Any] = {
            sa.STAGE.name: self.stage.value,
            sa.CHANNEL.name: self.start.application.channel.value,
            sa.MERCHANT_TYPE.name: self.start.application.merchant.merchant_type.value,
            sa.REVIEW_ROUND.name: self.round,
            sa.NEEDS_ATTENTION.name: self.attention is not None,
            sa.STAGE_DEADLINE.name: self.deadlines.stage_deadline,
        }
        updates: list[SearchAttributeUpdate[Any]] = []
        for key in sa.ALL:
            value = wanted[key.name]
            if key.name in self._published and self._published[key.name] == value:
                continue
            updates.append(key.value_unset() if value is None else key.value_set(value))
            self._published[key.name] = value
        if updates and self.lean:
            self.pending_attributes.update({u.key.name: u for u in updates})
        elif updates:
            workflow.upsert_search_attributes(updates)
        self.project()

    def write_attributes(self) -> None:
        """The search attributes changed since the last wait, in one upsert."""
        if self.pending_attributes:
            workflow.upsert_search_attributes(list(self.pending_attributes.values()))
            self.pending_attributes = {}

    def projection(self, version: int) -> Projection:
        app = self.start.application
        return Projection(
            application_id=app.application_id,
            workflow_id=app.workflow_id,
            version=version,
            run_id=workflow.info().run_id,
            channel=app.channel.value,
            merchant_type=app.merchant.merchant_type.value,
            merchant_name=app.merchant.name,
            fulfilment=app.fulfilment.value,
            stage=self.stage,
            stage_entered_at=self.stage_entered_at,
            stage_deadline=self.deadlines.stage_deadline,
            review_round=self.round,
            attention=self.attention,
            mid=self.mid,
            started_at=self.started_at,
            ended_at=self.stage_entered_at if self.stage.finished else None,
            outcome_reason=self.ending_reason if self.stage.finished else "",
            visits=[
                StageVisit(stage=Stage(e.detail), entered_at=e.at)
                for e in self.timeline
                if e.kind == "stage_entered"
            ],
        )

    def project(self) -> None:
        """Send the gateway's list pages a snapshot when what they show has changed: from the
        same place as the search attributes, so the two cannot tell different stories."""
        if not workflow.patched(PROJECTION_PATCH):
            return
        previous = self._projected
        snapshot = self.projection(previous.version + 1 if previous else 1)
        if (
            previous is not None
            and previous.model_copy(update={"version": snapshot.version}) == snapshot
        ):
            return
        self._projected = snapshot
        if self.lean:
            self.unsent = snapshot
            return
        self.send_alone(snapshot)

    def send_alone(self, snapshot: Projection) -> None:
        """The snapshot as an activity of its own (`project_status`)."""
        self.sent_alone = max(self.sent_alone, snapshot.version)
        policy = self.start.policy
        self.projections = [h for h in self.projections if not h.done()]
        handle = workflow.start_activity(
            catalog.PROJECT_STATUS,
            snapshot,
            result_type=ProjectionReceipt,
            start_to_close_timeout=policy.activity_timeout,
            # Bounded: a gateway that is down or refuses the worker's signature must not keep
            # a finishing workflow open; the next snapshot carries the whole state anyway.
            retry_policy=RetryPolicy(
                initial_interval=policy.activity_retry_interval,
                maximum_interval=policy.activity_retry_max_interval,
                maximum_attempts=PROJECTION_ATTEMPTS,
            ),
            summary=f"project {self.stage.value}",
        )
        handle.add_done_callback(self._projection_done)
        self.projections.append(handle)

    def send_unsent(self) -> None:
        if self.unsent is not None:
            snapshot, self.unsent = self.unsent, None
            self.send_alone(snapshot)

    def carry(self, arg: Any, result_type: type[Any]) -> tuple[Any, Projection | None]:
        """The step's input with the unsent snapshot riding on it, when the step can carry one
        (a `Step` whose result says `projected`)."""
        snapshot = self.unsent
        if (
            snapshot is None
            or "then_project" not in getattr(type(arg), "model_fields", {})
            or "projected" not in getattr(result_type, "model_fields", {})
        ):
            return arg, None
        self.unsent = None
        self.riding.add(snapshot.version)
        return arg.model_copy(update={"then_project": snapshot}), snapshot

    def carried(self, snapshot: Projection | None, result: Any) -> None:
        """After a step that carried a snapshot: when it did not reach the gateway (the step
        failed or was cancelled, or the worker could not deliver it), the newest snapshot is
        unsent again, unless a newer one is already unsent, riding or sent. Only the record
        changes here (the projector or the next step sends it): this also runs when a workflow
        evicted from the cache is torn down."""
        if snapshot is None:
            return
        self.riding.discard(snapshot.version)
        if getattr(result, "projected", False):
            return
        newest = self._projected
        if (
            self.unsent is None
            and newest is not None
            and newest.version not in self.riding
            and newest.version > self.sent_alone
        ):
            self.unsent = newest

    def _projection_done(self, handle: workflow.ActivityHandle[ProjectionReceipt]) -> None:
        """A snapshot given up on is logged, never raised: the list pages catch up on the next."""
        if not handle.cancelled() and (error := handle.exception()) is not None:
            self.log(logging.WARNING, "projection_given_up", error=str(error))

    def projected(self) -> bool:
        """Every snapshot delivered: the workflow may end."""
        return (
            self.unsent is None
            and not self.pending_attributes
            and not self.riding
            and all(h.done() for h in self.projections)
        )

    def outstanding(self) -> list[DocumentKind]:
        needed = {*self.required_at_start, *self.requested_documents}
        return [kind for kind in DocumentKind if kind in needed and kind not in self.documents]

    @property
    def required_at_start(self) -> list[DocumentKind]:
        """The documents the application needs, as the rules stood when it was submitted."""
        captured = self.start.required_documents
        if captured is not None:
            return captured
        return required_documents_v1(self.start.application)

    def status(self) -> ApplicationStatus:
        app = self.start.application
        return ApplicationStatus(
            application_id=app.application_id,
            workflow_id=app.workflow_id,
            channel=app.channel.value,
            merchant_type=app.merchant.merchant_type.value,
            merchant_name=app.merchant.name,
            fulfilment=app.fulfilment.value,
            stage=self.stage,
            round=self.round,
            stage_entered_at=self.stage_entered_at,
            deadlines=self.deadlines,
            documents=DocumentState(
                on_file=sorted(self.documents, key=list(DocumentKind).index),
                outstanding=self.outstanding() if not self.stage.finished else [],
                issues=self.document_issues,
                requested_by_review=self.requested_documents,
            ),
            review=self.review,
            contract=self.contract,
            reservation_id=self.reservation_id,
            mid=self.mid,
            terminals=list(self.terminals.values()),
            shipment=self.shipment,
            installation=self.installation,
            pick_up=self.pick_up,
            training_session_id=self.training_session_id,
            attention=self.attention,
            withdrawal_reason=self.cancel.reason if self.cancel else None,
            timeline=self.timeline,
        )

    @property
    def current_round(self) -> ReviewRound:
        return self.review.rounds[-1]

    @property
    def contract_done(self) -> bool:
        paid = self.contract.deposit_paid_at is not None or not self.start.policy.deposit_due
        return self.contract.signed_at is not None and paid

    @property
    def all_activated(self) -> bool:
        return all(t.activated_at is not None for t in self.terminals.values())

    # --- messages: duplicates first, then the stage, then the references ----------------------

    def duplicate(self, message_id: str) -> Ack | None:
        ack = self.acks.get(message_id)
        return ack.model_copy(update={"duplicate": True}) if ack else None

    def acknowledge(self, message_id: str, detail: str) -> Ack:
        ack = Ack(message_id=message_id, stage=self.stage.value, detail=detail, at=workflow.now())
        self.acks[message_id] = ack
        return ack

    def expect_stage(self, message: str, *stages: Stage) -> None:
        if self.stage not in stages:
            wanted = " or ".join(s.value for s in stages)
            raise refuse(
                Refusal.FINISHED if self.stage.finished else Refusal.OUT_OF_STAGE,
                f"{message} is accepted only in stage {wanted}; "
                f"application {self.app_id} is in stage {self.stage.value}",
            )

    # Each check below answers for one message: False, it can be applied now; True, it refers to
    # something a step is still creating (accepted as pending: the handler waits and checks
    # again); or it raises the refusal. Validators and handlers both call it, and so does the
    # workflow for a message it reads back from a service (push, then pull).

    @contextmanager
    def step_creating(self, what: str) -> Iterator[None]:
        """Mark a reference as being created while its step runs (and while it is parked)."""
        self.creating.add(what)
        try:
            yield
        finally:
            self.creating.discard(what)

    @property
    def current_case_id(self) -> str | None:
        """The review case of this round, once it is opened."""
        if self.review.rounds and self.review.rounds[-1].round == self.round:
            return self.review.rounds[-1].case_id
        return None

    def check_decision(self, decision: ReviewDecision) -> bool:
        if decision.round < self.round:
            raise refuse(
                Refusal.STALE,
                f"decision {decision.decision_id} is for review round {decision.round}; "
                f"the application is in round {self.round}",
            )
        if self.stage is Stage.SITE_SURVEY and decision.round == self.round:
            # The review service decides a high-risk case only once its survey is done, so a
            # decision now has crossed the survey's result on the way: it waits for it (and is
            # refused if the survey fails).
            if decision.case_id != self.current_case_id:
                raise refuse(
                    Refusal.UNKNOWN_REFERENCE,
                    f"review case {decision.case_id} is not this application's",
                )
            return True
        self.expect_stage("a review decision", Stage.IN_REVIEW)
        if decision.round > self.round:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE,
                f"review round {decision.round} has not started; the application is in round "
                f"{self.round}",
            )
        if "review_case" in self.creating:
            return True
        if decision.case_id != self.current_case_id:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE,
                f"review case {decision.case_id} is not this application's",
            )
        if self.decision is not None:
            raise refuse(
                Refusal.STALE,
                f"round {self.round} already has decision {self.decision.decision_id}",
            )
        return False

    def check_survey(self, result: SiteSurveyResult) -> bool:
        self.expect_stage("a site survey result", Stage.SITE_SURVEY)
        if "survey" in self.creating:
            return True
        if result.survey_id != self.review.survey_id:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE,
                f"site survey {result.survey_id} is not this application's",
            )
        if self.survey is not None:
            raise refuse(Refusal.STALE, f"site survey {result.survey_id} already has a result")
        return False

    def check_contract_event(self, event: ContractEvent) -> bool:
        policy = self.start.policy
        late_payment = (
            self.closing
            and event.kind is ContractEventKind.DEPOSIT_PAID
            and self.contract.contract_id is not None
        )
        if not late_payment:
            # A deposit paid while the application closes is taken, and refunded: money comes back.
            self.expect_stage("a contract event", Stage.CONTRACT)
            if "contract" in self.creating:
                return True
        if event.contract_id != self.contract.contract_id:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE, f"contract {event.contract_id} is not this application's"
            )
        if event.kind is ContractEventKind.SIGNED and self.contract.signed_at is not None:
            raise refuse(Refusal.STALE, "the contract is already signed")
        if event.kind is ContractEventKind.DEPOSIT_PAID:
            due = policy.deposit_amount
            if not policy.deposit_due:
                raise refuse(Refusal.INVALID, "no deposit is due under this application's policy")
            if self.contract.deposit_paid_at is not None:
                raise refuse(Refusal.STALE, "the deposit is already paid")
            if event.amount != due:
                raise refuse(
                    Refusal.INVALID, f"amount: the deposit due is {due}, not {event.amount}"
                )
        return False

    def check_delivery(self, outcome: DeliveryOutcome) -> bool:
        self.expect_stage("a delivery outcome", Stage.DELIVERING)
        if outcome.reference in self.past_deliveries:
            raise refuse(
                Refusal.STALE,
                f"{outcome.reference} belongs to an earlier delivery attempt, since replaced",
            )
        if "dispatch" in self.creating:
            return True
        if outcome.reference != self.delivery_reference:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE,
                f"{outcome.reference} is not the application's current shipment or appointment",
            )
        if self.delivery is not None:
            raise refuse(
                Refusal.STALE, f"the delivery outcome is already {self.delivery.kind.value}"
            )
        return False

    @property
    def delivery_reference(self) -> str | None:
        if self.shipment is not None:
            return self.shipment.shipment_id
        if self.pick_up is not None:
            return self.pick_up.pickup_id
        return self.installation.appointment_id if self.installation else None

    def check_activation(self, report: TerminalActivated) -> bool:
        self.expect_stage("an activation report", Stage.ACTIVATING)
        terminal = self.terminals.get(report.serial)
        if terminal is None:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE, f"terminal {report.serial} is not this application's"
            )
        if terminal.tid != report.tid:
            raise refuse(
                Refusal.INVALID,
                f"tid: terminal {report.serial} is registered as {terminal.tid}, not {report.tid}",
            )
        if "activation_codes" in self.creating:
            return True
        if not terminal.activation_code_issued:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE,
                f"terminal {report.serial} has no activation code for this application",
            )
        if terminal.activated_at is not None:
            raise refuse(Refusal.STALE, f"terminal {report.serial} is already activated")
        return False

    def check_training(self, done: TrainingCompleted) -> bool:
        self.expect_stage("a training completion", Stage.TRAINING)
        if "training" in self.creating:
            return True
        if done.session_id != self.training_session_id:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE,
                f"training session {done.session_id} is not this application's",
            )
        if self.training is not None:
            raise refuse(Refusal.STALE, f"training session {done.session_id} is already complete")
        return False

    def check_scan(self, scan: ShipmentScan) -> bool:
        if "dispatch" in self.creating and not self.stage.finished:
            return True
        if self.shipment is None or self.shipment.shipment_id != scan.shipment_id:
            raise refuse(Refusal.UNKNOWN_REFERENCE, f"scan for unknown shipment {scan.shipment_id}")
        return False

    def check_cancel(self, request: CancelRequest) -> None:
        if self.cancel is not None:
            raise refuse(
                Refusal.STALE,
                f"the application is already being withdrawn ({self.cancel.request_id})",
            )
        if self.stage not in WITHDRAWABLE:
            raise refuse(
                Refusal.FINISHED if self.stage.finished else Refusal.OUT_OF_STAGE,
                f"an application in stage {self.stage.value} can no longer be withdrawn",
            )

    def check_admin(self, verb: str, action: AdminAction) -> None:
        if self.attention is None or self.admin_verb is not None:
            raise refuse(Refusal.NOT_PARKED, f"nothing to {verb}: the application is not parked")
        if verb == "retry" and not self.attention.retryable:
            raise refuse(
                Refusal.NOT_PARKED,
                f"nothing to retry: the application waits on others ({self.attention.kind.value})",
            )
        if verb == "skip" and not self.attention.skippable:
            raise refuse(
                Refusal.NOT_SKIPPABLE, f"step {self.attention.step} cannot be skipped safely"
            )
        if verb == "extend" and not self.attention.extendable:
            raise refuse(
                Refusal.NOT_PARKED,
                f"nothing to extend: {self.attention.kind.value} is not a wait past a deadline",
            )

    def park(
        self,
        kind: AttentionKind,
        step: str,
        reason: str,
        *,
        retryable: bool,
        skippable: bool = False,
        extendable: bool = False,
    ) -> None:
        self.attention = Attention(
            kind=kind,
            step=step,
            reason=reason,
            since=workflow.now(),
            retryable=retryable,
            skippable=skippable,
            extendable=extendable,
        )
        self.admin_verb = None
        self.event("needs_attention", f"{step}: {reason}", attention=kind.value, step=step)
        self.publish()
        self.log(logging.WARNING, "needs_attention", kind=kind.value, step=step, reason=reason)

    def unpark(self, how: str) -> None:
        self.attention = None
        self.admin_verb = None
        self.event("attention_cleared", how)
        self.publish()
        self.log(logging.INFO, "attention_cleared", how=how)

    def decision_recorded(self, decision: ReviewDecision) -> None:
        self.decision = decision
        self.current_round.decision_id = decision.decision_id
        self.current_round.outcome = decision.outcome
        self.current_round.reviewer = decision.reviewer
        self.current_round.reasons = decision.reasons
        self.current_round.required_documents = decision.required_documents
        self.current_round.decided_at = workflow.now()
        self.event(
            "review_decided", decision.outcome.value, round=self.round, reviewer=decision.reviewer
        )

    @property
    def approved(self) -> bool:
        return self.decision is not None and self.decision.outcome is ReviewOutcome.APPROVED
