"""The sandbox logistics and field-service system: mails terminals (邮寄) with a tracking number,
books technicians for on-site installation (上门安装调试), operating training (培训) and, after
go-live, periodic inspections (巡检); recalls parcels and collects devices back.

Carrier scans, deliveries and technicians' reports arrive as writes on this service (from an
operator, a test, or the auto-progress job of the demo) and reach the gateway as signed callbacks:
a scan as a `ShipmentScan`, a delivery or installation as a `DeliveryOutcome`, a training as a
`TrainingCompleted`. Return shipments are tracked the same way but call nobody back: the
application they belong to is already being closed.

After go-live the merchant's account asks for the same shipments, installations and returns with
`merchant_id` (the MID) set: their delivery or installation outcome goes to the merchant's route
(`/api/merchants/{mid}/delivery`) instead of the application's. Their carrier scans call nobody
back: the merchant's account waits for the delivery, not for each hop (the scans stay in the
shipment's history). An inspection (`POST /inspections`) is reported by the inspector
(`POST /inspections/{id}/result`) and reaches the gateway as an `InspectionResult` at
`/api/merchants/{mid}/inspection`.

Where each terminal is (`GET /whereabouts?serial=...`) follows from what happened to it here: it
leaves the warehouse in an outbound parcel or with the technician who installs it, and is back
only when a parcel carrying it arrives at the warehouse: a return delivered, or a recalled or
undeliverable outbound parcel back (`POST /shipments/{id}/arrival`). The device service reads
this to put released terminals back in stock only once they are on the shelf.

Settings, each from `config.options` first, then the environment:
- `auto_progress` / `POSFLOW_LOGISTICS_AUTO` ("true" to move parcels and appointments on by
  themselves), `auto_delay_ms` / `POSFLOW_LOGISTICS_AUTO_DELAY_MS` (500, per step),
  `loss_rate` / `POSFLOW_LOGISTICS_LOSS_RATE` (0: share of parcels and installations that fail);
- `lead_time_hours` / `POSFLOW_LOGISTICS_LEAD_TIME_HOURS` (24): how far ahead appointments and
  inspections are (an inspection never later than its `due_by`).

The auto-progress job's inspectors pass every inspection, except where the street of the
address carries a demo marker:
- `[fail]`: every inspection fails, re-inspections too;
- `[fail-once]`: the first inspection fails, the re-inspection passes (remediation works).
The loss rate does not apply to inspections: only the markers fail them.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

import structlog
from fastapi import Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel, col, select

from schemas.application import Address, Model, Note, PersonName, Text
from schemas.merchant import MID_PATTERN, InspectionResult
from schemas.messages import DeliveryOutcome, DeliveryOutcomeKind, ShipmentScan, TrainingCompleted
from schemas.steps import (
    InspectionBooked,
    InstallationBooked,
    PickUpBooked,
    ReturnArranged,
    ShipmentCreated,
    TrainingScheduled,
    Undone,
)
from services.base import (
    Service,
    ServiceConfig,
    ServiceError,
    add_missing_columns,
    callback_path,
    callback_path_for,
    create_service,
    enqueue_callback,
    idempotent,
    merchant_callback_path,
)

log = structlog.get_logger(__name__)

CARRIER = "SF Express"
TRACKING_PREFIX = "SF"


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; every one stored here is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _timestamp() -> Any:
    return SQLField(default_factory=_now, sa_column=Column(DateTime(timezone=True), nullable=False))


# --- the tables ------------------------------------------------------------------------------


class ShipmentKind(StrEnum):
    OUTBOUND = "outbound"
    RETURN = "return"


class ShipmentStatus(StrEnum):
    CREATED = "created"
    IN_TRANSIT = "in_transit"
    DELIVERED = "delivered"
    FAILED = "failed"
    RECALLED = "recalled"  # on its way back to the warehouse
    RETURNED = "returned"  # a recalled or undeliverable parcel back at the warehouse


class AppointmentKind(StrEnum):
    INSTALLATION = "installation"
    TRAINING = "training"
    PICK_UP = "pick_up"  # terminals held at a branch for the merchant to collect (领取)


_PREFIXES = {
    AppointmentKind.INSTALLATION: "APT",
    AppointmentKind.TRAINING: "TRN",
    AppointmentKind.PICK_UP: "PKU",
}


class AppointmentStatus(StrEnum):
    BOOKED = "booked"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class InspectionStatus(StrEnum):
    BOOKED = "booked"
    PASSED = "passed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class LogisticsShipment(SQLModel, table=True):
    __tablename__ = "logistics_shipments"

    shipment_id: str = SQLField(primary_key=True)
    application_id: str = SQLField(index=True)
    # The MID when the merchant's account asked (after go-live); nullable, so a table made by an
    # older version gains it (`add_missing_columns`).
    merchant_id: str | None = None
    kind: str
    carrier: str
    tracking_number: str = SQLField(unique=True)
    recipient: str = ""
    serials: list[str] = SQLField(default_factory=list, sa_column=Column(JSON, nullable=False))
    address: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = SQLField(index=True)
    reason: str = ""
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class LogisticsShipmentEvent(SQLModel, table=True):
    __tablename__ = "logistics_shipment_events"

    id: int | None = SQLField(default=None, primary_key=True)
    shipment_id: str = SQLField(index=True)
    status: str
    location: str = ""
    description: str = ""
    at: datetime = _timestamp()


class LogisticsAppointment(SQLModel, table=True):
    """An installation (`appointment_id`) or a training session (`session_id`)."""

    __tablename__ = "logistics_appointments"

    appointment_id: str = SQLField(primary_key=True)
    application_id: str = SQLField(index=True)
    merchant_id: str | None = None  # as on shipments
    kind: str
    contact: str = ""
    serials: list[str] = SQLField(default_factory=list, sa_column=Column(JSON, nullable=False))
    address: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    on_site: bool = True
    # A training in several sessions (the channel's profile): booked once, each session reported
    # through the same completion; the merchant is trained after the last one.
    sessions: int = 1
    sessions_done: int = 0
    # A pick-up: the branch holding the terminals and the code the merchant shows there.
    branch: str = ""
    pickup_code: str = ""
    scheduled_for: datetime = _timestamp()
    status: str = SQLField(index=True)
    performed_by: str = ""
    detail: str = ""
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class LogisticsTerminalPosition(SQLModel, table=True):
    """Where a terminal is, as far as logistics knows: a serial without a row never left the
    warehouse. `reference` is the shipment or installation that moved it last; a parcel arriving
    back moves only the terminals it still holds (a terminal shipped again since stays out)."""

    __tablename__ = "logistics_terminal_positions"

    serial: str = SQLField(primary_key=True)
    at_warehouse: bool = True
    reference: str = ""
    detail: str = ""
    updated_at: datetime = _timestamp()


class LogisticsInspection(SQLModel, table=True):
    """A periodic inspection (巡检) of a merchant's premises and terminals, after go-live."""

    __tablename__ = "logistics_inspections"

    inspection_id: str = SQLField(primary_key=True)
    application_id: str = SQLField(index=True)
    mid: str = SQLField(index=True)
    serials: list[str] = SQLField(default_factory=list, sa_column=Column(JSON, nullable=False))
    address: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reinspection: bool = False
    due_by: datetime = _timestamp()
    scheduled_for: datetime = _timestamp()
    status: str = SQLField(index=True)
    inspector: str = ""
    findings: list[str] = SQLField(default_factory=list, sa_column=Column(JSON, nullable=False))
    reason: str = ""  # why it was cancelled
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


TABLES: list[type[SQLModel]] = [
    LogisticsShipment,
    LogisticsShipmentEvent,
    LogisticsAppointment,
    LogisticsTerminalPosition,
    LogisticsInspection,
]
# Tables an older version may have made without the columns added since.
UPGRADED: list[type[SQLModel]] = [LogisticsShipment, LogisticsAppointment]


# --- requests and answers --------------------------------------------------------------------

ApplicationId = Annotated[str, Field(min_length=1, max_length=80)]
MerchantId = Annotated[str, Field(pattern=MID_PATTERN)]
Serials = Annotated[list[Annotated[str, Field(min_length=1, max_length=40)]], Field(min_length=1)]
Person = Annotated[str, Field(min_length=1, max_length=120)]


class NewShipment(Model):
    """The fields of `steps.CreateShipment` (its idempotency key travels as the header)."""

    application_id: ApplicationId
    merchant_id: MerchantId | None = None
    address: Address
    recipient: Person
    serials: Serials


class NewReturn(Model):
    """The fields of `steps.ArrangeReturn`."""

    application_id: ApplicationId
    merchant_id: MerchantId | None = None
    serials: Serials
    address: Address
    reason: str = Field(min_length=1, max_length=500)


class NewInstallation(Model):
    """The fields of `steps.BookInstallation`."""

    application_id: ApplicationId
    merchant_id: MerchantId | None = None
    address: Address
    contact: Person
    serials: Serials


class NewTraining(Model):
    """The fields of `steps.ScheduleTraining`."""

    application_id: ApplicationId
    merchant_name: Person
    address: Address
    on_site: bool
    sessions: int = Field(default=1, ge=1, le=5)


class NewInspection(Model):
    """The fields of `steps.BookInspection`; `merchant_id`, when given, is the same MID."""

    application_id: ApplicationId
    merchant_id: MerchantId | None = None
    mid: MerchantId
    address: Address
    serials: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(max_length=500)
    reinspection: bool = False
    due_by: datetime

    @model_validator(mode="after")
    def _one_merchant(self) -> NewInspection:
        if self.merchant_id not in (None, self.mid):
            raise ValueError("merchant_id must be the inspected mid")
        return self


class Scan(Model):
    location: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=200)


# The same text rules as the messages these reports become, so a hostile report is a 422 here
# and never a message the gateway would refuse.
class Delivery(Model):
    outcome: Literal["delivered", "failed"]
    detail: Note = Field(default="", max_length=500)


class NewPickUp(Model):
    """The fields of `steps.BookPickUp`."""

    application_id: ApplicationId
    address: Address
    contact: Person
    serials: Serials


class PickUpReport(Model):
    outcome: Literal["collected", "uncollected"]
    clerk: PersonName = Field(min_length=1, max_length=80)
    detail: Note = Field(default="", max_length=500)


class InstallationReport(Model):
    outcome: Literal["installed", "failed"]
    technician: PersonName = Field(min_length=1, max_length=80)
    detail: Note = Field(default="", max_length=500)


class TrainingReport(Model):
    trainer: PersonName = Field(min_length=1, max_length=80)
    topics: list[Annotated[Text, Field(min_length=1, max_length=80)]] = Field(default_factory=list)


class InspectionReport(Model):
    """An inspector's verdict; the same text rules as the `InspectionResult` it becomes."""

    passed: bool
    inspector: PersonName = Field(min_length=1, max_length=80)
    findings: list[Annotated[Text, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=20
    )


class Cancellation(Model):
    """A recall or a cancellation; `application_id`, when given, must be the owner's."""

    reason: str = Field(min_length=1, max_length=500)
    application_id: str | None = None


class Arrival(Model):
    """A recalled or undeliverable parcel checked in back at the warehouse."""

    detail: str = Field(default="", max_length=500)


class Whereabouts(Model):
    serial: str
    at_warehouse: bool
    reference: str | None  # the shipment or installation that moved it last
    detail: str
    since: datetime | None


class WhereaboutsView(Model):
    terminals: list[Whereabouts]


MAX_WHEREABOUTS = 500  # serials per question


class ShipmentEventView(Model):
    status: ShipmentStatus
    location: str
    description: str
    at: datetime


class ShipmentView(Model):
    shipment_id: str
    application_id: str
    merchant_id: str | None
    kind: ShipmentKind
    carrier: str
    tracking_number: str
    status: ShipmentStatus
    serials: list[str]
    reason: str
    created_at: datetime
    updated_at: datetime
    history: list[ShipmentEventView]


class AppointmentView(Model):
    appointment_id: str
    application_id: str
    merchant_id: str | None
    kind: AppointmentKind
    status: AppointmentStatus
    on_site: bool
    serials: list[str]
    scheduled_for: datetime  # the next session's, for a training in several
    sessions: int
    sessions_done: int
    branch: str  # a pick-up's (the code is never shown: only the merchant has it)
    performed_by: str
    detail: str
    created_at: datetime
    updated_at: datetime


class InspectionView(Model):
    inspection_id: str
    application_id: str
    mid: str
    status: InspectionStatus
    reinspection: bool
    serials: list[str]
    due_by: datetime
    scheduled_for: datetime
    inspector: str
    findings: list[str]
    reason: str
    created_at: datetime
    updated_at: datetime


# --- settings --------------------------------------------------------------------------------


def _setting(config: ServiceConfig, option: str, env: str, default: str) -> str:
    return config.options.get(option) or os.environ.get(f"POSFLOW_LOGISTICS_{env}") or default


class Settings(BaseModel):
    auto_progress: bool
    auto_delay: timedelta
    loss_rate: float
    lead_time: timedelta

    @classmethod
    def of(cls, config: ServiceConfig) -> Settings:
        return cls(
            auto_progress=_setting(config, "auto_progress", "AUTO", "false").lower() == "true",
            auto_delay=timedelta(
                milliseconds=float(_setting(config, "auto_delay_ms", "AUTO_DELAY_MS", "500"))
            ),
            loss_rate=float(_setting(config, "loss_rate", "LOSS_RATE", "0")),
            lead_time=timedelta(
                hours=float(_setting(config, "lead_time_hours", "LEAD_TIME_HOURS", "24"))
            ),
        )


# --- the demo's inspectors ---------------------------------------------------------------------

FAIL_MARKER = "[fail]"  # in the street: every inspection of the merchant fails
FAIL_ONCE_MARKER = "[fail-once]"  # in the street: the first fails, the re-inspection passes


def auto_verdict(street: str, reinspection: bool) -> InspectionReport:
    """What the auto-progress inspector reports for a merchant at `street` (markers above)."""
    street = street.lower()
    if FAIL_MARKER in street or (FAIL_ONCE_MARKER in street and not reinspection):
        return InspectionReport(
            passed=False,
            inspector="auto-inspector",
            findings=["terminal not at the registered premises", "no acceptance sign displayed"],
        )
    findings = ["earlier findings put right"] if reinspection else []
    return InspectionReport(passed=True, inspector="auto-inspector", findings=findings)


# --- the logic -------------------------------------------------------------------------------


def _not_found(what: str, ident: str) -> ServiceError:
    return ServiceError(404, "not_found", f"no {what} {ident}")


class Logistics:
    """The service's state changes; the endpoints and the auto-progress job both go through
    `write`, so a scan or a delivery made either way has the same effects and callbacks."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.name = service.config.name
        self.settings = Settings.of(service.config)
        # One process owns the database: read-check-write of a state change is serialised here.
        self._lock = threading.Lock()

    def write(
        self,
        key: str | None,
        operation: str,
        body: BaseModel,
        change: Callable[[Session], BaseModel],
        status_code: int = 200,
    ) -> JSONResponse:
        payload = {"operation": operation, "body": body.model_dump(mode="json")}
        with self._lock, self.service.session() as session:
            return idempotent(
                session, self.name, key, payload, lambda: change(session), status_code
            )

    # shipments

    def _tracking_number(self, session: Session) -> str:
        while True:
            number = f"{TRACKING_PREFIX}{secrets.randbelow(10**12):012d}"
            taken = session.exec(
                select(LogisticsShipment).where(LogisticsShipment.tracking_number == number)
            ).first()
            if taken is None:
                return number

    def _new_shipment(
        self,
        session: Session,
        kind: ShipmentKind,
        application_id: str,
        address: Address,
        serials: list[str],
        recipient: str = "",
        reason: str = "",
        merchant_id: str | None = None,
    ) -> LogisticsShipment:
        prefix = "SHP" if kind is ShipmentKind.OUTBOUND else "RET"
        shipment = LogisticsShipment(
            shipment_id=f"{prefix}{uuid.uuid4().hex[:16].upper()}",
            application_id=application_id,
            merchant_id=merchant_id,
            kind=kind.value,
            carrier=CARRIER,
            tracking_number=self._tracking_number(session),
            recipient=recipient,
            serials=list(serials),
            address=address.model_dump(mode="json"),
            status=ShipmentStatus.CREATED.value,
            reason=reason,
        )
        session.add(shipment)
        what = "shipment created" if kind is ShipmentKind.OUTBOUND else "return arranged"
        self._event(session, shipment, ShipmentStatus.CREATED, "", what)
        where = (
            "shipped to the merchant"
            if kind is ShipmentKind.OUTBOUND
            else "with the merchant, return arranged"
        )
        self._move(session, serials, shipment.shipment_id, False, where)
        log.info(
            "shipment_created",
            shipment_id=shipment.shipment_id,
            application_id=application_id,
            merchant_id=merchant_id,
            kind=kind.value,
            terminals=len(serials),
        )
        return shipment

    def _event(
        self,
        session: Session,
        shipment: LogisticsShipment,
        status: ShipmentStatus,
        location: str,
        description: str,
    ) -> datetime:
        at = _now()
        shipment.status = status.value
        shipment.updated_at = at
        session.add(shipment)
        session.add(
            LogisticsShipmentEvent(
                shipment_id=shipment.shipment_id,
                status=status.value,
                location=location,
                description=description,
                at=at,
            )
        )
        return at

    # where terminals are

    def _move(
        self,
        session: Session,
        serials: list[str],
        reference: str,
        at_warehouse: bool,
        detail: str,
        *,
        if_held: bool = False,
    ) -> None:
        """Record where `serials` are now; with `if_held`, only those `reference` moved last."""
        now = _now()
        for serial in serials:
            position = session.get(LogisticsTerminalPosition, serial)
            if position is None:
                if if_held:
                    continue
                position = LogisticsTerminalPosition(serial=serial)
            elif if_held and position.reference != reference:
                continue
            position.at_warehouse = at_warehouse
            position.reference = reference
            position.detail = detail
            position.updated_at = now
            session.add(position)

    def whereabouts(self, session: Session, serials: list[str]) -> WhereaboutsView:
        found = {
            p.serial: p
            for p in session.exec(
                select(LogisticsTerminalPosition).where(
                    col(LogisticsTerminalPosition.serial).in_(serials)
                )
            ).all()
        }
        answer = []
        for serial in dict.fromkeys(serials):
            p = found.get(serial)
            answer.append(
                Whereabouts(serial=serial, at_warehouse=True, reference=None, detail="", since=None)
                if p is None
                else Whereabouts(
                    serial=serial,
                    at_warehouse=p.at_warehouse,
                    reference=p.reference or None,
                    detail=p.detail,
                    since=_aware(p.updated_at),
                )
            )
        return WhereaboutsView(terminals=answer)

    def _shipment(self, session: Session, shipment_id: str) -> LogisticsShipment:
        shipment = session.get(LogisticsShipment, shipment_id)
        if shipment is None:
            raise _not_found("shipment", shipment_id)
        return shipment

    def shipment_view(self, session: Session, shipment_id: str) -> ShipmentView:
        shipment = self._shipment(session, shipment_id)
        session.flush()
        events = session.exec(
            select(LogisticsShipmentEvent)
            .where(LogisticsShipmentEvent.shipment_id == shipment_id)
            .order_by(col(LogisticsShipmentEvent.id))
        ).all()
        return ShipmentView(
            shipment_id=shipment.shipment_id,
            application_id=shipment.application_id,
            merchant_id=shipment.merchant_id,
            kind=ShipmentKind(shipment.kind),
            carrier=shipment.carrier,
            tracking_number=shipment.tracking_number,
            status=ShipmentStatus(shipment.status),
            serials=list(shipment.serials),
            reason=shipment.reason,
            created_at=_aware(shipment.created_at),
            updated_at=_aware(shipment.updated_at),
            history=[
                ShipmentEventView(
                    status=ShipmentStatus(e.status),
                    location=e.location,
                    description=e.description,
                    at=_aware(e.at),
                )
                for e in events
            ],
        )

    def create_shipment(self, session: Session, request: NewShipment) -> ShipmentCreated:
        shipment = self._new_shipment(
            session,
            ShipmentKind.OUTBOUND,
            request.application_id,
            request.address,
            request.serials,
            recipient=request.recipient,
            merchant_id=request.merchant_id,
        )
        return ShipmentCreated(
            shipment_id=shipment.shipment_id,
            carrier=shipment.carrier,
            tracking_number=shipment.tracking_number,
        )

    def arrange_return(self, session: Session, request: NewReturn) -> ReturnArranged:
        shipment = self._new_shipment(
            session,
            ShipmentKind.RETURN,
            request.application_id,
            request.address,
            request.serials,
            reason=request.reason,
            merchant_id=request.merchant_id,
        )
        return ReturnArranged(
            return_id=shipment.shipment_id, tracking_number=shipment.tracking_number
        )

    def scan(self, session: Session, shipment_id: str, scan: Scan) -> ShipmentView:
        shipment = self._shipment(session, shipment_id)
        if shipment.status not in (ShipmentStatus.CREATED, ShipmentStatus.IN_TRANSIT):
            raise ServiceError(
                409, "shipment_closed", f"shipment {shipment_id} is already {shipment.status}"
            )
        at = self._event(
            session, shipment, ShipmentStatus.IN_TRANSIT, scan.location, scan.description
        )
        # A merchant's parcel (after go-live) is scanned without a callback: its account waits
        # for the delivery only.
        if shipment.kind == ShipmentKind.OUTBOUND and not shipment.merchant_id:
            enqueue_callback(
                session,
                self.name,
                callback_path(shipment.application_id, "shipment-scans"),
                ShipmentScan(
                    event_id=str(uuid.uuid4()),
                    shipment_id=shipment_id,
                    location=scan.location,
                    scanned_at=at,
                    description=scan.description,
                ),
            )
        return self.shipment_view(session, shipment_id)

    def deliver(self, session: Session, shipment_id: str, delivery: Delivery) -> ShipmentView:
        shipment = self._shipment(session, shipment_id)
        if shipment.status == ShipmentStatus.RECALLED:
            raise ServiceError(409, "shipment_recalled", f"shipment {shipment_id} was recalled")
        if shipment.status not in (ShipmentStatus.CREATED, ShipmentStatus.IN_TRANSIT):
            raise ServiceError(
                409, "shipment_closed", f"shipment {shipment_id} is already {shipment.status}"
            )
        status = ShipmentStatus(delivery.outcome)
        self._event(session, shipment, status, "", delivery.detail or status.value)
        if shipment.kind == ShipmentKind.OUTBOUND:
            self._outcome(session, shipment, shipment_id, status, delivery.detail)
            where = (
                "delivered to the merchant"
                if status is ShipmentStatus.DELIVERED
                else "undeliverable, on its way back to the warehouse"
            )
            self._move(session, shipment.serials, shipment_id, False, where, if_held=True)
        elif status is ShipmentStatus.DELIVERED:
            where = "returned to the warehouse"
            self._move(session, shipment.serials, shipment_id, True, where, if_held=True)
        else:
            where = "return parcel lost"
            self._move(session, shipment.serials, shipment_id, False, where, if_held=True)
        log.info("shipment_finished", shipment_id=shipment_id, outcome=status.value)
        return self.shipment_view(session, shipment_id)

    def recall(self, session: Session, shipment_id: str, request: Cancellation) -> Undone:
        shipment = self._shipment(session, shipment_id)
        if request.application_id not in (None, shipment.application_id):
            raise _not_found("shipment", shipment_id)
        if shipment.kind != ShipmentKind.OUTBOUND:
            raise ServiceError(409, "not_recallable", f"{shipment_id} is a return shipment")
        if shipment.status == ShipmentStatus.DELIVERED:
            raise ServiceError(
                409,
                "shipment_delivered",
                f"shipment {shipment_id} was delivered: arrange a return instead",
            )
        if shipment.status == ShipmentStatus.RECALLED:
            return Undone(reference=shipment_id, detail="already recalled")
        if shipment.status == ShipmentStatus.RETURNED:
            return Undone(reference=shipment_id, detail="already back at the warehouse")
        if shipment.status == ShipmentStatus.FAILED:
            return Undone(
                reference=shipment_id, detail="delivery had failed: the parcel comes back anyway"
            )
        shipment.reason = request.reason
        self._event(session, shipment, ShipmentStatus.RECALLED, "", request.reason)
        where = "recalled, on its way back to the warehouse"
        self._move(session, shipment.serials, shipment_id, False, where, if_held=True)
        log.info("shipment_recalled", shipment_id=shipment_id)
        return Undone(reference=shipment_id, detail=f"recalled: {request.reason}")

    def arrive(self, session: Session, shipment_id: str, arrival: Arrival) -> ShipmentView:
        """A recalled or undeliverable outbound parcel is back at the warehouse: its terminals
        are on the shelf again. Checking it in twice changes nothing."""
        shipment = self._shipment(session, shipment_id)
        if shipment.status == ShipmentStatus.RETURNED:
            return self.shipment_view(session, shipment_id)
        if shipment.kind != ShipmentKind.OUTBOUND or shipment.status not in (
            ShipmentStatus.RECALLED,
            ShipmentStatus.FAILED,
        ):
            raise ServiceError(
                409,
                "not_coming_back",
                f"shipment {shipment_id} is {shipment.status}: only a recalled or undeliverable"
                " parcel comes back (a return's arrival is its delivery)",
            )
        detail = arrival.detail or "back at the warehouse"
        self._event(session, shipment, ShipmentStatus.RETURNED, "warehouse", detail)
        where = "returned to the warehouse"
        self._move(session, shipment.serials, shipment_id, True, where, if_held=True)
        log.info("shipment_returned", shipment_id=shipment_id)
        return self.shipment_view(session, shipment_id)

    def _outcome(
        self,
        session: Session,
        owner: LogisticsShipment | LogisticsAppointment,
        reference: str,
        kind: DeliveryOutcomeKind | ShipmentStatus,
        detail: str,
    ) -> None:
        """The delivery or installation outcome, to the merchant's route when the merchant's
        account asked for it, else to the application's."""
        enqueue_callback(
            session,
            self.name,
            callback_path_for(owner.application_id, owner.merchant_id, "delivery"),
            DeliveryOutcome(
                event_id=str(uuid.uuid4()),
                reference=reference,
                kind=DeliveryOutcomeKind(kind.value),
                detail=detail,
            ),
        )

    # appointments

    def _appointment(
        self, session: Session, kind: AppointmentKind, appointment_id: str
    ) -> LogisticsAppointment:
        appointment = session.get(LogisticsAppointment, appointment_id)
        if appointment is None or appointment.kind != kind:
            raise _not_found(kind.value, appointment_id)
        return appointment

    def appointment_view(
        self, session: Session, kind: AppointmentKind, appointment_id: str
    ) -> AppointmentView:
        a = self._appointment(session, kind, appointment_id)
        return AppointmentView(
            appointment_id=a.appointment_id,
            application_id=a.application_id,
            merchant_id=a.merchant_id,
            kind=AppointmentKind(a.kind),
            status=AppointmentStatus(a.status),
            on_site=a.on_site,
            serials=list(a.serials),
            scheduled_for=_aware(a.scheduled_for),
            sessions=a.sessions,
            sessions_done=a.sessions_done,
            branch=a.branch,
            performed_by=a.performed_by,
            detail=a.detail,
            created_at=_aware(a.created_at),
            updated_at=_aware(a.updated_at),
        )

    def _book(
        self,
        session: Session,
        kind: AppointmentKind,
        application_id: str,
        address: Address,
        **extra: Any,
    ) -> LogisticsAppointment:
        prefix = _PREFIXES[kind]
        appointment = LogisticsAppointment(
            appointment_id=f"{prefix}{uuid.uuid4().hex[:16].upper()}",
            application_id=application_id,
            kind=kind.value,
            address=address.model_dump(mode="json"),
            scheduled_for=_now() + self.settings.lead_time,
            status=AppointmentStatus.BOOKED.value,
            **extra,
        )
        session.add(appointment)
        log.info(
            "appointment_booked",
            appointment_id=appointment.appointment_id,
            application_id=application_id,
            kind=kind.value,
        )
        return appointment

    def book_installation(self, session: Session, request: NewInstallation) -> InstallationBooked:
        a = self._book(
            session,
            AppointmentKind.INSTALLATION,
            request.application_id,
            request.address,
            contact=request.contact,
            serials=list(request.serials),
            merchant_id=request.merchant_id,
        )
        return InstallationBooked(appointment_id=a.appointment_id, scheduled_for=a.scheduled_for)

    def book_pick_up(self, session: Session, request: NewPickUp) -> PickUpBooked:
        """The terminals go to the branch of the merchant's city, ready after the lead time;
        the merchant collects them with a six-digit code."""
        city = str(request.address.model_dump().get("city", "")) or "总部"
        a = self._book(
            session,
            AppointmentKind.PICK_UP,
            request.application_id,
            request.address,
            contact=request.contact,
            serials=list(request.serials),
            on_site=False,
            branch=f"{city}服务网点",
            pickup_code=f"{secrets.randbelow(10**6):06d}",
        )
        return PickUpBooked(
            pickup_id=a.appointment_id,
            branch=a.branch,
            ready_from=a.scheduled_for,
            pickup_code=a.pickup_code,
        )

    def complete_pick_up(
        self, session: Session, pickup_id: str, report: PickUpReport
    ) -> AppointmentView:
        """Collected: the terminals are the merchant's, and the workflow hears it as a delivery.
        Not collected (the branch gave up): they go back to the warehouse, a failed delivery."""
        collected = report.outcome == "collected"
        status = AppointmentStatus.DONE if collected else AppointmentStatus.FAILED
        kind = AppointmentKind.PICK_UP
        a = self._finish(session, kind, pickup_id, status, report.clerk, report.detail)
        if collected:
            self._move(session, a.serials, pickup_id, False, f"collected at {a.branch}")
        outcome = DeliveryOutcomeKind.DELIVERED if collected else DeliveryOutcomeKind.FAILED
        self._outcome(session, a, pickup_id, outcome, report.detail or f"{report.outcome}")
        return self.appointment_view(session, kind, pickup_id)

    def schedule_training(self, session: Session, request: NewTraining) -> TrainingScheduled:
        a = self._book(
            session,
            AppointmentKind.TRAINING,
            request.application_id,
            request.address,
            contact=request.merchant_name,
            on_site=request.on_site,
            sessions=request.sessions,
        )
        return TrainingScheduled(
            session_id=a.appointment_id, scheduled_for=a.scheduled_for, sessions=a.sessions
        )

    def _finish(
        self,
        session: Session,
        kind: AppointmentKind,
        appointment_id: str,
        status: AppointmentStatus,
        performed_by: str,
        detail: str,
    ) -> LogisticsAppointment:
        a = self._appointment(session, kind, appointment_id)
        if a.status != AppointmentStatus.BOOKED:
            raise ServiceError(
                409, f"{kind.value}_closed", f"{kind.value} {appointment_id} is already {a.status}"
            )
        a.status = status.value
        a.performed_by = performed_by
        a.detail = detail
        a.updated_at = _now()
        session.add(a)
        log.info(f"{kind.value}_finished", appointment_id=appointment_id, status=status.value)
        return a

    def complete_installation(
        self, session: Session, appointment_id: str, report: InstallationReport
    ) -> AppointmentView:
        installed = report.outcome == "installed"
        status = AppointmentStatus.DONE if installed else AppointmentStatus.FAILED
        kind = AppointmentKind.INSTALLATION
        a = self._finish(session, kind, appointment_id, status, report.technician, report.detail)
        if installed:  # the technician left them with the merchant; a failed visit brings them back
            self._move(session, a.serials, appointment_id, False, "installed at the merchant")
        outcome = DeliveryOutcomeKind.INSTALLED if installed else DeliveryOutcomeKind.FAILED
        self._outcome(session, a, appointment_id, outcome, report.detail)
        return self.appointment_view(session, kind, appointment_id)

    def complete_training(
        self, session: Session, session_id: str, report: TrainingReport
    ) -> AppointmentView:
        kind = AppointmentKind.TRAINING
        topics = ", ".join(report.topics)
        a = self._appointment(session, kind, session_id)
        if a.status == AppointmentStatus.BOOKED and a.sessions_done + 1 < a.sessions:
            # Not the last session: the next one is booked, nobody is called back yet.
            a.sessions_done += 1
            a.scheduled_for = _now() + self.settings.lead_time
            a.performed_by, a.detail, a.updated_at = report.trainer, topics, _now()
            session.add(a)
            log.info("training_session_done", session_id=session_id, done=a.sessions_done)
            return self.appointment_view(session, kind, session_id)
        a = self._finish(session, kind, session_id, AppointmentStatus.DONE, report.trainer, topics)
        a.sessions_done = a.sessions
        enqueue_callback(
            session,
            self.name,
            callback_path(a.application_id, "training"),
            TrainingCompleted(
                event_id=str(uuid.uuid4()),
                session_id=session_id,
                trainer=report.trainer,
                topics=list(report.topics),
            ),
        )
        return self.appointment_view(session, kind, session_id)

    def cancel(
        self, session: Session, kind: AppointmentKind, appointment_id: str, request: Cancellation
    ) -> Undone:
        a = self._appointment(session, kind, appointment_id)
        if request.application_id not in (None, a.application_id):
            raise _not_found(kind.value, appointment_id)
        if a.status == AppointmentStatus.DONE:
            raise ServiceError(
                409, f"{kind.value}_done", f"{kind.value} {appointment_id} was already done"
            )
        if a.status == AppointmentStatus.CANCELLED:
            return Undone(reference=appointment_id, detail="already cancelled")
        a.status = AppointmentStatus.CANCELLED.value
        a.detail = request.reason
        a.updated_at = _now()
        session.add(a)
        log.info(f"{kind.value}_cancelled", appointment_id=appointment_id)
        return Undone(reference=appointment_id, detail=f"cancelled: {request.reason}")

    # inspections (after go-live)

    def _inspection(self, session: Session, inspection_id: str) -> LogisticsInspection:
        inspection = session.get(LogisticsInspection, inspection_id)
        if inspection is None:
            raise _not_found("inspection", inspection_id)
        return inspection

    def inspection_view(self, session: Session, inspection_id: str) -> InspectionView:
        i = self._inspection(session, inspection_id)
        return InspectionView(
            inspection_id=i.inspection_id,
            application_id=i.application_id,
            mid=i.mid,
            status=InspectionStatus(i.status),
            reinspection=i.reinspection,
            serials=list(i.serials),
            due_by=_aware(i.due_by),
            scheduled_for=_aware(i.scheduled_for),
            inspector=i.inspector,
            findings=list(i.findings),
            reason=i.reason,
            created_at=_aware(i.created_at),
            updated_at=_aware(i.updated_at),
        )

    def book_inspection(self, session: Session, request: NewInspection) -> InspectionBooked:
        """An inspector booked the lead time ahead, but never after the inspection is due (nor
        before now, when it is already due)."""
        now = _now()
        scheduled_for = max(now, min(now + self.settings.lead_time, _aware(request.due_by)))
        inspection = LogisticsInspection(
            inspection_id=f"INS-{uuid.uuid4().hex[:16].upper()}",
            application_id=request.application_id,
            mid=request.mid,
            serials=list(request.serials),
            address=request.address.model_dump(mode="json"),
            reinspection=request.reinspection,
            due_by=request.due_by,
            scheduled_for=scheduled_for,
            status=InspectionStatus.BOOKED.value,
        )
        session.add(inspection)
        log.info(
            "inspection_booked",
            inspection_id=inspection.inspection_id,
            mid=request.mid,
            reinspection=request.reinspection,
        )
        return InspectionBooked(inspection_id=inspection.inspection_id, scheduled_for=scheduled_for)

    def report_inspection(
        self, session: Session, inspection_id: str, report: InspectionReport
    ) -> InspectionView:
        """The inspector's verdict, once: a second report of the same inspection is refused."""
        i = self._inspection(session, inspection_id)
        if i.status != InspectionStatus.BOOKED:
            raise ServiceError(
                409, "inspection_closed", f"inspection {inspection_id} is already {i.status}"
            )
        status = InspectionStatus.PASSED if report.passed else InspectionStatus.FAILED
        i.status = status.value
        i.inspector = report.inspector
        i.findings = list(report.findings)
        i.updated_at = _now()
        session.add(i)
        enqueue_callback(
            session,
            self.name,
            merchant_callback_path(i.mid, "inspection"),
            InspectionResult(
                event_id=str(uuid.uuid4()),
                inspection_id=inspection_id,
                passed=report.passed,
                inspector=report.inspector,
                findings=list(report.findings),
            ),
        )
        log.info("inspection_reported", inspection_id=inspection_id, status=status.value)
        return self.inspection_view(session, inspection_id)

    def cancel_inspection(
        self, session: Session, inspection_id: str, request: Cancellation
    ) -> Undone:
        i = self._inspection(session, inspection_id)
        if request.application_id not in (None, i.application_id):
            raise _not_found("inspection", inspection_id)
        if i.status == InspectionStatus.CANCELLED:
            return Undone(reference=inspection_id, detail="already cancelled")
        if i.status != InspectionStatus.BOOKED:
            raise ServiceError(
                409, "inspection_done", f"inspection {inspection_id} was already {i.status}"
            )
        i.status = InspectionStatus.CANCELLED.value
        i.reason = request.reason
        i.updated_at = _now()
        session.add(i)
        log.info("inspection_cancelled", inspection_id=inspection_id)
        return Undone(reference=inspection_id, detail=f"cancelled: {request.reason}")

    # auto-progress

    def advance(self) -> None:
        """One pass of the demo's carrier and technicians: every shipment or appointment left
        alone for the delay moves one step on, through the same writes as the endpoints."""
        cutoff = _now() - self.settings.auto_delay
        with self.service.session() as session:
            moving = [ShipmentStatus.CREATED.value, ShipmentStatus.IN_TRANSIT.value]
            coming_back = [ShipmentStatus.RECALLED.value, ShipmentStatus.FAILED.value]
            shipments = session.exec(
                select(LogisticsShipment)
                .where(
                    col(LogisticsShipment.status).in_(moving)
                    | (
                        col(LogisticsShipment.status).in_(coming_back)
                        & (col(LogisticsShipment.kind) == ShipmentKind.OUTBOUND.value)
                    )
                )
                .where(col(LogisticsShipment.updated_at) <= cutoff)
            ).all()
            appointments = session.exec(
                select(LogisticsAppointment)
                .where(LogisticsAppointment.status == AppointmentStatus.BOOKED.value)
                .where(col(LogisticsAppointment.updated_at) <= cutoff)
            ).all()
            inspections = session.exec(
                select(LogisticsInspection)
                .where(LogisticsInspection.status == InspectionStatus.BOOKED.value)
                .where(col(LogisticsInspection.updated_at) <= cutoff)
            ).all()
            due: list[tuple[str, str, str, str]] = [
                (s.shipment_id, s.status, str(s.address.get("city", "")), "shipment")
                for s in shipments
            ] + [(a.appointment_id, a.status, str(a.sessions_done), a.kind) for a in appointments]
            verdicts = [
                (i.inspection_id, auto_verdict(str(i.address.get("street", "")), i.reinspection))
                for i in inspections
            ]
        for ident, status, city, what in due:
            try:
                self._advance_one(ident, status, city, what)
            except ServiceError as err:  # changed meanwhile, e.g. recalled: leave it be
                log.info("auto_progress_skipped", reference=ident, error=err.error)
        for ident, report in verdicts:
            try:
                self._inspect(ident, report)
            except ServiceError as err:  # reported or cancelled meanwhile
                log.info("auto_progress_skipped", reference=ident, error=err.error)

    def _inspect(self, ident: str, report: InspectionReport) -> None:
        self.write(
            f"auto:{ident}:result",
            f"inspection_result:{ident}",
            report,
            lambda s: self.report_inspection(s, ident, report),
        )

    def _advance_one(self, ident: str, status: str, city: str, what: str) -> None:
        fails = random.random() < self.settings.loss_rate
        if what == "shipment" and status == ShipmentStatus.CREATED:
            scan = Scan(location=f"{city} sorting centre".strip(), description="picked up")
            self.write(
                f"auto:{ident}:scan", f"scan:{ident}", scan, lambda s: self.scan(s, ident, scan)
            )
        elif what == "shipment" and status in (ShipmentStatus.RECALLED, ShipmentStatus.FAILED):
            arrival = Arrival(detail="back at the warehouse")
            self.write(
                f"auto:{ident}:arrival",
                f"arrival:{ident}",
                arrival,
                lambda s: self.arrive(s, ident, arrival),
            )
        elif what == "shipment":
            delivery = Delivery(
                outcome="failed" if fails else "delivered",
                detail="undeliverable, returned to sender"
                if fails
                else "signed for by the recipient",
            )
            self.write(
                f"auto:{ident}:delivery",
                f"delivery:{ident}",
                delivery,
                lambda s: self.deliver(s, ident, delivery),
            )
        elif what == AppointmentKind.PICK_UP:
            collection = PickUpReport(
                outcome="uncollected" if fails else "collected",
                clerk="auto-clerk",
                detail="not collected in time" if fails else "collected with the pick-up code",
            )
            self.write(
                f"auto:{ident}:collection",
                f"pick_up_collection:{ident}",
                collection,
                lambda s: self.complete_pick_up(s, ident, collection),
            )
        elif what == AppointmentKind.INSTALLATION:
            report = InstallationReport(
                outcome="failed" if fails else "installed",
                technician="auto-technician",
                detail="site not ready" if fails else "installed and tested",
            )
            self.write(
                f"auto:{ident}:completion",
                f"installation_completion:{ident}",
                report,
                lambda s: self.complete_installation(s, ident, report),
            )
        else:
            training = TrainingReport(
                trainer="auto-trainer",
                topics=["transactions", "refunds", "settlement", "receipts", "faults"],
            )
            self.write(
                f"auto:{ident}:completion:{city}",  # `city`: the sessions done before this one
                f"training_completion:{ident}",
                training,
                lambda s: self.complete_training(s, ident, training),
            )

    async def auto_progress(self) -> None:
        if not self.settings.auto_progress:
            return
        delay = self.settings.auto_delay.total_seconds()
        poll = max(0.02, min(delay / 4, 0.25))
        log.info("auto_progress_on", delay_s=delay, loss_rate=self.settings.loss_rate)
        while True:
            await asyncio.sleep(poll)
            try:
                await asyncio.to_thread(self.advance)
            except Exception:  # the demo's carrier keeps going whatever one pass hit
                log.exception("auto_progress_failed")


# --- the app ---------------------------------------------------------------------------------

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def _routes(logistics: Logistics) -> Callable[[Service], None]:
    def setup(service: Service) -> None:
        app = service.app
        lg = logistics
        installation, training = AppointmentKind.INSTALLATION, AppointmentKind.TRAINING

        @app.post("/shipments", status_code=201, response_model=ShipmentCreated)
        def create_shipment(body: NewShipment, key: IdempotencyKey = None) -> JSONResponse:
            return lg.write(
                key, "create_shipment", body, lambda s: lg.create_shipment(s, body), 201
            )

        @app.get("/shipments/{shipment_id}", response_model=ShipmentView)
        def get_shipment(shipment_id: str) -> ShipmentView:
            with service.session() as session:
                return lg.shipment_view(session, shipment_id)

        @app.post("/shipments/{shipment_id}/scans", response_model=ShipmentView)
        def scan(shipment_id: str, body: Scan, key: IdempotencyKey = None) -> JSONResponse:
            return lg.write(
                key, f"scan:{shipment_id}", body, lambda s: lg.scan(s, shipment_id, body)
            )

        @app.post("/shipments/{shipment_id}/delivery", response_model=ShipmentView)
        def deliver(shipment_id: str, body: Delivery, key: IdempotencyKey = None) -> JSONResponse:
            return lg.write(
                key, f"delivery:{shipment_id}", body, lambda s: lg.deliver(s, shipment_id, body)
            )

        @app.post("/shipments/{shipment_id}/recall", response_model=Undone)
        def recall(
            shipment_id: str, body: Cancellation, key: IdempotencyKey = None
        ) -> JSONResponse:
            return lg.write(
                key, f"recall:{shipment_id}", body, lambda s: lg.recall(s, shipment_id, body)
            )

        @app.post("/shipments/{shipment_id}/arrival", response_model=ShipmentView)
        def arrival(shipment_id: str, body: Arrival, key: IdempotencyKey = None) -> JSONResponse:
            return lg.write(
                key, f"arrival:{shipment_id}", body, lambda s: lg.arrive(s, shipment_id, body)
            )

        @app.get("/whereabouts", response_model=WhereaboutsView)
        def whereabouts(serial: Annotated[list[str], Query()]) -> WhereaboutsView:
            """Where each terminal is: `?serial=A&serial=B` (at most 500)."""
            if len(serial) > MAX_WHEREABOUTS:
                raise ServiceError(
                    422,
                    "invalid_request",
                    f"at most {MAX_WHEREABOUTS} serials a question",
                    {"serial": f"{len(serial)} given"},
                )
            with service.session() as session:
                return lg.whereabouts(session, serial)

        @app.post("/returns", status_code=201, response_model=ReturnArranged)
        def arrange_return(body: NewReturn, key: IdempotencyKey = None) -> JSONResponse:
            return lg.write(key, "arrange_return", body, lambda s: lg.arrange_return(s, body), 201)

        pick_up = AppointmentKind.PICK_UP

        @app.post("/pickups", status_code=201, response_model=PickUpBooked)
        def book_pick_up(body: NewPickUp, key: IdempotencyKey = None) -> JSONResponse:
            return lg.write(key, "book_pick_up", body, lambda s: lg.book_pick_up(s, body), 201)

        @app.get("/pickups/{pickup_id}", response_model=AppointmentView)
        def get_pick_up(pickup_id: str) -> AppointmentView:
            with service.session() as session:
                return lg.appointment_view(session, pick_up, pickup_id)

        @app.post("/pickups/{pickup_id}/collection", response_model=AppointmentView)
        def collect(pickup_id: str, body: PickUpReport, key: IdempotencyKey = None) -> JSONResponse:
            return lg.write(
                key,
                f"pick_up_collection:{pickup_id}",
                body,
                lambda s: lg.complete_pick_up(s, pickup_id, body),
            )

        @app.post("/pickups/{pickup_id}/cancel", response_model=Undone)
        def cancel_pick_up(
            pickup_id: str, body: Cancellation, key: IdempotencyKey = None
        ) -> JSONResponse:
            return lg.write(
                key,
                f"pick_up_cancel:{pickup_id}",
                body,
                lambda s: lg.cancel(s, pick_up, pickup_id, body),
            )

        @app.post("/installations", status_code=201, response_model=InstallationBooked)
        def book_installation(body: NewInstallation, key: IdempotencyKey = None) -> JSONResponse:
            return lg.write(
                key, "book_installation", body, lambda s: lg.book_installation(s, body), 201
            )

        @app.get("/installations/{appointment_id}", response_model=AppointmentView)
        def get_installation(appointment_id: str) -> AppointmentView:
            with service.session() as session:
                return lg.appointment_view(session, installation, appointment_id)

        @app.post("/installations/{appointment_id}/completion", response_model=AppointmentView)
        def complete_installation(
            appointment_id: str, body: InstallationReport, key: IdempotencyKey = None
        ) -> JSONResponse:
            return lg.write(
                key,
                f"installation_completion:{appointment_id}",
                body,
                lambda s: lg.complete_installation(s, appointment_id, body),
            )

        @app.post("/installations/{appointment_id}/cancel", response_model=Undone)
        def cancel_installation(
            appointment_id: str, body: Cancellation, key: IdempotencyKey = None
        ) -> JSONResponse:
            return lg.write(
                key,
                f"installation_cancel:{appointment_id}",
                body,
                lambda s: lg.cancel(s, installation, appointment_id, body),
            )

        @app.post("/inspections", status_code=201, response_model=InspectionBooked)
        def book_inspection(body: NewInspection, key: IdempotencyKey = None) -> JSONResponse:
            return lg.write(
                key, "book_inspection", body, lambda s: lg.book_inspection(s, body), 201
            )

        @app.get("/inspections/{inspection_id}", response_model=InspectionView)
        def get_inspection(inspection_id: str) -> InspectionView:
            with service.session() as session:
                return lg.inspection_view(session, inspection_id)

        @app.post("/inspections/{inspection_id}/result", response_model=InspectionView)
        def report_inspection(
            inspection_id: str, body: InspectionReport, key: IdempotencyKey = None
        ) -> JSONResponse:
            """The inspector's verdict (an inspector, the demo or a test): sent to the merchant's
            account as an `InspectionResult`; a second report is refused (409)."""
            return lg.write(
                key,
                f"inspection_result:{inspection_id}",
                body,
                lambda s: lg.report_inspection(s, inspection_id, body),
            )

        @app.post("/inspections/{inspection_id}/cancellation", response_model=Undone)
        def cancel_inspection(
            inspection_id: str, body: Cancellation, key: IdempotencyKey = None
        ) -> JSONResponse:
            return lg.write(
                key,
                f"inspection_cancel:{inspection_id}",
                body,
                lambda s: lg.cancel_inspection(s, inspection_id, body),
            )

        @app.post("/trainings", status_code=201, response_model=TrainingScheduled)
        def schedule_training(body: NewTraining, key: IdempotencyKey = None) -> JSONResponse:
            return lg.write(
                key, "schedule_training", body, lambda s: lg.schedule_training(s, body), 201
            )

        @app.get("/trainings/{session_id}", response_model=AppointmentView)
        def get_training(session_id: str) -> AppointmentView:
            with service.session() as session:
                return lg.appointment_view(session, training, session_id)

        @app.post("/trainings/{session_id}/completion", response_model=AppointmentView)
        def complete_training(
            session_id: str, body: TrainingReport, key: IdempotencyKey = None
        ) -> JSONResponse:
            return lg.write(
                key,
                f"training_completion:{session_id}",
                body,
                lambda s: lg.complete_training(s, session_id, body),
            )

        @app.post("/trainings/{session_id}/cancel", response_model=Undone)
        def cancel_training(
            session_id: str, body: Cancellation, key: IdempotencyKey = None
        ) -> JSONResponse:
            return lg.write(
                key,
                f"training_cancel:{session_id}",
                body,
                lambda s: lg.cancel(s, training, session_id, body),
            )

    return setup


def build(config: ServiceConfig | None = None) -> Service:
    """The logistics service; its auto-progress job runs only when the settings turn it on."""
    holder: dict[str, Logistics] = {}

    def setup(service: Service) -> None:
        for table in UPGRADED:
            add_missing_columns(service.engine, table.__table__)  # type: ignore[attr-defined]
        holder["logistics"] = Logistics(service)
        _routes(holder["logistics"])(service)

    async def auto_progress(_: Service) -> None:
        await holder["logistics"].auto_progress()

    return create_service(
        config or ServiceConfig.from_env("logistics"),
        tables=TABLES,
        setup=setup,
        background=[auto_progress],
    )
