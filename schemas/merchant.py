"""After go-live: the merchant's account (`MerchantAccount` workflow, id `merchant-{MID}`), its
messages, what it shows operations, and what it hands over across continue-as-new.

Money is `Decimal` in yuan with two places. A bill is issued on each anniversary of go-live; a
bill unpaid past its due date and the grace period suspends acquiring, and a payment reinstates
it. Every message carries its own id, so a resend is acknowledged without being applied twice.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import Field

from schemas.application import (
    Application,
    Fulfilment,
    Model,
    PersonName,
    RequiredNote,
    SettlementAccount,
    Text,
)
from schemas.messages import Ack, MessageId
from schemas.policy import Policy, RiskLevel
from schemas.status import Attention

MERCHANT_WORKFLOW_PREFIX = "merchant-"
MID_PATTERN = r"^[0-9]{15}$"


def merchant_workflow_id(mid: str) -> str:
    return f"{MERCHANT_WORKFLOW_PREFIX}{mid}"


def mid_of(workflow_id: str | None) -> str | None:
    """The MID a merchant workflow runs for, from its id; None for any other workflow."""
    if workflow_id and workflow_id.startswith(MERCHANT_WORKFLOW_PREFIX):
        return workflow_id[len(MERCHANT_WORKFLOW_PREFIX) :]
    return None


class AccountState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"  # acquiring switched off in the device service
    CLOSING = "closing"  # devices coming back, MID retired, deposit refunded, contract ended
    CLOSED = "closed"

    @property
    def finished(self) -> bool:
        return self is AccountState.CLOSED


class SuspensionReason(StrEnum):
    FEES = "fees"  # a bill unpaid past its due date and the grace period
    INSPECTION = "inspection"  # a failed inspection not put right by the re-inspection


class ClosureCause(StrEnum):
    REQUESTED = "requested"  # the merchant asked (注销)
    CONTRACT_END = "contract_end"  # 合同到期
    SUSPENSION = "suspension"  # suspended past the policy's limit


class TerminalState(StrEnum):
    ACTIVE = "active"
    FAULTY = "faulty"  # reported faulty: a replacement is on its way
    PENDING = "pending"  # a replacement or an added terminal, not yet proven
    RETURNING = "returning"  # unbound, on its way back
    RETIRED = "retired"  # never came into service (an order withdrawn at closure)


# --- the messages ------------------------------------------------------------------------------


class FeePaid(Model):
    """The contract service: a bill was paid."""

    event_id: MessageId = Field(min_length=1, max_length=80)
    bill_id: str = Field(min_length=1, max_length=80)
    amount: Decimal = Field(ge=0, decimal_places=2)
    payment_reference: str = Field(min_length=1, max_length=80)


class InspectionResult(Model):
    """The logistics service: an inspector's verdict (巡检)."""

    event_id: MessageId = Field(min_length=1, max_length=80)
    inspection_id: str = Field(min_length=1, max_length=80)
    passed: bool
    inspector: PersonName = Field(min_length=1, max_length=80)
    findings: list[Text] = Field(default_factory=list, max_length=20)


class FaultReport(Model):
    """The merchant or an operator: a terminal does not work (换机 follows)."""

    request_id: MessageId = Field(min_length=1, max_length=80)
    serial: str = Field(min_length=1, max_length=40)
    description: RequiredNote = Field(min_length=1, max_length=500)
    # How the replacement comes: the application's own fulfilment when absent.
    fulfilment: Fulfilment | None = None
    reported_by: PersonName = Field(min_length=1, max_length=80)


class TerminalOrder(Model):
    """The merchant: more terminals under the same MID."""

    request_id: MessageId = Field(min_length=1, max_length=80)
    model: Text = Field(min_length=1, max_length=40)
    quantity: int = Field(ge=1, le=20)
    fulfilment: Fulfilment | None = None
    requested_by: PersonName = Field(min_length=1, max_length=80)


class RebindingRequest(Model):
    """The merchant: settle to a new account (重新绑定), checked by the application's rules."""

    request_id: MessageId = Field(min_length=1, max_length=80)
    account: SettlementAccount
    requested_by: PersonName = Field(min_length=1, max_length=80)


class RebindingDecision(Model):
    """The review service: a new settlement account approved or refused."""

    decision_id: MessageId = Field(min_length=1, max_length=80)
    case_id: str = Field(min_length=1, max_length=80)
    approved: bool
    reasons: list[RequiredNote] = Field(default_factory=list, max_length=20)
    reviewer: PersonName = Field(min_length=1, max_length=80)


class ClosureRequest(Model):
    """The merchant or an operator: close the account (注销), every device returned."""

    request_id: MessageId = Field(min_length=1, max_length=80)
    reason: RequiredNote = Field(min_length=1, max_length=500)
    requested_by: PersonName = Field(min_length=1, max_length=80)


# --- the record --------------------------------------------------------------------------------


class Bill(Model):
    bill_id: str
    period: int  # 1 for the first anniversary
    amount: Decimal
    annual_fee: Decimal
    service_fee: Decimal
    terminals: int
    issued_at: datetime
    due_at: datetime
    paid_at: datetime | None = None
    payment_reference: str | None = None
    reminders_sent: int = 0
    overdue: bool = False
    paid_after_closing: bool = False  # paid while the account was closing: refunded
    refunded: bool = False


class Inspection(Model):
    inspection_id: str
    booked_at: datetime
    scheduled_for: datetime
    due_at: datetime
    reinspection: bool = False
    passed: bool | None = None
    inspector: str | None = None
    findings: list[str] = Field(default_factory=list)
    reported_at: datetime | None = None


class MerchantTerminal(Model):
    serial: str
    model: str
    tid: str | None = None
    state: TerminalState = TerminalState.ACTIVE
    since: datetime
    replaces: str | None = None  # the faulty serial this one replaces
    replaced_by: str | None = None
    test_transaction: str | None = None
    activated_at: datetime | None = None
    # While a replacement or an added terminal is on its way.
    shipment_id: str | None = None
    appointment_id: str | None = None
    delivered_at: datetime | None = None
    activation_code_issued: bool = False


class Binding(Model):
    """A settlement account binding; the old ones are kept."""

    holder_name: str
    bank_name: str
    account_kind: str
    account_last4: str
    bound_at: datetime
    unbound_at: datetime | None = None
    binding_id: str | None = None


class Request(Model):
    """A merchant's request accepted and queued: served one at a time, in order."""

    kind: str  # fault | order | rebinding
    request_id: str
    accepted_at: datetime
    fault: FaultReport | None = None
    order: TerminalOrder | None = None
    rebinding: RebindingRequest | None = None
    case_id: str | None = None  # the review case of a re-binding, once opened


class AccountEvent(Model):
    at: datetime
    kind: str
    detail: str = ""


class MerchantStart(Model):
    """The hand-over at go-live, and what continue-as-new carries (`carried`)."""

    application: Application
    policy: Policy
    mid: str = Field(pattern=MID_PATTERN)
    went_live_at: datetime
    contract_id: str
    deposit_amount: Decimal = Decimal("0.00")
    deposit_reference: str | None = None
    risk_level: RiskLevel = RiskLevel.LOW
    terminals: list[MerchantTerminal]
    carried: Carried | None = None


class Carried(Model):
    """The account's state across continue-as-new: everything but the hand-over itself."""

    run: int
    state: AccountState
    suspensions: list[SuspensionReason]
    suspended_since: datetime | None
    terminals: list[MerchantTerminal]
    retired_tids: list[str]
    bindings: list[Binding]
    bills: list[Bill]
    bills_issued: int
    inspection: Inspection | None
    inspections_done: int
    next_inspection_at: datetime
    remediation_until: datetime | None
    queue: list[Request]
    closure: ClosureRequest | None
    acks: list[Ack]
    events: list[AccountEvent]
    counters: dict[str, int]
    attentions: list[Attention]
    last_inspection: Inspection | None
    version: int  # of the last snapshot sent to the gateway: numbering goes on across runs
    history_events: list[int]  # history length of each earlier run


class MerchantStatus(Model):
    """What the `status` query returns, and (as a whole snapshot) the gateway's merchant row."""

    mid: str
    workflow_id: str
    application_id: str
    run_id: str = ""
    version: int = 0
    run: int = 1
    channel: str
    merchant_type: str
    merchant_name: str
    state: AccountState
    suspensions: list[SuspensionReason] = Field(default_factory=list)
    suspended_since: datetime | None = None
    went_live_at: datetime
    contract_id: str
    contract_ends_at: datetime
    deposit_held: Decimal = Decimal("0.00")
    fees_due: Decimal = Decimal("0.00")  # issued and unpaid
    fees_overdue: Decimal = Decimal("0.00")  # unpaid past the due date
    next_bill_at: datetime | None = None
    bills: list[Bill] = Field(default_factory=list)
    next_inspection_at: datetime | None = None
    inspection: Inspection | None = None  # booked, awaiting its result
    last_inspection: Inspection | None = None
    remediation_until: datetime | None = None
    terminals: list[MerchantTerminal] = Field(default_factory=list)
    retired_tids: list[str] = Field(default_factory=list)
    bindings: list[Binding] = Field(default_factory=list)
    queue: list[str] = Field(default_factory=list)  # requests waiting, by id
    serving: str | None = None  # the request being served
    attention: Attention | None = None  # the one parked longest
    attentions: list[Attention] = Field(default_factory=list)
    closure_cause: ClosureCause | None = None
    closure_reason: str = ""
    closed_at: datetime | None = None
    counters: dict[str, int] = Field(default_factory=dict)
    history_events: list[int] = Field(default_factory=list)  # per earlier run
    events: list[AccountEvent] = Field(default_factory=list)


class MerchantOutcome(Model):
    mid: str
    application_id: str
    cause: ClosureCause
    reason: str
    closed_at: datetime
    refunded: Decimal
    returned: list[str]
    retired_tids: list[str]
    runs: int


MerchantStart.model_rebuild()

__all__ = [
    "AccountEvent",
    "AccountState",
    "Bill",
    "Binding",
    "Carried",
    "ClosureCause",
    "ClosureRequest",
    "FaultReport",
    "FeePaid",
    "Inspection",
    "InspectionResult",
    "MerchantOutcome",
    "MerchantStart",
    "MerchantStatus",
    "MerchantTerminal",
    "RebindingDecision",
    "RebindingRequest",
    "Request",
    "SuspensionReason",
    "TerminalOrder",
    "TerminalState",
    "merchant_workflow_id",
    "mid_of",
]
