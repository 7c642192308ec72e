"""The sandbox contract / e-sign service (签署合同 / 缴纳费用): issues the service agreement, takes
the merchant's signature through the signing link, collects the deposit or fees, and voids and
refunds when an application is undone. Signing and paying are called back to the gateway as
`ContractEvent`s.

After go-live the contract carries the merchant's fee bills (年费 + 服务费, one per period): the
merchant pays a bill (`POST /bills/{id}/payments`) and the payment is called back to the
merchant's route as `FeePaid`; a bill payment is refunded like the deposit (`POST
/contracts/{id}/refunds` with its reference), and termination (`POST /contracts/{id}/termination`)
ends the contract: it takes no more bills or money. Termination moves no money: what is owed back
is refunded by the caller, payment by payment. `paid` and `refunded` count all the contract's
money, deposit and fees; `fees_paid` is the fees' share.

A demo auto-signer (off by default) signs issued contracts after a delay and pays their deposit
through the same code as the endpoints, so its callbacks are the ones a merchant would cause.

A demo auto-payer (off by default: option `auto_pay_bills` or `POSFLOW_CONTRACT_AUTO_PAY=true`,
delay option `auto_pay_delay_ms` or `POSFLOW_CONTRACT_AUTO_PAY_DELAY_MS`, default 500 ms) pays
each issued bill once the delay has passed since it was issued, through the same code as the
payment endpoint, except for merchants whose contract's merchant name holds a marker:
`[late]` pays only once the bill is past its due date, `[unpaid]` never pays.
"""

from __future__ import annotations

import asyncio
import base64
import html
import os
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import FastAPI, Header
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import AfterValidator, AliasChoices, AwareDatetime
from pydantic import Field as PydanticField
from sqlalchemy import Engine, UniqueConstraint, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from schemas import steps
from schemas.application import Model
from schemas.merchant import MID_PATTERN, FeePaid
from schemas.messages import ContractEvent, ContractEventKind
from services.base import (
    IDEMPOTENCY_HEADER,
    Service,
    ServiceConfig,
    ServiceError,
    add_missing_columns,
    callback_path,
    create_service,
    enqueue_callback,
    idempotent,
    merchant_callback_path,
)

log = structlog.get_logger(__name__)

NAME = "contract"
CENT = Decimal("0.01")
ZERO = Decimal("0.00")
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8102"
AUTO_SIGNER_NAME = "auto-signer"
# Markers in a contract's merchant name that the demo auto-payer heeds.
PAYS_LATE = "[late]"
NEVER_PAYS = "[unpaid]"


def _two_places(value: Decimal) -> Decimal:
    if not value.is_finite() or value.quantize(CENT) != value:
        raise ValueError("must be an amount with at most 2 decimal places")
    return value.quantize(CENT)


Money = Annotated[Decimal, AfterValidator(_two_places)]


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; they were written in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# --- tables ----------------------------------------------------------------------------------


class Status(StrEnum):
    ISSUED = "issued"
    SIGNED = "signed"
    VOID = "void"  # undone before go-live
    TERMINATED = "terminated"  # ended after go-live (the account closed)


class BillStatus(StrEnum):
    ISSUED = "issued"
    PAID = "paid"
    REFUNDED = "refunded"  # its payment given back in full


class Agreement(SQLModel, table=True):
    """One service agreement (POS机服务协议). Amounts are decimal strings with 2 places; every
    change bumps `revision` under a compare-and-set, so two writers never both sign or pay."""

    __tablename__ = "contract_agreements"

    id: str = Field(primary_key=True)
    application_id: str = Field(index=True)
    merchant_name: str
    channel: str
    device_model: str
    quantity: int
    deposit_amount: str
    card_rate_percent: str = "0.60"  # 费率: percent of each card payment, as the contract states
    paid: str = "0.00"
    refunded: str = "0.00"
    status: str = Field(default=Status.ISSUED.value, index=True)
    signer_name: str = ""
    signed_at: datetime | None = None
    voided_at: datetime | None = None
    void_reason: str = ""
    created_at: datetime = Field(default_factory=_now, index=True)
    revision: int = 0
    # Nullable: added after the first version, so an older database gains them (`_upgrade`).
    fees_paid: str | None = None  # the share of `paid` that paid bills
    terminated_at: datetime | None = None
    termination_reason: str | None = None


class Payment(SQLModel, table=True):
    __tablename__ = "contract_payments"

    id: str = Field(primary_key=True)
    contract_id: str = Field(index=True)
    amount: str
    payment_reference: str
    paid_at: datetime = Field(default_factory=_now)
    bill_id: str | None = Field(default=None, index=True)  # a fee payment's bill


class Bill(SQLModel, table=True):
    """A fee bill for one period of a contract (年费 + 服务费), paid once. Amounts are decimal
    strings with 2 places; times are UTC."""

    __tablename__ = "contract_bills"
    __table_args__ = (UniqueConstraint("contract_id", "period", name="uq_contract_bill_period"),)

    id: str = Field(primary_key=True)
    contract_id: str = Field(index=True)
    mid: str = Field(index=True)
    application_id: str
    period: int
    annual_fee: str
    service_fee: str
    amount: str
    due_at: datetime
    status: str = Field(default=BillStatus.ISSUED.value, index=True)
    issued_at: datetime = Field(default_factory=_now, index=True)
    paid_at: datetime | None = None
    payment_reference: str | None = None
    refunded_at: datetime | None = None


class Refund(SQLModel, table=True):
    __tablename__ = "contract_refunds"

    id: str = Field(primary_key=True)
    contract_id: str = Field(index=True)
    amount: str
    payment_reference: str
    refunded_at: datetime = Field(default_factory=_now)


class HistoryEntry(SQLModel, table=True):
    __tablename__ = "contract_history"

    id: int | None = Field(default=None, primary_key=True)
    contract_id: str = Field(index=True)
    at: datetime = Field(default_factory=_now)
    kind: str
    detail: str = ""


# --- request and response bodies -------------------------------------------------------------


class ContractRequest(Model):
    """`POST /contracts`: the fields of `steps.IssueContract`; the key travels in the header (a
    caller sending the whole step may repeat it here, and then it must match)."""

    application_id: str = PydanticField(min_length=1, max_length=80)
    merchant_name: str = PydanticField(min_length=1, max_length=200)
    channel: str = PydanticField(min_length=1, max_length=40)
    deposit_amount: Money = PydanticField(ge=0, le=1_000_000)
    card_rate_percent: Decimal = PydanticField(
        default=Decimal("0.60"), gt=0, le=5, decimal_places=2
    )
    device_model: str = PydanticField(min_length=1, max_length=80)
    quantity: int = PydanticField(ge=1, le=1000)
    idempotency_key: str | None = None
    # Every step carries it; a contract is issued before go-live, so never for a merchant.
    merchant_id: None = None


class SignatureRequest(Model):
    signer_name: str = PydanticField(min_length=1, max_length=80)


class PaymentRequest(Model):
    amount: Money = PydanticField(gt=0, le=1_000_000)
    payment_reference: str = PydanticField(min_length=1, max_length=80)


class VoidRequest(Model):
    reason: str = PydanticField(min_length=1, max_length=500)


class TerminationRequest(Model):
    reason: str = PydanticField(min_length=1, max_length=500)


class BillRequest(Model):
    """`POST /contracts/{id}/bills`: the fields of `steps.IssueBill` but the contract (the path)
    and the key (the header). `application_id`, when sent, must be the contract's."""

    merchant_id: str = PydanticField(pattern=MID_PATTERN)
    period: int = PydanticField(ge=1, le=1000)
    annual_fee: Money = PydanticField(ge=0, le=1_000_000)
    service_fee: Money = PydanticField(ge=0, le=1_000_000)
    amount: Money = PydanticField(ge=0, le=2_000_000)
    due_at: AwareDatetime
    application_id: str | None = PydanticField(default=None, min_length=1, max_length=80)


class BillPaymentRequest(Model):
    """`POST /bills/{id}/payments`: the merchant pays the bill's amount; without a reference the
    service makes one up (`payment_reference` is taken for `reference` too)."""

    amount: Money = PydanticField(ge=0, le=2_000_000)
    reference: str | None = PydanticField(
        default=None,
        min_length=1,
        max_length=80,
        validation_alias=AliasChoices("reference", "payment_reference"),
    )


class ContractIssuedResponse(steps.ContractIssued):
    status: Status
    deposit_due: Decimal


class PaymentView(Model):
    payment_id: str
    amount: Decimal
    payment_reference: str
    paid_at: datetime


class RefundView(Model):
    refund_id: str
    amount: Decimal
    payment_reference: str
    refunded_at: datetime


class HistoryView(Model):
    at: datetime
    kind: str
    detail: str


class BillView(Model):
    bill_id: str
    contract_id: str
    merchant_id: str
    application_id: str
    period: int
    annual_fee: Decimal
    service_fee: Decimal
    amount: Decimal
    due_at: datetime
    status: BillStatus
    issued_at: datetime
    paid_at: datetime | None
    payment_reference: str | None
    refunded_at: datetime | None


class ContractView(Model):
    contract_id: str
    application_id: str
    merchant_name: str
    channel: str
    device_model: str
    quantity: int
    status: Status
    signing_url: str
    deposit_amount: Decimal
    card_rate_percent: Decimal
    deposit_due: Decimal
    paid: Decimal  # all money taken on the contract: deposit and fees
    fees_paid: Decimal
    refunded: Decimal
    signer_name: str
    signed_at: datetime | None
    voided_at: datetime | None
    void_reason: str
    terminated_at: datetime | None
    termination_reason: str
    created_at: datetime
    payments: list[PaymentView]
    refunds: list[RefundView]
    bills: list[BillView]
    history: list[HistoryView]


# --- the rules -------------------------------------------------------------------------------


def public_url(config: ServiceConfig) -> str:
    """Where merchants reach this service: the base of the signing links."""
    url = (
        config.options.get("public_url")
        or os.environ.get("POSFLOW_CONTRACT_PUBLIC_URL")
        or os.environ.get("POSFLOW_CONTRACT_URL")
        or DEFAULT_PUBLIC_URL
    )
    return url.rstrip("/")


def signing_url(config: ServiceConfig, contract_id: str) -> str:
    return f"{public_url(config)}/sign/{quote(contract_id, safe='')}"


def fees_paid(agreement: Agreement) -> Decimal:
    return Decimal(agreement.fees_paid or ZERO)


def deposit_due(agreement: Agreement) -> Decimal:
    if agreement.status in (Status.VOID, Status.TERMINATED):
        return ZERO
    deposit_paid = Decimal(agreement.paid) - fees_paid(agreement)
    return max(Decimal(agreement.deposit_amount) - deposit_paid, ZERO)


def new_id(prefix: str) -> str:
    """A new id: 16 characters of base32 (A-Z and 2-7). Ids reach merchants in notices (the
    signing link, a bill), and the notification service refuses any run of 16 or more digits as
    a card or account number: 16 hexadecimal characters were all digits for about one contract
    in a thousand, and that merchant's signing link was refused."""
    return f"{prefix}-{base64.b32encode(uuid.uuid4().bytes).decode()[:16]}"


def _load(session: Session, contract_id: str) -> Agreement:
    agreement = session.get(Agreement, contract_id)
    if agreement is None:
        raise ServiceError(404, "contract_not_found", f"no contract {contract_id}")
    return agreement


def _load_bill(session: Session, bill_id: str) -> Bill:
    bill = session.get(Bill, bill_id)
    if bill is None:
        raise ServiceError(404, "bill_not_found", f"no bill {bill_id}")
    return bill


def _refuse_ended(agreement: Agreement) -> None:
    """A void or terminated contract takes no signature, no bill and no money."""
    if agreement.status == Status.VOID:
        raise ServiceError(409, "contract_void", f"contract {agreement.id} is void")
    if agreement.status == Status.TERMINATED:
        raise ServiceError(409, "contract_terminated", f"contract {agreement.id} is terminated")


def _change(session: Session, agreement: Agreement, **values: Any) -> None:
    """Write `values` only if nobody changed the agreement since it was read."""
    result = session.execute(
        update(Agreement)
        .where(col(Agreement.id) == agreement.id, col(Agreement.revision) == agreement.revision)
        .values(revision=agreement.revision + 1, **values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise ServiceError(
            409, "concurrent_update", "the contract changed while this request ran; retry"
        )


def _record(session: Session, contract_id: str, kind: str, detail: str = "") -> None:
    session.add(HistoryEntry(contract_id=contract_id, kind=kind, detail=detail))


def _callback(session: Session, agreement: Agreement, event: ContractEvent) -> None:
    enqueue_callback(session, NAME, callback_path(agreement.application_id, "contract"), event)


def issue(session: Session, request: ContractRequest) -> Agreement:
    agreement = Agreement(
        id=new_id("CT"),
        application_id=request.application_id,
        merchant_name=request.merchant_name,
        channel=request.channel,
        device_model=request.device_model,
        quantity=request.quantity,
        deposit_amount=str(request.deposit_amount),
        card_rate_percent=str(request.card_rate_percent),
    )
    session.add(agreement)
    _record(
        session,
        agreement.id,
        "issued",
        f"deposit {agreement.deposit_amount}, card rate {agreement.card_rate_percent}%",
    )
    return agreement


def sign(session: Session, agreement: Agreement, signer_name: str) -> None:
    _refuse_ended(agreement)
    if agreement.status == Status.SIGNED:
        raise ServiceError(409, "already_signed", f"contract {agreement.id} is already signed")
    _change(
        session, agreement, status=Status.SIGNED.value, signer_name=signer_name, signed_at=_now()
    )
    _record(session, agreement.id, "signed", signer_name)
    _callback(
        session,
        agreement,
        ContractEvent(
            event_id=str(uuid.uuid4()), contract_id=agreement.id, kind=ContractEventKind.SIGNED
        ),
    )


def pay(session: Session, agreement: Agreement, amount: Decimal, reference: str) -> Payment:
    _refuse_ended(agreement)
    due = deposit_due(agreement)
    if due == ZERO:
        raise ServiceError(409, "nothing_due", f"nothing is due on contract {agreement.id}")
    if amount != due:
        raise ServiceError(
            422,
            "amount_mismatch",
            f"the amount due on contract {agreement.id} is {due}",
            {"amount": f"must be {due}, not {amount}"},
        )
    _change(session, agreement, paid=str(Decimal(agreement.paid) + amount))
    payment = Payment(
        id=new_id("PM"), contract_id=agreement.id, amount=str(amount), payment_reference=reference
    )
    session.add(payment)
    _record(session, agreement.id, "deposit_paid", f"{amount} ref {reference}")
    _callback(
        session,
        agreement,
        ContractEvent(
            event_id=str(uuid.uuid4()),
            contract_id=agreement.id,
            kind=ContractEventKind.DEPOSIT_PAID,
            amount=amount,
            payment_reference=reference,
        ),
    )
    return payment


def _refunds_of(session: Session, contract_id: str, reference: str) -> list[Refund]:
    return list(
        session.exec(
            select(Refund)
            .where(Refund.contract_id == contract_id, Refund.payment_reference == reference)
            .order_by(col(Refund.refunded_at), col(Refund.id))
        ).all()
    )


def _unrefunded(session: Session, agreement: Agreement) -> list[tuple[str, Decimal]]:
    """Each payment reference of the contract with what of it is not refunded yet."""
    payments = session.exec(
        select(Payment).where(Payment.contract_id == agreement.id).order_by(col(Payment.paid_at))
    ).all()
    paid: dict[str, Decimal] = {}
    for payment in payments:
        paid[payment.payment_reference] = paid.get(payment.payment_reference, ZERO) + Decimal(
            payment.amount
        )
    left = []
    for reference, amount in paid.items():
        refunded = sum(
            (Decimal(r.amount) for r in _refunds_of(session, agreement.id, reference)), ZERO
        )
        if amount > refunded:
            left.append((reference, amount - refunded))
    return left


def _add_refund(session: Session, contract_id: str, amount: Decimal, reference: str) -> Refund:
    """The refund's own records: its row and the history line (the caller moves `refunded`)."""
    row = Refund(
        id=new_id("RF"), contract_id=contract_id, amount=str(amount), payment_reference=reference
    )
    session.add(row)
    _record(session, contract_id, "refunded", f"{amount} ref {reference}")
    _mark_bill_refunded(session, contract_id, reference)
    return row


def _mark_bill_refunded(session: Session, contract_id: str, reference: str) -> None:
    """A bill whose payment is now refunded in full is `refunded` (a partial refund leaves it
    paid)."""
    bill = session.exec(
        select(Bill).where(
            Bill.contract_id == contract_id,
            Bill.payment_reference == reference,
            Bill.status == BillStatus.PAID.value,
        )
    ).first()
    if bill is None:
        return
    # The session flushes first: the refund just added counts.
    back = sum((Decimal(r.amount) for r in _refunds_of(session, contract_id, reference)), ZERO)
    if back >= Decimal(bill.amount):
        bill.status = BillStatus.REFUNDED.value
        bill.refunded_at = _now()
        session.add(bill)
        _record(session, contract_id, "bill_refunded", f"{bill.id} ref {reference}")


def void(session: Session, agreement: Agreement, reason: str) -> steps.Undone:
    """Void the contract and give back whatever of the deposit is not refunded yet, in the same
    transaction and recorded as the refund endpoint records it: money always comes back. A
    terminated contract is not voided: it ended after go-live, and its money is refunded payment
    by payment."""
    if agreement.status == Status.TERMINATED:
        raise ServiceError(409, "contract_terminated", f"contract {agreement.id} is terminated")
    owed = _unrefunded(session, agreement)
    was = agreement.status
    values: dict[str, Any] = {}
    if was != Status.VOID:
        values.update(status=Status.VOID.value, voided_at=_now(), void_reason=reason)
    if owed:
        total = sum((amount for _, amount in owed), ZERO)
        values["refunded"] = str(Decimal(agreement.refunded) + total)
    if values:
        _change(session, agreement, **values)
    if was != Status.VOID:
        _record(session, agreement.id, "voided", f"was {was}: {reason}")
    refunds = [_add_refund(session, agreement.id, amount, reference) for reference, amount in owed]
    detail = f"already void: {agreement.void_reason}" if was == Status.VOID else f"voided: {reason}"
    if refunds:
        detail += "; deposit refunded: " + ", ".join(
            f"{r.amount} as {r.id} (payment {r.payment_reference})" for r in refunds
        )
    return steps.Undone(reference=agreement.id, detail=detail)


def refund(
    session: Session, agreement: Agreement, amount: Decimal, reference: str
) -> tuple[Refund, bool]:
    """Refund `amount` of the payment `reference`: (the refund, whether it is new). A payment
    already refunded in full, by a void or an earlier refund under another key, is answered
    with that earlier refund: the money is back, which is what the caller asks for."""
    paid, refunded = Decimal(agreement.paid), Decimal(agreement.refunded)
    if paid == ZERO:
        raise ServiceError(409, "nothing_paid", f"nothing was paid on contract {agreement.id}")
    payments = session.exec(
        select(Payment).where(
            Payment.contract_id == agreement.id, Payment.payment_reference == reference
        )
    ).all()
    if not payments:
        raise ServiceError(
            422,
            "unknown_payment",
            f"contract {agreement.id} has no payment {reference}",
            {"payment_reference": "no payment with this reference on this contract"},
        )
    of_payment = sum((Decimal(p.amount) for p in payments), ZERO)
    earlier = _refunds_of(session, agreement.id, reference)
    left = of_payment - sum((Decimal(r.amount) for r in earlier), ZERO)
    if left <= ZERO and earlier and amount <= of_payment:
        return earlier[-1], False
    if amount > min(left, paid - refunded):
        raise ServiceError(
            409,
            "refund_exceeds_paid",
            f"only {min(left, paid - refunded)} of payment {reference} on contract"
            f" {agreement.id} can still be refunded",
        )
    _change(session, agreement, refunded=str(refunded + amount))
    return _add_refund(session, agreement.id, amount, reference), True


def issue_bill(session: Session, agreement: Agreement, request: BillRequest) -> Bill:
    """A bill for one period: its amount is the annual fee plus the service fee, a period is
    billed once, and a void or terminated contract takes no bill."""
    total = request.annual_fee + request.service_fee
    if request.amount != total:
        raise ServiceError(
            422,
            "amount_mismatch",
            f"a bill's amount is its annual fee plus its service fee: {total}",
            {"amount": f"must be {total} (annual_fee + service_fee), not {request.amount}"},
        )
    if request.application_id is not None and request.application_id != agreement.application_id:
        raise ServiceError(
            409,
            "contract_mismatch",
            f"contract {agreement.id} belongs to another application",
            {"application_id": "does not match the contract"},
        )
    _refuse_ended(agreement)
    for earlier in session.exec(select(Bill).where(Bill.contract_id == agreement.id)).all():
        if earlier.mid != request.merchant_id:
            raise ServiceError(
                409,
                "merchant_mismatch",
                f"contract {agreement.id} bills another merchant",
                {"merchant_id": "does not match the contract's earlier bills"},
            )
        if earlier.period == request.period:
            raise ServiceError(
                409,
                "period_billed",
                f"period {request.period} of contract {agreement.id} is billed already as"
                f" {earlier.id}",
                {"period": f"billed already as {earlier.id}"},
            )
    # Bump the revision: a termination running at the same time and this bill cannot both win.
    _change(session, agreement)
    bill = Bill(
        id=new_id("BILL"),
        contract_id=agreement.id,
        mid=request.merchant_id,
        application_id=agreement.application_id,
        period=request.period,
        annual_fee=str(request.annual_fee),
        service_fee=str(request.service_fee),
        amount=str(request.amount),
        due_at=request.due_at.astimezone(UTC),
    )
    session.add(bill)
    _record(
        session,
        agreement.id,
        "bill_issued",
        f"{bill.id} period {bill.period}: {bill.amount} due {bill.due_at.date().isoformat()}",
    )
    return bill


def pay_bill(session: Session, bill: Bill, amount: Decimal, reference: str | None) -> FeePaid:
    """Take the bill's amount and queue `FeePaid` to the merchant's route, in one transaction.
    The payment is one of the contract's payments, so it is refunded like the deposit."""
    if bill.status != BillStatus.ISSUED:
        raise ServiceError(409, "bill_paid", f"bill {bill.id} is already paid ({bill.status})")
    agreement = _load(session, bill.contract_id)
    _refuse_ended(agreement)
    due = Decimal(bill.amount)
    if amount != due:
        raise ServiceError(
            422,
            "amount_mismatch",
            f"the amount of bill {bill.id} is {due}",
            {"amount": f"must be {due}, not {amount}"},
        )
    reference = reference or new_id("PAY")
    used = session.exec(
        select(Payment.id).where(
            Payment.contract_id == agreement.id, Payment.payment_reference == reference
        )
    ).first()
    if used is not None:
        raise ServiceError(
            409,
            "payment_reference_used",
            f"contract {agreement.id} already has a payment {reference}",
            {"reference": "already names another payment on this contract"},
        )
    _change(
        session,
        agreement,
        paid=str(Decimal(agreement.paid) + amount),
        fees_paid=str(fees_paid(agreement) + amount),
    )
    paid_at = _now()
    taken = session.execute(
        update(Bill)
        .where(col(Bill.id) == bill.id, col(Bill.status) == BillStatus.ISSUED.value)
        .values(status=BillStatus.PAID.value, paid_at=paid_at, payment_reference=reference)
        .execution_options(synchronize_session=False)
    )
    if getattr(taken, "rowcount", 0) != 1:
        raise ServiceError(409, "bill_paid", f"bill {bill.id} is already paid")
    session.add(
        Payment(
            id=new_id("PM"),
            contract_id=agreement.id,
            amount=str(amount),
            payment_reference=reference,
            paid_at=paid_at,
            bill_id=bill.id,
        )
    )
    _record(session, agreement.id, "fee_paid", f"{bill.id} {amount} ref {reference}")
    event = FeePaid(
        event_id=str(uuid.uuid4()), bill_id=bill.id, amount=amount, payment_reference=reference
    )
    enqueue_callback(session, NAME, merchant_callback_path(bill.mid, "fee-payment"), event)
    log.info("bill_paid", bill_id=bill.id, contract_id=agreement.id, mid=bill.mid)
    return event


def terminate(session: Session, agreement: Agreement, reason: str) -> steps.Undone:
    """End the contract after go-live: it takes no more bills or money. Terminating again
    answers as the first time did; a void contract is already ended. No money moves here."""
    if agreement.status == Status.VOID:
        return steps.Undone(reference=agreement.id, detail=f"already void: {agreement.void_reason}")
    if agreement.status == Status.TERMINATED:
        reason = agreement.termination_reason or ""
    else:
        was = agreement.status
        _change(
            session,
            agreement,
            status=Status.TERMINATED.value,
            terminated_at=_now(),
            termination_reason=reason,
        )
        _record(session, agreement.id, "terminated", f"was {was}: {reason}")
    return steps.Undone(reference=agreement.id, detail=f"terminated: {reason}")


def bill_view(bill: Bill) -> BillView:
    return BillView(
        bill_id=bill.id,
        contract_id=bill.contract_id,
        merchant_id=bill.mid,
        application_id=bill.application_id,
        period=bill.period,
        annual_fee=Decimal(bill.annual_fee),
        service_fee=Decimal(bill.service_fee),
        amount=Decimal(bill.amount),
        due_at=_aware(bill.due_at) or bill.due_at,
        status=BillStatus(bill.status),
        issued_at=_aware(bill.issued_at) or bill.issued_at,
        paid_at=_aware(bill.paid_at),
        payment_reference=bill.payment_reference,
        refunded_at=_aware(bill.refunded_at),
    )


def view(session: Session, config: ServiceConfig, agreement: Agreement) -> ContractView:
    payments = session.exec(
        select(Payment).where(Payment.contract_id == agreement.id).order_by(col(Payment.paid_at))
    ).all()
    refunds = session.exec(
        select(Refund).where(Refund.contract_id == agreement.id).order_by(col(Refund.refunded_at))
    ).all()
    history = session.exec(
        select(HistoryEntry)
        .where(HistoryEntry.contract_id == agreement.id)
        .order_by(col(HistoryEntry.id))
    ).all()
    bills = session.exec(
        select(Bill).where(Bill.contract_id == agreement.id).order_by(col(Bill.period))
    ).all()
    return ContractView(
        contract_id=agreement.id,
        application_id=agreement.application_id,
        merchant_name=agreement.merchant_name,
        channel=agreement.channel,
        device_model=agreement.device_model,
        quantity=agreement.quantity,
        status=Status(agreement.status),
        signing_url=signing_url(config, agreement.id),
        deposit_amount=Decimal(agreement.deposit_amount),
        card_rate_percent=Decimal(agreement.card_rate_percent),
        deposit_due=deposit_due(agreement),
        paid=Decimal(agreement.paid),
        fees_paid=fees_paid(agreement),
        refunded=Decimal(agreement.refunded),
        signer_name=agreement.signer_name,
        signed_at=_aware(agreement.signed_at),
        voided_at=_aware(agreement.voided_at),
        void_reason=agreement.void_reason,
        terminated_at=_aware(agreement.terminated_at),
        termination_reason=agreement.termination_reason or "",
        created_at=_aware(agreement.created_at) or agreement.created_at,
        payments=[
            PaymentView(
                payment_id=p.id,
                amount=Decimal(p.amount),
                payment_reference=p.payment_reference,
                paid_at=_aware(p.paid_at) or p.paid_at,
            )
            for p in payments
        ],
        refunds=[
            RefundView(
                refund_id=r.id,
                amount=Decimal(r.amount),
                payment_reference=r.payment_reference,
                refunded_at=_aware(r.refunded_at) or r.refunded_at,
            )
            for r in refunds
        ],
        bills=[bill_view(b) for b in bills],
        history=[
            HistoryView(at=_aware(h.at) or h.at, kind=h.kind, detail=h.detail) for h in history
        ],
    )


# --- the HTTP API ----------------------------------------------------------------------------

IdempotencyKey = Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)]

_SIGNING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>POS机服务协议 {contract_id}</title></head>
<body>
<h1>POS机服务协议 / POS terminal service agreement</h1>
<p>Contract {contract_id} for {merchant}: {quantity} × {model} via {channel}.</p>
<p>Status: <b>{status}</b>. Deposit due: {due}. Card rate (费率): {rate}% of each card payment.</p>
<form id="sign"><label>Your name <input name="signer_name" required></label>
<button>Sign</button></form><p id="result"></p>
<script>
document.getElementById("sign").onsubmit = async (e) => {{
  e.preventDefault();
  const r = await fetch("{path}/signature", {{method: "POST",
    headers: {{"Content-Type": "application/json", "Idempotency-Key": crypto.randomUUID()}},
    body: JSON.stringify({{signer_name: e.target.signer_name.value}})}});
  document.getElementById("result").textContent = (await r.json()).message || "signed";
}};
</script></body></html>
"""


def _routes(service: Service) -> None:
    app: FastAPI = service.app
    config = service.config

    @app.post("/contracts", status_code=201, response_model=ContractIssuedResponse)
    def issue_contract(body: ContractRequest, key: IdempotencyKey = None) -> JSONResponse:
        if body.idempotency_key is not None and body.idempotency_key != key:
            raise ServiceError(
                422,
                "invalid_request",
                "the body's idempotency_key differs from the header",
                {"idempotency_key": f"must equal the {IDEMPOTENCY_HEADER} header"},
            )
        payload = body.model_dump(mode="json", exclude={"idempotency_key", "merchant_id"})
        with service.session() as session:

            def write() -> ContractIssuedResponse:
                agreement = issue(session, body)
                return ContractIssuedResponse(
                    contract_id=agreement.id,
                    signing_url=signing_url(config, agreement.id),
                    status=Status.ISSUED,
                    deposit_due=deposit_due(agreement),
                )

            return idempotent(session, NAME, key, payload, write, status_code=201)

    @app.get("/contracts/{contract_id}", response_model=ContractView)
    def get_contract(contract_id: str) -> ContractView:
        with service.session() as session:
            return view(session, config, _load(session, contract_id))

    @app.get("/sign/{contract_id}", response_class=HTMLResponse)
    def signing_page(contract_id: str) -> HTMLResponse:
        with service.session() as session:
            agreement = _load(session, contract_id)
            page = _SIGNING_PAGE.format(
                contract_id=html.escape(agreement.id),
                merchant=html.escape(agreement.merchant_name),
                quantity=agreement.quantity,
                model=html.escape(agreement.device_model),
                channel=html.escape(agreement.channel),
                status=html.escape(agreement.status),
                due=deposit_due(agreement),
                rate=html.escape(agreement.card_rate_percent),
                path=f"/contracts/{quote(agreement.id, safe='')}",
            )
        return HTMLResponse(page)

    @app.post("/contracts/{contract_id}/signature", response_model=ContractView)
    def sign_contract(
        contract_id: str, body: SignatureRequest, key: IdempotencyKey = None
    ) -> JSONResponse:
        with service.session() as session:

            def write() -> ContractView:
                agreement = _load(session, contract_id)
                sign(session, agreement, body.signer_name)
                session.flush()
                session.refresh(agreement)
                return view(session, config, agreement)

            return idempotent(session, NAME, key, {"sign": contract_id, **body.model_dump()}, write)

    @app.post("/contracts/{contract_id}/payments", status_code=201, response_model=PaymentView)
    def pay_contract(
        contract_id: str, body: PaymentRequest, key: IdempotencyKey = None
    ) -> JSONResponse:
        with service.session() as session:

            def write() -> PaymentView:
                payment = pay(
                    session, _load(session, contract_id), body.amount, body.payment_reference
                )
                return PaymentView(
                    payment_id=payment.id,
                    amount=Decimal(payment.amount),
                    payment_reference=payment.payment_reference,
                    paid_at=payment.paid_at,
                )

            payload = {"pay": contract_id, **body.model_dump(mode="json")}
            return idempotent(session, NAME, key, payload, write, status_code=201)

    @app.post("/contracts/{contract_id}/void", response_model=steps.Undone)
    def void_contract(
        contract_id: str, body: VoidRequest, key: IdempotencyKey = None
    ) -> JSONResponse:
        with service.session() as session:
            payload = {"void": contract_id, **body.model_dump()}
            return idempotent(
                session,
                NAME,
                key,
                payload,
                lambda: void(session, _load(session, contract_id), body.reason),
            )

    @app.post("/contracts/{contract_id}/refunds", status_code=201, response_model=steps.Refunded)
    def refund_contract(
        contract_id: str, body: PaymentRequest, key: IdempotencyKey = None
    ) -> JSONResponse:
        created = True
        with service.session() as session:

            def write() -> steps.Refunded:
                nonlocal created
                row, created = refund(
                    session, _load(session, contract_id), body.amount, body.payment_reference
                )
                return steps.Refunded(refund_id=row.id)

            # 201 for a new refund, 200 when the payment was already refunded (that refund).
            payload = {"refund": contract_id, **body.model_dump(mode="json")}
            return idempotent(
                session, NAME, key, payload, write, status_code=lambda _: 201 if created else 200
            )

    @app.post("/contracts/{contract_id}/termination", response_model=steps.Undone)
    def terminate_contract(
        contract_id: str, body: TerminationRequest, key: IdempotencyKey = None
    ) -> JSONResponse:
        with service.session() as session:
            payload = {"terminate": contract_id, **body.model_dump()}
            return idempotent(
                session,
                NAME,
                key,
                payload,
                lambda: terminate(session, _load(session, contract_id), body.reason),
            )

    @app.post("/contracts/{contract_id}/bills", status_code=201, response_model=steps.BillIssued)
    def issue_contract_bill(
        contract_id: str, body: BillRequest, key: IdempotencyKey = None
    ) -> JSONResponse:
        with service.session() as session:

            def write() -> steps.BillIssued:
                bill = issue_bill(session, _load(session, contract_id), body)
                try:
                    session.flush()
                except IntegrityError:
                    # Another key billed the same period at the same moment and won.
                    session.rollback()
                    raise ServiceError(
                        409,
                        "period_billed",
                        f"period {body.period} of contract {contract_id} is billed already",
                        {"period": "billed already"},
                    ) from None
                return steps.BillIssued(
                    bill_id=bill.id, amount=Decimal(bill.amount), due_at=bill.due_at
                )

            payload = {"bill": contract_id, **body.model_dump(mode="json")}
            return idempotent(session, NAME, key, payload, write, status_code=201)

    @app.get("/bills/{bill_id}", response_model=BillView)
    def get_bill(bill_id: str) -> BillView:
        with service.session() as session:
            return bill_view(_load_bill(session, bill_id))

    @app.post("/bills/{bill_id}/payments", status_code=201, response_model=BillView)
    def pay_contract_bill(
        bill_id: str, body: BillPaymentRequest, key: IdempotencyKey = None
    ) -> JSONResponse:
        with service.session() as session:

            def write() -> BillView:
                bill = _load_bill(session, bill_id)
                pay_bill(session, bill, body.amount, body.reference)
                session.flush()
                session.refresh(bill)
                return bill_view(bill)

            payload = {"pay_bill": bill_id, **body.model_dump(mode="json")}
            return idempotent(session, NAME, key, payload, write, status_code=201)


# --- the demo auto-signer --------------------------------------------------------------------


def auto_sign_settings(config: ServiceConfig) -> tuple[bool, float]:
    """(enabled, delay in seconds): `auto_sign` / `auto_sign_delay_ms` options, else the
    `POSFLOW_CONTRACT_AUTO` / `POSFLOW_CONTRACT_AUTO_DELAY_MS` environment variables."""
    enabled = (
        config.options.get("auto_sign") == "true"
        or os.environ.get("POSFLOW_CONTRACT_AUTO", "").lower() == "true"
    )
    delay_ms = config.options.get("auto_sign_delay_ms") or os.environ.get(
        "POSFLOW_CONTRACT_AUTO_DELAY_MS", "500"
    )
    return enabled, float(delay_ms) / 1000


def auto_sign_due(service: Service, delay: float) -> int:
    """Sign every issued contract older than `delay` seconds and pay its deposit if one is due,
    each contract in one transaction; returns how many were signed."""
    cutoff = _now() - timedelta(seconds=delay)
    signed = 0
    with service.session() as session:
        ids = session.exec(
            select(Agreement.id)
            .where(Agreement.status == Status.ISSUED.value, col(Agreement.created_at) <= cutoff)
            .order_by(col(Agreement.created_at))
            .limit(50)
        ).all()
    for contract_id in ids:
        with service.session() as session:
            agreement = _load(session, contract_id)
            try:
                sign(session, agreement, AUTO_SIGNER_NAME)
                session.flush()
                session.refresh(agreement)
                due = deposit_due(agreement)
                if due > ZERO:
                    pay(session, agreement, due, f"AUTO-{agreement.id}")
            except ServiceError:
                session.rollback()  # a merchant or admin got there first: leave it to them
                continue
            session.commit()
            signed += 1
    return signed


async def auto_signer(service: Service) -> None:
    enabled, delay = auto_sign_settings(service.config)
    if not enabled:
        return
    poll = min(max(delay / 2, 0.05), 1.0)
    while True:
        await asyncio.to_thread(auto_sign_due, service, delay)
        await asyncio.sleep(poll)


# --- the demo auto-payer ---------------------------------------------------------------------


def auto_pay_settings(config: ServiceConfig) -> tuple[bool, float]:
    """(enabled, delay in seconds): `auto_pay_bills` / `auto_pay_delay_ms` options, else the
    `POSFLOW_CONTRACT_AUTO_PAY` / `POSFLOW_CONTRACT_AUTO_PAY_DELAY_MS` environment variables."""
    enabled = (
        config.options.get("auto_pay_bills") == "true"
        or os.environ.get("POSFLOW_CONTRACT_AUTO_PAY", "").lower() == "true"
    )
    delay_ms = config.options.get("auto_pay_delay_ms") or os.environ.get(
        "POSFLOW_CONTRACT_AUTO_PAY_DELAY_MS", "500"
    )
    return enabled, float(delay_ms) / 1000


def auto_pay_due(service: Service, delay: float) -> int:
    """Pay every issued bill older than `delay` seconds on a contract in force, heeding the
    merchant name's markers (`[late]`: only once past due; `[unpaid]`: never), each bill in one
    transaction; returns how many were paid."""
    now = _now()
    name = col(Agreement.merchant_name)
    paid = 0
    with service.session() as session:
        ids = session.exec(
            select(Bill.id)
            .join(Agreement, col(Agreement.id) == col(Bill.contract_id))
            .where(Bill.status == BillStatus.ISSUED.value)
            .where(col(Bill.issued_at) <= now - timedelta(seconds=delay))
            .where(col(Agreement.status).not_in([Status.VOID.value, Status.TERMINATED.value]))
            .where(~name.contains(NEVER_PAYS, autoescape=True))
            .where(or_(~name.contains(PAYS_LATE, autoescape=True), col(Bill.due_at) < now))
            .order_by(col(Bill.issued_at))
            .limit(50)
        ).all()
    for bill_id in ids:
        with service.session() as session:
            bill = _load_bill(session, bill_id)
            try:
                pay_bill(session, bill, Decimal(bill.amount), f"AUTO-{bill.id}")
            except ServiceError:
                session.rollback()  # the merchant paid first, or the contract ended: leave it
                continue
            session.commit()
            paid += 1
    return paid


async def auto_payer(service: Service) -> None:
    enabled, delay = auto_pay_settings(service.config)
    if not enabled:
        return
    poll = min(max(delay / 2, 0.05), 1.0)
    while True:
        try:
            await asyncio.to_thread(auto_pay_due, service, delay)
        except Exception:
            log.exception("auto_payer_failed")
        await asyncio.sleep(poll)


def _upgrade(engine: Engine) -> None:
    """The columns added since the first version, on a database an older one created."""
    add_missing_columns(engine, Agreement.__table__)  # type: ignore[attr-defined]
    add_missing_columns(engine, Payment.__table__)  # type: ignore[attr-defined]


def _setup(service: Service) -> None:
    _upgrade(service.engine)
    _routes(service)


def build(config: ServiceConfig | None = None) -> Service:
    return create_service(
        config or ServiceConfig.from_env(NAME),
        tables=[Agreement, Payment, Refund, HistoryEntry, Bill],
        setup=_setup,
        background=[auto_signer, auto_payer],
    )
