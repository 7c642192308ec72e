"""The bodies the gateway's API takes and answers that are its own (the messages themselves are
`schemas.messages`), so the OpenAPI description carries every shape."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.limits import APPLICATION_ID_RULE
from schemas.application import Application, RequiredNote
from schemas.policy import PolicyOverrides
from schemas.status import Stage


def new_application_id() -> str:
    return f"A{uuid.uuid4().hex[:16].upper()}"


class StartRequest(Application):
    """An application to start. `application_id` makes a retry idempotent (generated when
    absent); `policy` overrides the channel's timings, within bounds, and needs the admin role."""

    application_id: str = Field(default_factory=new_application_id, pattern=APPLICATION_ID_RULE)
    policy: PolicyOverrides | None = None

    def application(self) -> Application:
        return Application.model_validate(
            {name: getattr(self, name) for name in Application.model_fields}
        )


class Started(BaseModel):
    application_id: str
    workflow_id: str
    stage: str
    created: bool = Field(description="false: this application was started before (a retry)")


class Receipt(BaseModel):
    """A message applied by its workflow, or recognised as one it had (`duplicate`)."""

    outcome: Literal["applied", "duplicate"]
    message_id: str
    duplicate: bool = False
    stage: str
    detail: str = ""
    at: datetime | None = None


class PendingReceipt(BaseModel):
    """Accepted by the workflow, applied as soon as the step it refers to is recorded: do not
    send it again; its final outcome appears in the application's messages."""

    outcome: Literal["pending"]
    message_id: str
    detail: str


class ProjectionReceived(BaseModel):
    applied: bool = Field(description="false: the gateway held a newer snapshot already")
    version: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"


# --- the admin API ---------------------------------------------------------------------------

Reason = Annotated[
    RequiredNote,
    Field(min_length=1, max_length=500, description="why: kept in the audit trail with who"),
]
RequestId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=80,
        description="the action's id: sent again, it is answered `duplicate`, never done twice",
    ),
]


class AdminAction(BaseModel):
    """An admin's action on one application (`retry`, `skip`, `withdraw`): its id and why. Who
    takes it is the credential's role, never a name the body gives.

    Bodies from before reasons were required are taken: their `note` is the reason, their
    self-declared `admin` is dropped."""

    model_config = ConfigDict(extra="forbid")

    request_id: RequestId
    reason: Reason

    @model_validator(mode="before")
    @classmethod
    def _earlier_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("note" in data or "admin" in data):
            data = dict(data)
            note = data.pop("note", None)
            data.pop("admin", None)
            if "reason" not in data and isinstance(note, str) and note.strip():
                data["reason"] = note
        return data


class ExtendRequest(AdminAction):
    """`extend`: another period for the overdue wait the application is parked on."""

    period: timedelta | None = Field(
        default=None,
        gt=timedelta(0),
        le=timedelta(days=180),
        description="the new period from now, ISO 8601 (e.g. P3D); the stage's own when absent",
    )


class ResetRequest(BaseModel):
    """`reset`: run the application's workflow again from the start of `to_stage` (Temporal's
    reset of its latest run); what came before that stage is kept."""

    model_config = ConfigDict(extra="forbid")

    request_id: RequestId
    to_stage: Stage
    reason: Reason


class ResetReceipt(BaseModel):
    """A reset done (or recognised as done before: `duplicate`). The workflow id stays; the
    gateway follows the new run."""

    outcome: Literal["applied", "duplicate"]
    request_id: str
    workflow_id: str
    old_run_id: str
    new_run_id: str
    stage: Stage
    workflow_task_event_id: int = Field(description="the reset point: the task that entered it")
    entered_event_id: int = Field(description="the search-attribute upsert that entered it")
    entered_at: datetime | None = None


class StageEntry(BaseModel):
    stage: Stage
    entered_event_id: int
    workflow_task_event_id: int
    entered_at: datetime | None = None


class ResetPointView(BaseModel):
    """Where a reset to `stage` would take the latest run (nothing is changed by reading it)."""

    workflow_id: str
    run_id: str
    status: str = Field(description="the latest run's status: Running, Failed, Terminated...")
    stage: Stage
    workflow_task_event_id: int
    entered_event_id: int
    entered_at: datetime | None = None
    entries: list[StageEntry] = Field(description="every entry into a stage, oldest first")


FailureKind = Literal["needs_attention", "overdue", "failed"]


class Failure(BaseModel):
    """One application that needs an admin: parked (`needs_attention`), past its stage deadline
    (`overdue`), or whose workflow failed, timed out or was terminated (`failed`)."""

    application_id: str
    workflow_id: str
    kind: FailureKind
    attention: str | None = Field(
        default=None, description="why it is parked (step_failed, activation_overdue...)"
    )
    step: str = Field(default="", description="the step it is parked on")
    reason: str = ""
    since: datetime | None = Field(
        default=None, description="parked since, overdue since (the deadline) or closed at"
    )
    stage: str = ""
    channel: str = ""
    merchant_name: str = ""
    stage_deadline: datetime | None = None
    overdue: bool = False
    run_id: str | None = Field(default=None, description="failed: the run that failed")
    status: str = Field(default="Running", description="the workflow's status")
    actions: list[str] = Field(
        default_factory=list,
        description="what an admin may do: retry, skip, extend, withdraw, reset",
    )


class FailureList(BaseModel):
    total: int = Field(description="how many match in all")
    offset: int
    limit: int
    failures: list[Failure]
    complete: bool = Field(
        default=True, description="false: part of the list could not be read (see problems)"
    )
    problems: list[str] = Field(default_factory=list)


# --- merchants after go-live -------------------------------------------------------------------


class MerchantSummary(BaseModel):
    """A merchant as the list shows it, from the gateway's store (the workflow's last snapshot).
    Money is in yuan, as text with two places."""

    mid: str
    workflow_id: str
    application_id: str
    run_id: str = ""
    channel: str
    merchant_type: str
    merchant_name: str
    state: str = Field(description="active, suspended, closing or closed")
    suspensions: list[str] = Field(description="why acquiring is off: fees, inspection")
    suspended_since: datetime | None = None
    fees_due: str = Field(examples=["1200.00"], description="issued and unpaid")
    fees_overdue: str = Field(examples=["0.00"], description="unpaid past the due date")
    next_bill_at: datetime | None = None
    next_inspection_at: datetime | None = None
    terminals: int = Field(description="terminals in service or on their way")
    needs_attention: bool
    attention_kind: str = ""
    attention_reason: str = ""
    attention_since: datetime | None = None
    closure_cause: str = ""
    closed_at: datetime | None = None
    went_live_at: datetime | None = None
    version: int
    updated_at: datetime


MerchantStep = Annotated[
    str | None,
    Field(
        default=None,
        max_length=80,
        description="the step meant, when the account is parked on more than one (its "
        "`attentions`); the one parked longest when absent",
    ),
]


class MerchantAction(AdminAction):
    """`retry` on a merchant's account: the step it is parked on, and why."""

    step: MerchantStep = None


class MerchantExtendRequest(ExtendRequest):
    """`extend` on a merchant's account: another period for the overdue wait it is parked on."""

    step: MerchantStep = None
