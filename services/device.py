"""The sandbox device service (terminal management): device models and their inventory of serial
numbers, reservations, MID/TID registration, activation codes, activation and binding of a
terminal to its merchant, test transactions, and switching acquiring on. After go-live, the
merchant's account: acquiring suspended and reinstated, more terminals under its MID, a faulty
terminal swapped (换机), a terminal unbound and sent back, the settlement account re-bound (the
old bindings kept), and the merchant retired (注销) with every TID and its MID.

Every write first "claims" the row it changes with a conditional UPDATE, so the rest of the
transaction runs under that row's write lock (SQLite serialises writers; PostgreSQL locks the
row): two requests can never take the same terminal or allocate two MIDs for one application.
A MID or TID once issued is never issued again, even after it is released (retired).

A released terminal goes back in stock only once it is on the warehouse shelf. Logistics is the
one that knows where a terminal physically is (`GET /whereabouts` there): a release asks it and
leaves a terminal that is with the merchant or in a parcel `returning`, and a check-in job asks
again for every returning terminal until logistics reports it back (its return parcel delivered
to the warehouse, a recalled parcel arrived). Reading, never being told, keeps it simple and
sound: nothing to lose or reorder between the services, and if logistics cannot be reached a
terminal stays `returning` (never wrongly `in_stock`) until it can. A terminal unbound from its
merchant after go-live (swapped out, returned at closure) comes back the same way.

A step the merchant workflow asks for carries `merchant_id` (its MID): an activation it leads to
is called back to the merchant's routes (`/api/merchants/{mid}/activation`), not the
application's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from schemas import steps
from schemas.application import Address, Model
from schemas.identifiers import check_mid, check_tid
from schemas.messages import TerminalActivated
from services.base import (
    IDEMPOTENCY_HEADER,
    Service,
    ServiceConfig,
    ServiceError,
    add_missing_columns,
    callback_path_for,
    create_service,
    enqueue_callback,
    idempotent,
)

log = structlog.get_logger(__name__)

SEED_MODELS: tuple[tuple[str, str, str], ...] = (
    # model code, serial prefix, description
    ("LKL-A8", "A8", "Lakala A8 smart POS"),
    ("LKL-Q5", "Q5", "Lakala Q5 traditional POS"),
    ("SMART-P2", "P2", "Smart P2 handheld POS"),
)
DEFAULT_STOCK = 200
DEFAULT_AUTO_DELAY_MS = 500
DEFAULT_CHECK_IN_MS = 500  # how often returning terminals are looked for at the warehouse
DEFAULT_LOGISTICS_URL = "http://127.0.0.1:8104"
_TID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """SQLite gives datetimes back without their zone; they were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --- tables ----------------------------------------------------------------------------------


class TerminalStatus:
    IN_STOCK = "in_stock"
    RESERVED = "reserved"
    REGISTERED = "registered"
    ACTIVATED = "activated"
    RETURNING = "returning"  # released, not back on the shelf yet (with the merchant, in transit)
    FAULTY = "faulty"  # swapped out: still with the merchant, no TID, to be unbound and returned
    RELEASED = "released"  # a reservation's state; its terminals are in_stock or returning


class MerchantState:
    REGISTERED = "registered"  # acquiring not switched on yet (onboarding)
    ENABLED = "enabled"
    SUSPENDED = "suspended"  # acquiring off until reinstated: its terminals take no payments
    RETIRED = "retired"  # closed for good: the MID and its TIDs are never issued again


class DeviceModel(SQLModel, table=True):
    __tablename__ = "device_models"

    code: str = Field(primary_key=True)
    serial_prefix: str = Field(unique=True)
    description: str = ""


class Terminal(SQLModel, table=True):
    __tablename__ = "device_terminals"

    serial: str = Field(primary_key=True)  # unique by being the key
    model: str = Field(index=True, foreign_key="device_models.code")
    status: str = Field(default=TerminalStatus.IN_STOCK, index=True)
    reservation_id: str | None = Field(default=None, index=True)
    mid: str | None = None
    tid: str | None = None
    activated_at: datetime | None = None
    updated_at: datetime = Field(default_factory=_now)


class Reservation(SQLModel, table=True):
    __tablename__ = "device_reservations"

    id: str = Field(primary_key=True)
    application_id: str = Field(index=True)
    model: str
    quantity: int
    status: str = TerminalStatus.RESERVED  # reserved | registered | released
    mid: str | None = None
    release_reason: str = ""
    # The merchant workflow's MID when it reserved (more terminals, a replacement).
    merchant_id: str | None = None
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class Merchant(SQLModel, table=True):
    __tablename__ = "device_merchants"

    mid: str = Field(primary_key=True)  # never reissued: a retired row stays
    application_id: str = Field(index=True)
    merchant_name: str
    settlement_holder: str = ""
    settlement_bank: str = ""
    settlement_account_last4: str = ""
    install_address: str = ""  # one line
    acquiring_enabled_at: datetime | None = None
    retired_at: datetime | None = None
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    # After go-live (nullable: a table from before them gets them added).
    suspended_at: datetime | None = None
    suspension_reason: str | None = None
    reinstated_at: datetime | None = None
    retirement_reason: str | None = None


def merchant_state(merchant: Merchant) -> str:
    if merchant.retired_at is not None:
        return MerchantState.RETIRED
    if merchant.suspended_at is not None:
        return MerchantState.SUSPENDED
    if merchant.acquiring_enabled_at is not None:
        return MerchantState.ENABLED
    return MerchantState.REGISTERED


class TerminalId(SQLModel, table=True):
    __tablename__ = "device_tids"

    tid: str = Field(primary_key=True)  # never reissued: a retired row stays
    mid: str = Field(index=True)
    serial: str = Field(index=True)
    reservation_id: str = Field(index=True)
    retired_at: datetime | None = None
    created_at: datetime = Field(default_factory=_now)


class ActivationCodeRow(SQLModel, table=True):
    __tablename__ = "device_activation_codes"

    id: int | None = Field(default=None, primary_key=True)
    serial: str = Field(index=True)
    mid: str
    tid: str
    code: str
    issued_at: datetime = Field(default_factory=_now, index=True)
    used_at: datetime | None = None
    revoked_at: datetime | None = None
    # Set when the merchant workflow asked for the code: the activation is called back to it.
    merchant_id: str | None = None


class TestTransaction(SQLModel, table=True):
    __tablename__ = "device_test_transactions"
    __test__ = False  # not a pytest test class

    reference: str = Field(primary_key=True)
    application_id: str = Field(index=True)
    serial: str = Field(index=True)
    mid: str
    tid: str
    approved: bool
    response_code: str
    created_at: datetime = Field(default_factory=_now)


class Swap(SQLModel, table=True):
    """A faulty terminal replaced under the same MID (换机): what the replacement got."""

    __tablename__ = "device_swaps"

    id: str = Field(primary_key=True)
    mid: str = Field(index=True)
    faulty_serial: str = Field(index=True)
    replacement_serial: str = Field(index=True)
    reservation_id: str
    tid: str  # the replacement's
    retired_tid: str | None = None  # the faulty unit's, when it did not move
    created_at: datetime = Field(default_factory=_now)


class Unbinding(SQLModel, table=True):
    """A terminal taken off its merchant after go-live, and why."""

    __tablename__ = "device_unbindings"

    id: int | None = Field(default=None, primary_key=True)
    serial: str = Field(index=True)
    mid: str = Field(index=True)
    tid: str | None = None  # retired with the unbinding
    reason: str
    unbound_at: datetime = Field(default_factory=_now)


class SettlementBinding(SQLModel, table=True):
    """A settlement account a merchant settles to; the earlier ones stay, `unbound_at` set. Only
    the last four digits are known here."""

    __tablename__ = "device_settlement_bindings"

    binding_id: str = Field(primary_key=True)
    mid: str = Field(index=True)
    holder_name: str
    bank_name: str
    account_kind: str = ""  # unknown for the binding made at registration
    account_last4: str = ""
    bound_at: datetime = Field(default_factory=_now)
    unbound_at: datetime | None = None


TABLES: list[type[SQLModel]] = [
    DeviceModel,
    Terminal,
    Reservation,
    Merchant,
    TerminalId,
    ActivationCodeRow,
    TestTransaction,
    Swap,
    Unbinding,
    SettlementBinding,
]
# Tables an older version created, and the nullable columns this one added to them.
UPGRADED: tuple[type[SQLModel], ...] = (Reservation, Merchant, ActivationCodeRow)


# --- request and response bodies (the step's fields; the key travels in the header) -----------

MID_PATTERN = r"^\d{15}$"
# `merchant_id` on a body: the merchant workflow's MID on a step it asks for (after go-live);
# absent on onboarding's steps.


def _payload(body: BaseModel, **extra: str) -> dict[str, Any]:
    """What an idempotency key is bound to: the body without an unset `merchant_id`, so an
    onboarding request fingerprints as it did before the field existed (a key recorded by an
    older version still replays)."""
    data = body.model_dump(mode="json")
    if data.get("merchant_id") is None:
        data.pop("merchant_id", None)
    return {**extra, **data}


def _same_merchant(merchant_id: str | None, mid: str) -> None:
    if merchant_id is not None and merchant_id != mid:
        raise ServiceError(
            422,
            "wrong_merchant",
            f"the step is the merchant {merchant_id}'s, not {mid}'s",
            {"merchant_id": "is not the MID the step is for"},
        )


class ReserveBody(Model):
    application_id: str = PydanticField(min_length=1, max_length=80)
    model: str = PydanticField(min_length=1, max_length=40)
    quantity: int = PydanticField(ge=1, le=100)
    merchant_id: str | None = PydanticField(default=None, pattern=MID_PATTERN)


class RegisterBody(Model):
    application_id: str = PydanticField(min_length=1, max_length=80)
    merchant_name: str = PydanticField(min_length=1, max_length=200)
    serials: list[str] = PydanticField(min_length=1)
    settlement_holder: str = PydanticField(default="", max_length=200)
    settlement_bank: str = PydanticField(default="", max_length=80)
    settlement_account_last4: str = PydanticField(default="", pattern=r"^(\d{4})?$")
    install_address: Address | None = None


class ReleaseBody(Model):
    reason: str = PydanticField(min_length=1, max_length=500)


class IssueCodesBody(Model):
    application_id: str = PydanticField(min_length=1, max_length=80)
    mid: str
    terminals: list[steps.TerminalIds] = PydanticField(min_length=1)
    merchant_id: str | None = PydanticField(default=None, pattern=MID_PATTERN)


class ActivateBody(Model):
    code: str = PydanticField(min_length=1, max_length=20)


class TestTransactionBody(Model):
    __test__ = False  # not a pytest test class

    application_id: str = PydanticField(min_length=1, max_length=80)
    mid: str
    serial: str
    tid: str
    merchant_id: str | None = PydanticField(default=None, pattern=MID_PATTERN)


class AcquiringBody(Model):
    application_id: str = PydanticField(min_length=1, max_length=80)
    tids: list[str] = PydanticField(min_length=1)


class AcquiringChangeBody(Model):
    application_id: str = PydanticField(min_length=1, max_length=80)
    reason: str = PydanticField(min_length=1, max_length=500)
    merchant_id: str | None = PydanticField(default=None, pattern=MID_PATTERN)


class MoreTerminalsBody(Model):
    application_id: str = PydanticField(min_length=1, max_length=80)
    reservation_id: str = PydanticField(min_length=1, max_length=80)
    serials: list[str] = PydanticField(min_length=1)
    merchant_id: str | None = PydanticField(default=None, pattern=MID_PATTERN)


class SwapBody(Model):
    application_id: str = PydanticField(min_length=1, max_length=80)
    faulty_serial: str = PydanticField(min_length=1, max_length=40)
    replacement_serial: str = PydanticField(min_length=1, max_length=40)
    reservation_id: str = PydanticField(min_length=1, max_length=80)
    move_tid: bool
    merchant_id: str | None = PydanticField(default=None, pattern=MID_PATTERN)


class UnbindBody(Model):
    application_id: str = PydanticField(min_length=1, max_length=80)
    mid: str = PydanticField(pattern=MID_PATTERN)
    reason: str = PydanticField(min_length=1, max_length=500)
    merchant_id: str | None = PydanticField(default=None, pattern=MID_PATTERN)


class SettlementBody(Model):
    application_id: str = PydanticField(min_length=1, max_length=80)
    holder_name: str = PydanticField(min_length=1, max_length=200)
    bank_name: str = PydanticField(min_length=1, max_length=80)
    account_kind: str = PydanticField(min_length=1, max_length=40)
    account_last4: str = PydanticField(pattern=r"^\d{4}$")
    merchant_id: str | None = PydanticField(default=None, pattern=MID_PATTERN)


class RetireBody(Model):
    application_id: str = PydanticField(min_length=1, max_length=80)
    reason: str = PydanticField(min_length=1, max_length=500)
    merchant_id: str | None = PydanticField(default=None, pattern=MID_PATTERN)


class ModelStock(Model):
    model: str
    description: str
    in_stock: int
    total: int


class Binding(Model):
    """What an activated terminal is bound to (绑定): the merchant, its account, where it stands."""

    merchant_name: str
    settlement_holder: str
    settlement_bank: str
    settlement_account: str  # masked: only the last four digits are known here
    install_address: str


class TerminalView(Model):
    serial: str
    model: str
    status: str
    reservation_id: str | None
    mid: str | None
    tid: str | None
    activated_at: datetime | None
    bound_to: Binding | None = None


class MerchantTerminalView(Model):
    serial: str
    model: str
    status: str
    tid: str | None
    activated_at: datetime | None
    accepts_payments: bool  # activated, and the merchant's acquiring on and not suspended


class TidView(Model):
    tid: str
    serial: str  # the terminal it is (or was last) on
    retired_at: datetime | None


class SettlementView(Model):
    binding_id: str | None  # None: the account given at registration, never re-bound
    holder_name: str
    bank_name: str
    account_kind: str
    account: str  # masked: only the last four digits are known here
    bound_at: datetime
    unbound_at: datetime | None


class MerchantView(Model):
    mid: str
    application_id: str
    merchant_name: str
    state: str  # registered | enabled | suspended | retired
    acquiring_enabled_at: datetime | None
    suspended_at: datetime | None
    suspension_reason: str | None
    retired_at: datetime | None
    retirement_reason: str | None
    terminals: list[MerchantTerminalView]
    tids: list[TidView]  # every TID ever issued under the MID
    retired_tids: list[str]
    settlement: SettlementView | None  # the current binding
    past_settlements: list[SettlementView]  # earlier bindings, newest first


def _view(terminal: Terminal, merchant: Merchant | None = None) -> TerminalView:
    bound = merchant is not None and terminal.activated_at is not None
    return TerminalView(
        bound_to=Binding(
            merchant_name=merchant.merchant_name,
            settlement_holder=merchant.settlement_holder,
            settlement_bank=merchant.settlement_bank,
            settlement_account=f"****{merchant.settlement_account_last4}",
            install_address=merchant.install_address,
        )
        if bound and merchant is not None
        else None,
        serial=terminal.serial,
        model=terminal.model,
        status=terminal.status,
        reservation_id=terminal.reservation_id,
        mid=terminal.mid,
        tid=terminal.tid,
        activated_at=_utc(terminal.activated_at) if terminal.activated_at else None,
    )


# --- seeding ---------------------------------------------------------------------------------


def _stock_per_model(config: ServiceConfig) -> int:
    raw = config.options.get("stock_per_model") or os.environ.get("POSFLOW_DEVICE_STOCK")
    return int(raw) if raw else DEFAULT_STOCK


def seed(service: Service) -> None:
    """Models and their inventory, on first start only (an empty models table)."""
    with service.session() as session:
        if session.exec(select(DeviceModel)).first() is not None:
            return
        stock = _stock_per_model(service.config)
        for code, prefix, description in SEED_MODELS:
            session.add(DeviceModel(code=code, serial_prefix=prefix, description=description))
            session.add_all(
                Terminal(serial=f"{prefix}{2400000001 + i:010d}", model=code) for i in range(stock)
            )
        session.commit()


# --- claiming rows: the conditional UPDATE that takes the write lock first ---------------------


def _claim_reservation(session: Session, reservation_id: str) -> Reservation:
    claimed = session.exec(
        update(Reservation)
        .where(col(Reservation.id) == reservation_id)
        .values(updated_at=_now())
        .execution_options(synchronize_session=False)
    )
    reservation = session.get(Reservation, reservation_id) if claimed.rowcount else None
    if reservation is None:
        raise ServiceError(404, "unknown_reservation", f"no reservation {reservation_id}")
    return reservation


def _claim_terminal(session: Session, serial: str) -> Terminal:
    claimed = session.exec(
        update(Terminal)
        .where(col(Terminal.serial) == serial)
        .values(updated_at=_now())
        .execution_options(synchronize_session=False)
    )
    terminal = session.get(Terminal, serial) if claimed.rowcount else None
    if terminal is None:
        raise ServiceError(404, "unknown_terminal", f"no terminal {serial}", {"serial": "unknown"})
    return terminal


def _claim_merchant(session: Session, mid: str) -> Merchant:
    claimed = session.exec(
        update(Merchant)
        .where(col(Merchant.mid) == mid, col(Merchant.retired_at).is_(None))
        .values(updated_at=_now())
        .execution_options(synchronize_session=False)
    )
    merchant = session.get(Merchant, mid) if claimed.rowcount else None
    if merchant is None:
        raise ServiceError(404, "unknown_merchant", f"no active merchant {mid}", {"mid": "unknown"})
    return merchant


# --- the operations --------------------------------------------------------------------------


def reserve(session: Session, body: ReserveBody) -> steps.TerminalsReserved:
    if session.get(DeviceModel, body.model) is None:
        raise ServiceError(
            404, "unknown_model", f"no device model {body.model}", {"model": "unknown"}
        )
    reservation_id = "RS-" + uuid.uuid4().hex[:16].upper()
    available = (
        select(Terminal.serial)
        .where(Terminal.model == body.model, Terminal.status == TerminalStatus.IN_STOCK)
        .order_by(col(Terminal.serial))
        .limit(body.quantity)
    )
    # One statement: it takes the write lock and only touches terminals still in stock.
    taken = session.exec(
        update(Terminal)
        .where(col(Terminal.serial).in_(available.scalar_subquery()))
        .where(col(Terminal.status) == TerminalStatus.IN_STOCK)
        .values(status=TerminalStatus.RESERVED, reservation_id=reservation_id, updated_at=_now())
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken < body.quantity:
        session.rollback()
        raise ServiceError(
            409,
            "out_of_stock",
            f"{body.model}: {body.quantity} requested, {taken} available",
            {"model": body.model, "available": str(taken)},
        )
    session.add(
        Reservation(
            id=reservation_id,
            application_id=body.application_id,
            model=body.model,
            quantity=body.quantity,
            merchant_id=body.merchant_id,
        )
    )
    serials = session.exec(
        select(Terminal.serial)
        .where(Terminal.reservation_id == reservation_id)
        .order_by(col(Terminal.serial))
    ).all()
    return steps.TerminalsReserved(reservation_id=reservation_id, serials=list(serials))


def _draw_mid() -> str:
    return "898" + "".join(secrets.choice("0123456789") for _ in range(12))


def _draw_tid() -> str:
    return "".join(secrets.choice(_TID_ALPHABET) for _ in range(8))


def _new_mid(session: Session) -> str:
    """A MID never issued before: a retired merchant's row stays, so its MID is never drawn."""
    while True:
        mid = _draw_mid()
        if check_mid(mid) is not None:  # the generator's own guard
            raise RuntimeError(f"generated MID {mid!r} is malformed")
        if session.get(Merchant, mid) is None:
            return mid


def _new_tid(session: Session) -> str:
    """A TID never issued before: a retired TID's row stays (a moved one keeps its row)."""
    while True:
        tid = _draw_tid()
        if check_tid(tid) is not None:
            raise RuntimeError(f"generated TID {tid!r} is malformed")
        if session.get(TerminalId, tid) is None:
            return tid


def _allocate_tid(session: Session, terminal: Terminal, mid: str, reservation_id: str) -> str:
    """Register `terminal` under `mid` with a new TID, recorded for good."""
    tid = _new_tid(session)
    terminal.tid = tid
    terminal.mid = mid
    terminal.status = TerminalStatus.REGISTERED
    terminal.updated_at = _now()
    session.add(TerminalId(tid=tid, mid=mid, serial=terminal.serial, reservation_id=reservation_id))
    session.add(terminal)
    session.flush()
    return tid


def register(
    session: Session, reservation_id: str, body: RegisterBody
) -> steps.TerminalsRegistered:
    reservation = _claim_reservation(session, reservation_id)
    if reservation.status == TerminalStatus.RELEASED:
        raise ServiceError(409, "reservation_released", f"{reservation_id} was released")
    if reservation.application_id != body.application_id:
        raise ServiceError(
            409,
            "wrong_application",
            f"{reservation_id} belongs to another application",
            {"application_id": "does not own this reservation"},
        )
    terminals = session.exec(
        select(Terminal)
        .where(Terminal.reservation_id == reservation_id)
        .order_by(col(Terminal.serial))
    ).all()
    if sorted(body.serials) != [t.serial for t in terminals]:
        raise ServiceError(
            422,
            "serials_mismatch",
            "the serials are not the reservation's",
            {"serials": f"expected the {len(terminals)} serials of {reservation_id}"},
        )
    merchant = session.exec(
        select(Merchant).where(
            Merchant.application_id == body.application_id, col(Merchant.retired_at).is_(None)
        )
    ).first()
    if merchant is None:
        merchant = Merchant(
            mid=_new_mid(session),
            application_id=body.application_id,
            merchant_name=body.merchant_name,
            settlement_holder=body.settlement_holder,
            settlement_bank=body.settlement_bank,
            settlement_account_last4=body.settlement_account_last4,
            install_address=body.install_address.one_line() if body.install_address else "",
        )
        session.add(merchant)
        session.flush()
    ids: list[steps.TerminalIds] = []
    for terminal in terminals:
        tid = terminal.tid or _allocate_tid(session, terminal, merchant.mid, reservation_id)
        ids.append(steps.TerminalIds(serial=terminal.serial, tid=tid))
    reservation.mid = merchant.mid
    reservation.status = TerminalStatus.REGISTERED
    session.add(reservation)
    return steps.TerminalsRegistered(mid=merchant.mid, terminals=ids)


def release(
    session: Session,
    reservation_id: str,
    body: ReleaseBody,
    on_shelf: dict[str, bool] | None = None,
) -> steps.Undone:
    """Free the reservation, its MID/TIDs and codes. Its terminals go back `in_stock` where
    `on_shelf` (logistics' whereabouts) says they are at the warehouse, else `returning`: the
    check-in job puts them in stock once they are back. A second release changes nothing."""
    reservation = _claim_reservation(session, reservation_id)
    if reservation.status == TerminalStatus.RELEASED:
        return steps.Undone(reference=reservation_id, detail="already released")
    now = _now()
    terminals = session.exec(
        select(Terminal).where(Terminal.reservation_id == reservation_id)
    ).all()
    back = 0
    for terminal in terminals:
        # Off the merchant; an activated terminal is deactivated and unbound.
        home = bool(on_shelf and on_shelf.get(terminal.serial))
        back += home
        terminal.status = TerminalStatus.IN_STOCK if home else TerminalStatus.RETURNING
        terminal.reservation_id = None
        terminal.mid = None
        terminal.tid = None
        terminal.activated_at = None
        terminal.updated_at = now
        session.add(terminal)
    for tid in session.exec(
        select(TerminalId).where(
            TerminalId.reservation_id == reservation_id, col(TerminalId.retired_at).is_(None)
        )
    ).all():
        tid.retired_at = now
        session.add(tid)
    serials = [t.serial for t in terminals]
    if serials:
        session.exec(
            update(ActivationCodeRow)
            .where(
                col(ActivationCodeRow.serial).in_(serials),
                col(ActivationCodeRow.used_at).is_(None),
                col(ActivationCodeRow.revoked_at).is_(None),
            )
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
    retired_mid = ""
    if reservation.mid is not None:
        others = session.exec(
            select(func.count())
            .select_from(Reservation)
            .where(
                Reservation.mid == reservation.mid,
                Reservation.id != reservation_id,
                Reservation.status != TerminalStatus.RELEASED,
            )
        ).one()
        merchant = session.get(Merchant, reservation.mid)
        if not others and merchant is not None and merchant.retired_at is None:
            merchant.retired_at = now
            session.add(merchant)
            retired_mid = f", MID {merchant.mid} retired"
    reservation.status = TerminalStatus.RELEASED
    reservation.release_reason = body.reason
    session.add(reservation)
    away = len(terminals) - back
    detail = f"{back} terminal(s) back in stock"
    if away:
        detail += f", {away} returning (in stock once back at the warehouse)"
    return steps.Undone(reference=reservation_id, detail=detail + retired_mid)


def issue_codes(session: Session, body: IssueCodesBody) -> steps.ActivationCodesIssued:
    _same_merchant(body.merchant_id, body.mid)
    merchant = _claim_merchant(session, body.mid)
    codes: list[steps.ActivationCode] = []
    now = _now()
    for requested in body.terminals:
        terminal = session.get(Terminal, requested.serial)
        if terminal is None or terminal.mid != merchant.mid or terminal.tid != requested.tid:
            raise ServiceError(
                409,
                "not_registered",
                f"terminal {requested.serial} is not registered to {body.mid} as {requested.tid}",
                {"terminals": f"{requested.serial} is not registered to this merchant"},
            )
        # A new code replaces any earlier one not yet used.
        session.exec(
            update(ActivationCodeRow)
            .where(
                col(ActivationCodeRow.serial) == terminal.serial,
                col(ActivationCodeRow.used_at).is_(None),
                col(ActivationCodeRow.revoked_at).is_(None),
            )
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        code = f"{secrets.randbelow(1_000_000):06d}"
        session.add(
            ActivationCodeRow(
                serial=terminal.serial,
                mid=merchant.mid,
                tid=requested.tid,
                code=code,
                issued_at=now,
                merchant_id=body.merchant_id,
            )
        )
        codes.append(steps.ActivationCode(serial=terminal.serial, code=code))
    return steps.ActivationCodesIssued(codes=codes)


def activate(session: Session, service_name: str, serial: str, code: str) -> TerminalView:
    """The merchant enters the code on the terminal: bind it to the merchant, call back."""
    terminal = _claim_terminal(session, serial)
    issued = session.exec(
        select(ActivationCodeRow)
        .where(ActivationCodeRow.serial == serial, col(ActivationCodeRow.revoked_at).is_(None))
        .order_by(col(ActivationCodeRow.id).desc())
    ).first()
    if issued is None or not secrets.compare_digest(issued.code, code):
        raise ServiceError(
            422, "invalid_code", "the activation code is not right", {"code": "does not match"}
        )
    if terminal.status == TerminalStatus.ACTIVATED:
        if issued.used_at is None:
            issued.used_at = _now()
            session.add(issued)
        return _view(terminal)  # entered again: already done, no second callback
    if terminal.mid != issued.mid or terminal.tid != issued.tid:
        raise ServiceError(409, "not_registered", f"terminal {serial} is no longer registered")
    reservation = session.get(Reservation, terminal.reservation_id or "")
    if reservation is None:
        raise ServiceError(409, "not_reserved", f"terminal {serial} is not reserved")
    now = _now()
    issued.used_at = now
    terminal.status = TerminalStatus.ACTIVATED
    terminal.activated_at = now
    terminal.updated_at = now
    session.add(issued)
    session.add(terminal)
    enqueue_callback(
        session,
        service_name,
        callback_path_for(reservation.application_id, issued.merchant_id, "activation"),
        TerminalActivated(event_id=str(uuid.uuid4()), serial=serial, tid=issued.tid),
    )
    return _view(terminal)


def test_transaction(session: Session, body: TestTransactionBody) -> steps.TestTransactionResult:
    _same_merchant(body.merchant_id, body.mid)
    terminal = session.get(Terminal, body.serial)
    if terminal is None:
        raise ServiceError(
            404, "unknown_terminal", f"no terminal {body.serial}", {"serial": "unknown"}
        )
    merchant = session.get(Merchant, body.mid)
    if terminal.mid != body.mid or terminal.tid != body.tid:
        response_code = "14"  # not bound to this MID/TID
    elif terminal.status != TerminalStatus.ACTIVATED:
        response_code = "05"  # not activated
    elif merchant is not None and not _may_transact(merchant):
        response_code = "62"  # restricted: the merchant's acquiring is suspended (or closed)
    else:
        response_code = "00"
    result = steps.TestTransactionResult(
        serial=body.serial,
        approved=response_code == "00",
        reference="TX" + uuid.uuid4().hex[:12].upper(),
        response_code=response_code,
    )
    session.add(
        TestTransaction(
            reference=result.reference,
            application_id=body.application_id,
            serial=body.serial,
            mid=body.mid,
            tid=body.tid,
            approved=result.approved,
            response_code=response_code,
        )
    )
    return result


def enable_acquiring(session: Session, mid: str, body: AcquiringBody) -> steps.AcquiringEnabled:
    merchant = _claim_merchant(session, mid)
    not_ready: list[str] = []
    for tid in body.tids:
        row = session.get(TerminalId, tid)
        terminal = session.get(Terminal, row.serial) if row is not None else None
        if (
            row is None
            or row.mid != mid
            or row.retired_at is not None
            or terminal is None
            or terminal.tid != tid
            or terminal.status != TerminalStatus.ACTIVATED
        ):
            not_ready.append(tid)
    if not_ready:
        raise ServiceError(
            409,
            "terminals_not_activated",
            f"not every terminal of {mid} is activated",
            {"tids": ", ".join(not_ready)},
        )
    if merchant.acquiring_enabled_at is None:
        merchant.acquiring_enabled_at = _now()
        session.add(merchant)
    return steps.AcquiringEnabled(enabled_at=_utc(merchant.acquiring_enabled_at))


# --- after go-live: the merchant's account -----------------------------------------------------


def _may_transact(merchant: Merchant) -> bool:
    """Whether the merchant's terminals take payments: not while suspended or once retired."""
    return merchant_state(merchant) not in (MerchantState.SUSPENDED, MerchantState.RETIRED)


def _claim_account(
    session: Session, mid: str, application_id: str, *, retired_too: bool = False
) -> Merchant:
    """The merchant's row, write-locked, for a change after go-live: 404 unknown, 409 another
    application's, 409 retired (unless `retired_too`: closing again answers as the first did)."""
    claimed = session.exec(
        update(Merchant)
        .where(col(Merchant.mid) == mid)
        .values(updated_at=_now())
        .execution_options(synchronize_session=False)
    )
    merchant = session.get(Merchant, mid) if claimed.rowcount else None
    if merchant is None:
        raise ServiceError(404, "unknown_merchant", f"no merchant {mid}", {"mid": "unknown"})
    if merchant.application_id != application_id:
        raise ServiceError(
            409,
            "wrong_application",
            f"{mid} belongs to another application",
            {"application_id": "does not own this merchant"},
        )
    if merchant.retired_at is not None and not retired_too:
        raise ServiceError(
            409, "merchant_retired", f"{mid} was retired", {"mid": "retired: takes no changes"}
        )
    return merchant


def _claim_reservation_for(
    session: Session, reservation_id: str, merchant: Merchant, application_id: str
) -> Reservation:
    """A reservation to bind under `merchant`: not released, the application's, not another
    merchant's."""
    reservation = _claim_reservation(session, reservation_id)
    if reservation.status == TerminalStatus.RELEASED:
        raise ServiceError(409, "reservation_released", f"{reservation_id} was released")
    if reservation.application_id != application_id:
        raise ServiceError(
            409,
            "wrong_application",
            f"{reservation_id} belongs to another application",
            {"application_id": "does not own this reservation"},
        )
    if reservation.mid not in (None, merchant.mid) or reservation.merchant_id not in (
        None,
        merchant.mid,
    ):
        raise ServiceError(
            409,
            "reservation_taken",
            f"{reservation_id} is another merchant's",
            {"reservation_id": "reserved for another merchant"},
        )
    return reservation


def change_acquiring(
    session: Session, mid: str, body: AcquiringChangeBody, suspend: bool
) -> steps.AcquiringChanged:
    """Suspend or reinstate acquiring. Either is said once: suspending a suspended merchant or
    reinstating an enabled one answers with when it became so, and changes nothing."""
    _same_merchant(body.merchant_id, mid)
    merchant = _claim_account(session, mid, body.application_id)
    if merchant.acquiring_enabled_at is None:
        raise ServiceError(
            409, "acquiring_not_enabled", f"acquiring was never switched on for {mid}"
        )
    now = _now()
    if suspend:
        if merchant.suspended_at is None:
            merchant.suspended_at = now
            merchant.suspension_reason = body.reason
            session.add(merchant)
        return steps.AcquiringChanged(
            state=MerchantState.SUSPENDED, changed_at=_utc(merchant.suspended_at)
        )
    if merchant.suspended_at is not None:
        merchant.suspended_at = None
        merchant.suspension_reason = None
        merchant.reinstated_at = now
        session.add(merchant)
    return steps.AcquiringChanged(
        state=MerchantState.ENABLED,
        changed_at=_utc(merchant.reinstated_at or merchant.acquiring_enabled_at),
    )


def register_more(session: Session, mid: str, body: MoreTerminalsBody) -> steps.TerminalsRegistered:
    """Bind a reservation's terminals under an existing MID, each with a new TID; again, the
    same TIDs."""
    _same_merchant(body.merchant_id, mid)
    merchant = _claim_account(session, mid, body.application_id)
    reservation = _claim_reservation_for(
        session, body.reservation_id, merchant, body.application_id
    )
    terminals = session.exec(
        select(Terminal)
        .where(Terminal.reservation_id == reservation.id)
        .order_by(col(Terminal.serial))
    ).all()
    if sorted(body.serials) != [t.serial for t in terminals]:
        raise ServiceError(
            422,
            "serials_mismatch",
            "the serials are not the reservation's",
            {"serials": f"expected the {len(terminals)} serials of {reservation.id}"},
        )
    ids = [
        steps.TerminalIds(
            serial=t.serial, tid=t.tid or _allocate_tid(session, t, merchant.mid, reservation.id)
        )
        for t in terminals
    ]
    reservation.mid = merchant.mid
    reservation.status = TerminalStatus.REGISTERED
    session.add(reservation)
    return steps.TerminalsRegistered(mid=merchant.mid, terminals=ids)


def _revoke_codes(session: Session, serials: list[str], now: datetime) -> None:
    session.exec(
        update(ActivationCodeRow)
        .where(
            col(ActivationCodeRow.serial).in_(serials),
            col(ActivationCodeRow.used_at).is_(None),
            col(ActivationCodeRow.revoked_at).is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def swap(session: Session, mid: str, body: SwapBody) -> steps.TerminalSwapped:
    """Replace a faulty terminal (换机): the replacement, from the reservation, is registered
    under the same MID with the faulty unit's TID (`move_tid`) or a new one, the old TID then
    retired for good. The faulty unit stays with the merchant as `faulty`, without a TID, until
    it is unbound. The same swap asked again answers as the first did."""
    _same_merchant(body.merchant_id, mid)
    merchant = _claim_account(session, mid, body.application_id)
    done = session.exec(
        select(Swap).where(
            Swap.mid == mid,
            Swap.faulty_serial == body.faulty_serial,
            Swap.replacement_serial == body.replacement_serial,
        )
    ).first()
    if done is not None:
        return steps.TerminalSwapped(
            serial=done.replacement_serial, tid=done.tid, retired_tid=done.retired_tid
        )
    if body.faulty_serial == body.replacement_serial:
        raise ServiceError(
            422,
            "invalid_request",
            "a terminal cannot replace itself",
            {"replacement_serial": "is the faulty serial"},
        )
    reservation = _claim_reservation_for(
        session, body.reservation_id, merchant, body.application_id
    )
    faulty = _claim_terminal(session, body.faulty_serial)
    old = session.get(TerminalId, faulty.tid) if faulty.tid else None
    if faulty.mid != mid or old is None:
        raise ServiceError(
            409,
            "not_bound",
            f"terminal {body.faulty_serial} is not bound to {mid}",
            {"faulty_serial": "not this merchant's terminal"},
        )
    replacement = _claim_terminal(session, body.replacement_serial)
    if replacement.reservation_id != reservation.id:
        raise ServiceError(
            422,
            "serials_mismatch",
            f"{body.replacement_serial} is not in {reservation.id}",
            {"replacement_serial": f"not one of the serials of {reservation.id}"},
        )
    if replacement.status != TerminalStatus.RESERVED or replacement.tid is not None:
        raise ServiceError(
            409,
            "replacement_taken",
            f"{body.replacement_serial} is already registered",
            {"replacement_serial": "already registered"},
        )
    now = _now()
    retired_tid: str | None = None
    if body.move_tid:
        tid = old.tid
        old.serial = replacement.serial
        old.reservation_id = reservation.id
        session.add(old)
        replacement.tid = tid
        replacement.mid = mid
        replacement.status = TerminalStatus.REGISTERED
        replacement.updated_at = now
        session.add(replacement)
    else:
        old.retired_at = now
        retired_tid = old.tid
        session.add(old)
        tid = _allocate_tid(session, replacement, mid, reservation.id)
    faulty.status = TerminalStatus.FAULTY
    faulty.tid = None
    faulty.activated_at = None
    faulty.updated_at = now
    session.add(faulty)
    _revoke_codes(session, [faulty.serial], now)
    reservation.mid = mid
    reservation.status = TerminalStatus.REGISTERED
    session.add(reservation)
    session.add(
        Swap(
            id="SW-" + uuid.uuid4().hex[:16].upper(),
            mid=mid,
            faulty_serial=faulty.serial,
            replacement_serial=replacement.serial,
            reservation_id=reservation.id,
            tid=tid,
            retired_tid=retired_tid,
            created_at=now,
        )
    )
    return steps.TerminalSwapped(serial=replacement.serial, tid=tid, retired_tid=retired_tid)


def _unbind(
    session: Session, terminal: Terminal, reason: str, home: bool, now: datetime
) -> Unbinding:
    """Take `terminal` off its merchant: its TID retired, its codes revoked, `in_stock` if
    logistics has it on the shelf (`home`) else `returning` until the check-in finds it there."""
    mid = terminal.mid or ""
    tid = terminal.tid
    if tid is not None:
        row = session.get(TerminalId, tid)
        if row is not None and row.retired_at is None:
            row.retired_at = now
            session.add(row)
    _revoke_codes(session, [terminal.serial], now)
    terminal.status = TerminalStatus.IN_STOCK if home else TerminalStatus.RETURNING
    terminal.reservation_id = None
    terminal.mid = None
    terminal.tid = None
    terminal.activated_at = None
    terminal.updated_at = now
    session.add(terminal)
    record = Unbinding(serial=terminal.serial, mid=mid, tid=tid, reason=reason, unbound_at=now)
    session.add(record)
    return record


def unbind(
    session: Session, serial: str, body: UnbindBody, on_shelf: dict[str, bool] | None = None
) -> steps.Undone:
    """Unbind a terminal from its merchant (swapped out, returned at closure); once unbound,
    asked again, it says so."""
    _same_merchant(body.merchant_id, body.mid)
    terminal = _claim_terminal(session, serial)
    if terminal.mid != body.mid:
        earlier = session.exec(
            select(Unbinding)
            .where(Unbinding.serial == serial, Unbinding.mid == body.mid)
            .order_by(col(Unbinding.id).desc())
        ).first()
        if earlier is not None:
            return steps.Undone(reference=serial, detail=f"already unbound from MID {body.mid}")
        raise ServiceError(
            409,
            "not_bound",
            f"terminal {serial} is not bound to {body.mid}",
            {"mid": "not this terminal's merchant"},
        )
    merchant = session.get(Merchant, body.mid)
    if merchant is not None and merchant.application_id != body.application_id:
        raise ServiceError(
            409,
            "wrong_application",
            f"{body.mid} belongs to another application",
            {"application_id": "does not own this merchant"},
        )
    home = bool(on_shelf and on_shelf.get(serial))
    record = _unbind(session, terminal, body.reason, home, _now())
    detail = f"unbound from MID {body.mid}"
    if record.tid:
        detail += f", TID {record.tid} retired"
    detail += ", back in stock" if home else ", returning (in stock once back at the warehouse)"
    return steps.Undone(reference=serial, detail=detail)


def _registration_binding(merchant: Merchant) -> SettlementBinding | None:
    """The account given at registration, as a binding (the merchant's own columns)."""
    if not (merchant.settlement_holder or merchant.settlement_account_last4):
        return None
    return SettlementBinding(
        binding_id="SB-" + uuid.uuid4().hex[:16].upper(),
        mid=merchant.mid,
        holder_name=merchant.settlement_holder,
        bank_name=merchant.settlement_bank,
        account_last4=merchant.settlement_account_last4,
        bound_at=_utc(merchant.created_at),
    )


def bind_settlement(session: Session, mid: str, body: SettlementBody) -> steps.SettlementBound:
    """Settle to a new account (重新绑定): the current binding is ended and kept; binding the
    account already bound changes nothing."""
    _same_merchant(body.merchant_id, mid)
    merchant = _claim_account(session, mid, body.application_id)
    current = session.exec(
        select(SettlementBinding).where(
            SettlementBinding.mid == mid, col(SettlementBinding.unbound_at).is_(None)
        )
    ).first()
    if current is None:
        # The first re-binding: the account given at registration becomes history.
        current = _registration_binding(merchant)
    wanted = (body.holder_name, body.bank_name, body.account_kind, body.account_last4)
    if current is not None and wanted == (
        current.holder_name,
        current.bank_name,
        current.account_kind,
        current.account_last4,
    ):
        session.add(current)
        return steps.SettlementBound(binding_id=current.binding_id, bound_at=_utc(current.bound_at))
    now = _now()
    if current is not None:
        current.unbound_at = now
        session.add(current)
    binding = SettlementBinding(
        binding_id="SB-" + uuid.uuid4().hex[:16].upper(),
        mid=mid,
        holder_name=body.holder_name,
        bank_name=body.bank_name,
        account_kind=body.account_kind,
        account_last4=body.account_last4,
        bound_at=now,
    )
    session.add(binding)
    merchant.settlement_holder = body.holder_name
    merchant.settlement_bank = body.bank_name
    merchant.settlement_account_last4 = body.account_last4
    session.add(merchant)
    return steps.SettlementBound(binding_id=binding.binding_id, bound_at=now)


def _tids_of(session: Session, mid: str) -> list[TerminalId]:
    return list(
        session.exec(
            select(TerminalId)
            .where(TerminalId.mid == mid)
            .order_by(col(TerminalId.created_at), col(TerminalId.tid))
        ).all()
    )


def retire(
    session: Session, mid: str, body: RetireBody, on_shelf: dict[str, bool] | None = None
) -> steps.MerchantRetired:
    """Close the merchant (注销): acquiring off for good, every terminal still with it unbound
    (back in stock once at the warehouse), every TID and the MID retired, never issued again.
    Retiring again answers as the first time."""
    _same_merchant(body.merchant_id, mid)
    merchant = _claim_account(session, mid, body.application_id, retired_too=True)
    if merchant.retired_at is None:
        now = _now()
        for terminal in session.exec(select(Terminal).where(Terminal.mid == mid)).all():
            home = bool(on_shelf and on_shelf.get(terminal.serial))
            _unbind(session, terminal, f"merchant retired: {body.reason}", home, now)
        for row in _tids_of(session, mid):
            if row.retired_at is None:
                row.retired_at = now
                session.add(row)
        merchant.retired_at = now
        merchant.retirement_reason = body.reason
        session.add(merchant)
        session.flush()
    return steps.MerchantRetired(
        mid=mid,
        retired_tids=[row.tid for row in _tids_of(session, mid)],
        retired_at=_utc(merchant.retired_at),
    )


def _settlement_view(binding: SettlementBinding) -> SettlementView:
    return SettlementView(
        binding_id=binding.binding_id,
        holder_name=binding.holder_name,
        bank_name=binding.bank_name,
        account_kind=binding.account_kind,
        account=f"****{binding.account_last4}",
        bound_at=_utc(binding.bound_at),
        unbound_at=_utc(binding.unbound_at) if binding.unbound_at else None,
    )


def merchant_view(session: Session, mid: str) -> MerchantView:
    merchant = session.get(Merchant, mid)
    if merchant is None:
        raise ServiceError(404, "unknown_merchant", f"no merchant {mid}", {"mid": "unknown"})
    may_transact = merchant_state(merchant) == MerchantState.ENABLED
    terminals = session.exec(
        select(Terminal).where(Terminal.mid == mid).order_by(col(Terminal.serial))
    ).all()
    tids = _tids_of(session, mid)
    bindings = session.exec(
        select(SettlementBinding)
        .where(SettlementBinding.mid == mid)
        .order_by(col(SettlementBinding.bound_at).desc())
    ).all()
    current = next((b for b in bindings if b.unbound_at is None), None)
    settlement = _settlement_view(current) if current is not None else None
    if not bindings and (registered := _registration_binding(merchant)) is not None:
        # Never re-bound: the account given at registration, which has no binding of its own.
        settlement = _settlement_view(registered).model_copy(update={"binding_id": None})
    return MerchantView(
        mid=merchant.mid,
        application_id=merchant.application_id,
        merchant_name=merchant.merchant_name,
        state=merchant_state(merchant),
        acquiring_enabled_at=_utc(merchant.acquiring_enabled_at)
        if merchant.acquiring_enabled_at
        else None,
        suspended_at=_utc(merchant.suspended_at) if merchant.suspended_at else None,
        suspension_reason=merchant.suspension_reason,
        retired_at=_utc(merchant.retired_at) if merchant.retired_at else None,
        retirement_reason=merchant.retirement_reason,
        terminals=[
            MerchantTerminalView(
                serial=t.serial,
                model=t.model,
                status=t.status,
                tid=t.tid,
                activated_at=_utc(t.activated_at) if t.activated_at else None,
                accepts_payments=may_transact and t.status == TerminalStatus.ACTIVATED,
            )
            for t in terminals
        ],
        tids=[
            TidView(
                tid=row.tid,
                serial=row.serial,
                retired_at=_utc(row.retired_at) if row.retired_at else None,
            )
            for row in tids
        ],
        retired_tids=[row.tid for row in tids if row.retired_at is not None],
        settlement=settlement,
        past_settlements=[_settlement_view(b) for b in bindings if b.unbound_at is not None],
    )


# --- back on the shelf: what logistics says about returning terminals -------------------------


def logistics_url(config: ServiceConfig) -> str:
    """`logistics_url` option, else `POSFLOW_LOGISTICS_URL`, else the embedded stack's port."""
    url = config.options.get("logistics_url") or os.environ.get("POSFLOW_LOGISTICS_URL")
    return (url or DEFAULT_LOGISTICS_URL).rstrip("/")


def on_shelf(config: ServiceConfig, serials: list[str], timeout: float = 3.0) -> dict[str, bool]:
    """Which of `serials` logistics reports at the warehouse; {} when it cannot say (down, or an
    answer not understood): then none is taken to be there."""
    found: dict[str, bool] = {}
    for start in range(0, len(serials), 200):
        batch = serials[start : start + 200]
        try:
            response = httpx.get(
                f"{logistics_url(config)}/whereabouts",
                params=[("serial", s) for s in batch],
                timeout=timeout,
            )
            response.raise_for_status()
            for row in response.json()["terminals"]:
                found[str(row["serial"])] = bool(row["at_warehouse"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
            log.warning("whereabouts_unknown", error=f"{type(err).__name__}: {err}")
            return {}
    return found


def check_in(service: Service) -> int:
    """Put back in stock every returning terminal logistics reports at the warehouse; returns
    how many. Only a terminal still `returning` changes (the UPDATE says so)."""
    with service.session() as session:
        returning = list(
            session.exec(
                select(Terminal.serial)
                .where(Terminal.status == TerminalStatus.RETURNING)
                .order_by(col(Terminal.updated_at))
                .limit(1000)
            ).all()
        )
    if not returning:
        return 0
    back = [serial for serial, home in on_shelf(service.config, returning).items() if home]
    if not back:
        return 0
    with service.session() as session:
        count = session.exec(
            update(Terminal)
            .where(col(Terminal.serial).in_(back), col(Terminal.status) == TerminalStatus.RETURNING)
            .values(status=TerminalStatus.IN_STOCK, updated_at=_now())
            .execution_options(synchronize_session=False)
        ).rowcount
        session.commit()
    log.info("terminals_checked_in", count=count, serials=back)
    return int(count)


async def check_in_returns(service: Service) -> None:
    """Always on: a released terminal out with a merchant comes back into stock by this job."""
    raw = service.config.options.get("check_in_interval_ms") or os.environ.get(
        "POSFLOW_DEVICE_CHECK_IN_MS", str(DEFAULT_CHECK_IN_MS)
    )
    interval = max(float(raw) / 1000, 0.02)
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(check_in, service)
        except Exception:  # a database hiccup: the next pass tries again
            log.exception("check_in_failed")


# --- auto-activation (demo) ------------------------------------------------------------------


def _auto_settings(config: ServiceConfig) -> tuple[bool, float]:
    enabled = (
        config.options.get("auto_activate", os.environ.get("POSFLOW_DEVICE_AUTO", "false"))
    ).lower() == "true"
    delay_ms = config.options.get(
        "auto_delay_ms", os.environ.get("POSFLOW_DEVICE_AUTO_DELAY_MS", str(DEFAULT_AUTO_DELAY_MS))
    )
    return enabled, float(delay_ms) / 1000


def activate_due(service: Service, delay: float) -> int:
    """Activate every terminal whose code was issued more than `delay` seconds ago, as if the
    merchant had entered it; returns how many were activated."""
    cutoff = _now() - timedelta(seconds=delay)
    with service.session() as session:
        due = session.exec(
            select(ActivationCodeRow.serial, ActivationCodeRow.code).where(
                col(ActivationCodeRow.used_at).is_(None),
                col(ActivationCodeRow.revoked_at).is_(None),
                col(ActivationCodeRow.issued_at) <= cutoff,
            )
        ).all()
    done = 0
    for serial, code in due:
        with service.session() as session:
            try:
                activate(session, service.config.name, serial, code)
                session.commit()
                done += 1
            except ServiceError as err:
                log.warning("auto_activation_refused", serial=serial, error=err.error)
    return done


async def auto_activation(service: Service) -> None:
    enabled, delay = _auto_settings(service.config)
    if not enabled:
        return
    log.info("auto_activation_on", delay_seconds=delay)
    while True:
        try:
            await asyncio.to_thread(activate_due, service, delay)
        except Exception:  # keep the demo job alive through a transient database error
            log.exception("auto_activation_failed")
        await asyncio.sleep(min(max(delay / 2, 0.05), 1.0))


# --- the app ---------------------------------------------------------------------------------


def _once(
    service: Service,
    key: str | None,
    payload: BaseModel | dict[str, Any],
    write: Callable[[Session], BaseModel],
    status_code: int = 200,
) -> JSONResponse:
    """`idempotent` in a fresh session; a concurrent first use of the same key that lost the race
    to record it is answered with the winner's response."""
    for attempt in range(2):
        with service.session() as session:
            try:
                return idempotent(
                    session, service.config.name, key, payload, lambda: write(session), status_code
                )
            except IntegrityError:
                session.rollback()
                if attempt:
                    raise
    raise AssertionError("unreachable")


def routes(service: Service) -> None:
    app = service.app
    name = service.config.name
    Key = Header(default=None, alias=IDEMPOTENCY_HEADER)

    @app.get("/models")
    def list_models() -> list[ModelStock]:
        with service.session() as session:
            rows = session.exec(
                select(Terminal.model, Terminal.status, func.count()).group_by(
                    col(Terminal.model), col(Terminal.status)
                )
            ).all()
            counts: dict[str, dict[str, int]] = {}
            for model, status, count in rows:
                counts.setdefault(model, {})[status] = count
            return [
                ModelStock(
                    model=m.code,
                    description=m.description,
                    in_stock=counts.get(m.code, {}).get(TerminalStatus.IN_STOCK, 0),
                    total=sum(counts.get(m.code, {}).values()),
                )
                for m in session.exec(select(DeviceModel).order_by(col(DeviceModel.code))).all()
            ]

    @app.get("/terminals/{serial}")
    def get_terminal(serial: str) -> TerminalView:
        with service.session() as session:
            terminal = session.get(Terminal, serial)
            if terminal is None:
                raise ServiceError(404, "unknown_terminal", f"no terminal {serial}")
            merchant = session.get(Merchant, terminal.mid) if terminal.mid else None
            return _view(terminal, merchant)

    @app.post("/reservations")
    def post_reservation(body: ReserveBody, key: str | None = Key) -> JSONResponse:
        return _once(service, key, _payload(body), lambda s: reserve(s, body), 201)

    @app.post("/reservations/{reservation_id}/registration")
    def post_registration(
        reservation_id: str, body: RegisterBody, key: str | None = Key
    ) -> JSONResponse:
        payload = {"reservation_id": reservation_id, **body.model_dump(mode="json")}
        return _once(service, key, payload, lambda s: register(s, reservation_id, body))

    @app.post("/reservations/{reservation_id}/release")
    def post_release(reservation_id: str, body: ReleaseBody, key: str | None = Key) -> JSONResponse:
        payload = {"reservation_id": reservation_id, **body.model_dump(mode="json")}
        # Where the terminals are is asked before the write, so no lock is held over HTTP.
        with service.session() as session:
            serials = list(
                session.exec(
                    select(Terminal.serial).where(Terminal.reservation_id == reservation_id)
                ).all()
            )
        shelf = on_shelf(service.config, serials) if serials else {}
        return _once(service, key, payload, lambda s: release(s, reservation_id, body, shelf))

    @app.post("/activation-codes")
    def post_activation_codes(body: IssueCodesBody, key: str | None = Key) -> JSONResponse:
        return _once(service, key, _payload(body), lambda s: issue_codes(s, body), 201)

    @app.post("/terminals/{serial}/activation")
    def post_activation(serial: str, body: ActivateBody, key: str | None = Key) -> JSONResponse:
        payload = {"serial": serial, **body.model_dump(mode="json")}
        return _once(service, key, payload, lambda s: activate(s, name, serial, body.code))

    @app.post("/test-transactions")
    def post_test_transaction(body: TestTransactionBody, key: str | None = Key) -> JSONResponse:
        return _once(service, key, _payload(body), lambda s: test_transaction(s, body), 201)

    @app.post("/merchants/{mid}/acquiring")
    def post_acquiring(mid: str, body: AcquiringBody, key: str | None = Key) -> JSONResponse:
        payload = {"mid": mid, **body.model_dump(mode="json")}
        return _once(service, key, payload, lambda s: enable_acquiring(s, mid, body))

    # --- after go-live: the merchant's account ---

    @app.get("/merchants/{mid}")
    def get_merchant(mid: str) -> MerchantView:
        with service.session() as session:
            return merchant_view(session, mid)

    @app.post("/merchants/{mid}/acquiring/suspension")
    def post_suspension(mid: str, body: AcquiringChangeBody, key: str | None = Key) -> JSONResponse:
        payload = _payload(body, mid=mid, action="suspend")
        return _once(service, key, payload, lambda s: change_acquiring(s, mid, body, True))

    @app.post("/merchants/{mid}/acquiring/reinstatement")
    def post_reinstatement(
        mid: str, body: AcquiringChangeBody, key: str | None = Key
    ) -> JSONResponse:
        payload = _payload(body, mid=mid, action="reinstate")
        return _once(service, key, payload, lambda s: change_acquiring(s, mid, body, False))

    @app.post("/merchants/{mid}/terminals")
    def post_more_terminals(
        mid: str, body: MoreTerminalsBody, key: str | None = Key
    ) -> JSONResponse:
        return _once(service, key, _payload(body, mid=mid), lambda s: register_more(s, mid, body))

    @app.post("/merchants/{mid}/swaps")
    def post_swap(mid: str, body: SwapBody, key: str | None = Key) -> JSONResponse:
        return _once(service, key, _payload(body, mid=mid), lambda s: swap(s, mid, body))

    @app.post("/terminals/{serial}/unbinding")
    def post_unbinding(serial: str, body: UnbindBody, key: str | None = Key) -> JSONResponse:
        # Where the terminal is is asked before the write, so no lock is held over HTTP.
        shelf = on_shelf(service.config, [serial])
        payload = _payload(body, serial=serial)
        return _once(service, key, payload, lambda s: unbind(s, serial, body, shelf))

    @app.post("/merchants/{mid}/settlement")
    def post_settlement(mid: str, body: SettlementBody, key: str | None = Key) -> JSONResponse:
        return _once(service, key, _payload(body, mid=mid), lambda s: bind_settlement(s, mid, body))

    @app.post("/merchants/{mid}/retirement")
    def post_retirement(mid: str, body: RetireBody, key: str | None = Key) -> JSONResponse:
        with service.session() as session:
            serials = list(session.exec(select(Terminal.serial).where(Terminal.mid == mid)).all())
        shelf = on_shelf(service.config, serials) if serials else {}
        return _once(service, key, _payload(body, mid=mid), lambda s: retire(s, mid, body, shelf))


def upgrade(service: Service) -> None:
    """Tables an older version created get the nullable columns this one added."""
    for table in UPGRADED:
        added = add_missing_columns(service.engine, table.__table__)  # type: ignore[attr-defined]
        if added:
            log.info("device_columns_added", table=table.__tablename__, columns=added)


def _setup(service: Service) -> None:
    upgrade(service)
    seed(service)
    routes(service)


def build(config: ServiceConfig | None = None) -> Service:
    return create_service(
        config or ServiceConfig.from_env("device"),
        tables=TABLES,
        setup=_setup,
        background=[auto_activation, check_in_returns],
    )
