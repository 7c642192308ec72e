"""The gateway's own records: every application as the list pages show it, every message received
with its outcome, and how long each application spent in each stage.

The list and overview pages read only this store, never Temporal's visibility API (rate-limited
on Temporal Cloud, slower with many applications). Each workflow keeps its row current: it sends
a numbered snapshot (`schemas.status.Projection`) at every change of stage, deadline, attention
or review round, from the same place it upserts its search attributes, and an older snapshot
never overwrites a newer one. The records also outlive Temporal's history retention.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import Connection, Engine, delete, func, inspect, or_, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer
from sqlmodel import Field, Session, SQLModel, col, select

from schemas.application import Channel, MerchantType
from schemas.merchant import AccountState, MerchantStatus, SuspensionReason, TerminalState
from schemas.status import Projection, Stage
from services.base import lock_schema, make_engine
from workers.logging import mask_text, masked

# The stages of the process in the order an application goes through them: the funnel.
PROCESS = [
    Stage.COLLECTING_DOCUMENTS,
    Stage.SITE_SURVEY,
    Stage.IN_REVIEW,
    Stage.CONTRACT,
    Stage.PREPARING_DEVICES,
    Stage.DELIVERING,
    Stage.ACTIVATING,
    Stage.TRAINING,
    Stage.GOING_LIVE,
    Stage.LIVE,
]
IN_FLIGHT = [*PROCESS[:-1], Stage.CLOSING]
ENDINGS = [Stage.LIVE, Stage.REJECTED, Stage.EXPIRED, Stage.CANCELLED]


def utc(moment: datetime) -> datetime:
    """Every time is kept in UTC (sqlmodel stores it so and gives it back so); a naive one is
    taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class ApplicationRecord(SQLModel, table=True):
    __tablename__ = "gateway_applications"

    application_id: str = Field(primary_key=True)
    workflow_id: str
    channel: str = Field(index=True)
    merchant_type: str = Field(index=True)
    merchant_name: str = Field(index=True)
    fulfilment: str = ""
    stage: str = Field(index=True)
    stage_entered_at: datetime | None = None
    stage_deadline: datetime | None = Field(default=None, index=True)
    review_round: int = Field(default=1, index=True)
    needs_attention: bool = Field(default=False, index=True)
    attention_kind: str = ""
    attention_reason: str = ""
    attention_since: datetime | None = None
    mid: str = ""
    started_at: datetime | None = Field(default=None, index=True)
    ended_at: datetime | None = Field(default=None, index=True)
    outcome_reason: str = ""
    version: int = 0  # of the last snapshot applied; 0: only the gateway's own start record
    run_id: str = ""  # the run whose snapshots are applied; "": the first run to send one
    application: str = ""  # the application as submitted, JSON, masked: the merchant file
    # SHA-256 of the masked application and its policy as started: the same application id sent
    # again with another body is refused, the same body is an idempotent repeat.
    fingerprint: str = ""
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)

    def overdue(self, now: datetime) -> bool:
        return (
            self.ended_at is None
            and self.stage_deadline is not None
            and utc(self.stage_deadline) < utc(now)
        )

    def summary(self, now: datetime) -> dict[str, Any]:
        """The row as the API lists it: times in UTC with their offset, and whether overdue."""
        data = self.model_dump(mode="json", exclude={"application", "fingerprint"})
        for name in (
            "stage_entered_at",
            "stage_deadline",
            "attention_since",
            "started_at",
            "ended_at",
            "created_at",
            "updated_at",
        ):
            value = getattr(self, name)
            data[name] = utc(value).isoformat() if value else None
        data["overdue"] = self.overdue(now)
        return data


class StageVisitRecord(SQLModel, table=True):
    """One stay of one application in one stage: when it came and, once gone, how long it stayed."""

    __tablename__ = "gateway_stage_visits"

    application_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    stage: str = Field(index=True)
    entered_at: datetime
    left_at: datetime | None = Field(default=None, index=True)
    seconds: float | None = None


# What became of a message. `pending`: the workflow accepted it and applies it once the step it
# refers to is recorded; the row is settled to applied, duplicate or refused when that happens.
OUTCOMES = ("applied", "duplicate", "pending", "refused", "invalid", "failed")


class MessageRecord(SQLModel, table=True):
    """Who sent what, when, and what became of it (applied, duplicate, refused and why)."""

    __tablename__ = "gateway_messages"

    id: int | None = Field(default=None, primary_key=True)
    application_id: str = Field(index=True)
    source: str  # merchant, review, contract, device, logistics, training, operator, admin
    kind: str  # documents, review_decision, cancel, retry, ...
    message_id: str = ""
    received_at: datetime = Field(default_factory=_now)
    outcome: str  # one of OUTCOMES
    detail: str = ""
    body: str = ""  # JSON with personal numbers masked
    update_id: str = ""  # the Temporal update that carried it, when it reached the workflow
    settled_at: datetime | None = None  # when a pending message got its final outcome
    # The audit of actions people take (an admin's retry, extend, reset, withdrawal): who, by
    # the credential's role (ops tokens carry no names), and why, as they gave it (masked).
    actor: str = ""
    reason: str = ""


class SeenSignature(SQLModel, table=True):
    """Signatures already accepted, by `services.signing.Signature.key` (the (t, v1) pair, never
    the header's text): the same signed callback replayed is refused."""

    __tablename__ = "gateway_signatures"

    signature: str = Field(primary_key=True)
    received_at: datetime = Field(default_factory=_now)


class MerchantRecord(SQLModel, table=True):
    """A merchant's account after go-live, as its `MerchantAccount` workflow last reported it
    (`MerchantStatus`, numbered across continue-as-new runs): the merchant file, kept after
    Temporal's retention has dropped the workflow."""

    __tablename__ = "gateway_merchants"

    mid: str = Field(primary_key=True)
    workflow_id: str
    application_id: str = Field(index=True)
    run_id: str = ""  # the run that sent the snapshot held (informative: versions order)
    channel: str = Field(index=True)
    merchant_type: str = Field(index=True)
    merchant_name: str = Field(index=True)
    state: str = Field(index=True)
    suspensions: str = ""  # the reasons, comma-separated (`fees,inspection`)
    suspended_since: datetime | None = None
    # Money in fen (cents), exact: `fees_due` issued and unpaid, `fees_overdue` past due.
    fees_due_cents: int = 0
    fees_overdue_cents: int = Field(default=0, index=True)
    next_bill_at: datetime | None = Field(default=None, index=True)
    next_inspection_at: datetime | None = Field(default=None, index=True)
    terminals: int = 0  # in service or on their way (active, faulty, pending)
    needs_attention: bool = Field(default=False, index=True)
    attention_kind: str = ""
    attention_reason: str = ""
    attention_since: datetime | None = None
    closure_cause: str = ""
    closed_at: datetime | None = Field(default=None, index=True)
    went_live_at: datetime | None = Field(default=None, index=True)
    version: int = 0
    updated_at: datetime = Field(default_factory=_now)
    snapshot: str = ""  # the whole MerchantStatus, JSON, masked

    def summary(self) -> dict[str, Any]:
        """The row as the API lists it: times in UTC with their offset, money in yuan."""
        data = self.model_dump(
            mode="json", exclude={"snapshot", "fees_due_cents", "fees_overdue_cents"}
        )
        for name in (
            "suspended_since",
            "next_bill_at",
            "next_inspection_at",
            "attention_since",
            "closed_at",
            "went_live_at",
            "updated_at",
        ):
            value = getattr(self, name)
            data[name] = utc(value).isoformat() if value else None
        data["suspensions"] = [s for s in self.suspensions.split(",") if s]
        data["fees_due"] = _yuan(self.fees_due_cents)
        data["fees_overdue"] = _yuan(self.fees_overdue_cents)
        return data

    def status(self) -> MerchantStatus:
        """The snapshot held, as the workflow's status query answered it then."""
        return MerchantStatus.model_validate_json(self.snapshot)


def cents(amount: Decimal) -> int:
    return int((amount * 100).to_integral_value())


def _yuan(amount_cents: int) -> str:
    return str((Decimal(amount_cents) / 100).quantize(Decimal("0.01")))


TABLES = [ApplicationRecord, StageVisitRecord, MessageRecord, SeenSignature, MerchantRecord]

SortKey = Literal["deadline", "started", "updated", "stage_entered"]
MAX_OFFSET = 2**31 - 1


class ListFilter(BaseModel):
    """The list's filters, as query parameters: each value is validated, never spliced into SQL."""

    model_config = {"extra": "forbid"}

    stage: Stage | None = None
    channel: Channel | None = None
    merchant_type: MerchantType | None = None
    needs_attention: bool | None = None
    overdue: bool | None = None
    review_round: int | None = PydanticField(default=None, ge=1, le=20)
    in_flight: bool | None = None
    q: str | None = PydanticField(default=None, max_length=100)  # id or merchant name
    sort: SortKey = "deadline"
    limit: int = PydanticField(default=50, ge=1, le=500)
    # Bounded by what every database's OFFSET takes (past 2**63, SQLite's was a 500).
    offset: int = PydanticField(default=0, ge=0, le=MAX_OFFSET)


MerchantSortKey = Literal["updated", "went_live", "next_bill", "next_inspection", "overdue", "name"]
# Merchants whose account is not closed: what "suspended", "overdue" and "attention" count.
OPEN_STATES = [s.value for s in AccountState if not s.finished]


class MerchantFilter(BaseModel):
    """The merchants list's filters, as query parameters: validated, never spliced into SQL."""

    model_config = {"extra": "forbid"}

    state: AccountState | None = None
    channel: Channel | None = None
    merchant_type: MerchantType | None = None
    suspended: bool | None = None
    suspension: SuspensionReason | None = None  # suspended for this reason
    fees_overdue: bool | None = None
    needs_attention: bool | None = None
    q: str | None = PydanticField(default=None, max_length=100)  # MID, application id or name
    sort: MerchantSortKey = "updated"
    limit: int = PydanticField(default=50, ge=1, le=500)
    offset: int = PydanticField(default=0, ge=0, le=MAX_OFFSET)


class MerchantCounts(BaseModel):
    """The merchants at a glance: by state, suspended by reason, fees overdue, attention (the
    last three among accounts not closed)."""

    total: int
    by_state: dict[str, int]
    suspended_by_reason: dict[str, int]
    fees_overdue: int
    needs_attention: int


class Overview(BaseModel):
    since: datetime
    now: datetime
    in_flight: dict[str, int]
    in_flight_total: int
    overdue: int
    needs_attention: int
    started: int
    outcomes: dict[str, int]
    funnel: dict[str, int]
    time_in_stage: list[dict[str, Any]]


def _sql_literal(value: str | int | bool) -> str:
    """A column default as SQL: strings in single quotes (a double-quoted "" is an identifier to
    PostgreSQL), booleans and numbers as they are."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return json.dumps(value)


def _percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    index = max(0, min(len(values) - 1, round(share * len(values) + 0.5) - 1))
    return values[index]


class Store:
    def __init__(self, database_url: str) -> None:
        self.engine: Engine = make_engine(database_url)
        # Gateways sharing one database may start at once: one creates or upgrades the tables
        # while the others wait for it (`lock_schema`), then find them there.
        with self.engine.begin() as connection:
            lock_schema(connection)
            SQLModel.metadata.create_all(connection, tables=[t.__table__ for t in TABLES])  # type: ignore[attr-defined]
            self._add_missing_columns(connection)

    def _add_missing_columns(self, connection: Connection) -> None:
        """Columns added since a store was created are added to it (all of them have defaults or
        allow NULL), so an existing `.posflow/gateway.db` keeps working after an upgrade."""
        inspector = inspect(connection)
        for model in TABLES:
            table = model.__table__  # type: ignore[attr-defined]
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                kind = column.type.compile(dialect=self.engine.dialect)
                default = column.default.arg if column.default is not None else None
                literal = (
                    f" NOT NULL DEFAULT {_sql_literal(default)}"
                    if isinstance(default, str | int | bool) and not callable(default)
                    else ""
                )
                connection.execute(
                    text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{literal}')
                )

    def session(self) -> Session:
        return Session(self.engine)

    # --- the application file -------------------------------------------------------------------

    def record_application(self, record: ApplicationRecord) -> ApplicationRecord:
        """Keep the application as submitted; a snapshot that arrived first is left as it is.
        Returns the record held, whose fingerprint says whether it was this application."""
        with self.session() as session:
            existing = session.get(ApplicationRecord, record.application_id)
            if existing is not None:
                if not existing.application or not existing.fingerprint:
                    # Created by a snapshot, or kept from before fingerprints: this start's body
                    # is the one that counts from now on.
                    existing.application = existing.application or record.application
                    existing.fingerprint = record.fingerprint
                    session.add(existing)
                    session.commit()
                    session.refresh(existing)
                return existing
            session.add(record)
            try:
                session.commit()
            except IntegrityError:  # the first snapshot won the race
                session.rollback()
                return self.record_application(record)
            session.refresh(record)
            return record

    def application(self, application_id: str) -> ApplicationRecord | None:
        with self.session() as session:
            return session.get(ApplicationRecord, application_id)

    # --- the projection -------------------------------------------------------------------------

    def apply(self, snapshot: Projection) -> tuple[bool, int]:
        """Apply a workflow's snapshot unless a newer one is already here.

        Returns (applied, the version now held). The version check is part of the UPDATE, so two
        snapshots delivered at once cannot leave the older one in place.
        """
        values = self._values(snapshot)
        run_ok = col(ApplicationRecord.run_id) == snapshot.run_id
        if snapshot.run_id:
            run_ok = or_(run_ok, col(ApplicationRecord.run_id) == "")
        with self.session() as session:
            result = session.execute(
                update(ApplicationRecord)
                .where(col(ApplicationRecord.application_id) == snapshot.application_id)
                .where(col(ApplicationRecord.version) < snapshot.version)
                .where(run_ok)
                .values(**values)
            )
            applied = bool(result.rowcount)  # type: ignore[attr-defined]
            if not applied:
                current = session.get(ApplicationRecord, snapshot.application_id)
                if current is not None:
                    return False, current.version
                session.add(ApplicationRecord(application_id=snapshot.application_id, **values))
                try:
                    session.flush()
                except IntegrityError:  # created meanwhile by the start or another snapshot
                    session.rollback()
                    return self.apply(snapshot)
            session.execute(
                delete(StageVisitRecord).where(
                    col(StageVisitRecord.application_id) == snapshot.application_id
                )
            )
            for seq, visit in enumerate(snapshot.visits):
                following = snapshot.visits[seq + 1 : seq + 2]
                left = following[0].entered_at if following else None
                session.add(
                    StageVisitRecord(
                        application_id=snapshot.application_id,
                        seq=seq,
                        stage=visit.stage.value,
                        entered_at=utc(visit.entered_at),
                        left_at=utc(left) if left else None,
                        seconds=(left - visit.entered_at).total_seconds() if left else None,
                    )
                )
            session.commit()
            return True, snapshot.version

    def follow_run(self, application_id: str, run_id: str) -> None:
        """After a reset: the list follows the new run's snapshots from now on (numbered from the
        reset point, lower than the old run's), and ignores the old run's late ones."""
        with self.session() as session:
            session.execute(
                update(ApplicationRecord)
                .where(col(ApplicationRecord.application_id) == application_id)
                .values(run_id=run_id, version=0)
            )
            session.commit()

    @staticmethod
    def _values(snapshot: Projection) -> dict[str, Any]:
        attention = snapshot.attention

        def at(moment: datetime | None) -> datetime | None:
            return utc(moment) if moment else None

        return {
            "workflow_id": snapshot.workflow_id,
            "channel": snapshot.channel,
            "merchant_type": snapshot.merchant_type,
            "merchant_name": snapshot.merchant_name,
            "fulfilment": snapshot.fulfilment,
            "stage": snapshot.stage.value,
            "stage_entered_at": at(snapshot.stage_entered_at),
            "stage_deadline": at(snapshot.stage_deadline),
            "review_round": snapshot.review_round,
            "needs_attention": attention is not None,
            "attention_kind": attention.kind.value if attention else "",
            "attention_reason": mask_text(attention.reason) if attention else "",
            "attention_since": at(attention.since) if attention else None,
            "mid": snapshot.mid or "",
            "started_at": at(snapshot.started_at),
            "ended_at": at(snapshot.ended_at),
            "outcome_reason": mask_text(snapshot.outcome_reason),
            "version": snapshot.version,
            "run_id": snapshot.run_id,
            "updated_at": _now(),
        }

    # --- reading --------------------------------------------------------------------------------

    def page(
        self, wanted: ListFilter, now: datetime | None = None
    ) -> tuple[list[ApplicationRecord], int]:
        """One page of applications matching `wanted`, and how many match in all."""
        moment = utc(now or datetime.now(UTC))
        # The merchant file is never listed: leave it in the table (it is most of a row's size).
        query = select(ApplicationRecord).options(
            defer(ApplicationRecord.application)  # type: ignore[arg-type]
        )
        conditions: list[Any] = []
        if wanted.stage is not None:
            conditions.append(col(ApplicationRecord.stage) == wanted.stage.value)
        if wanted.channel is not None:
            conditions.append(col(ApplicationRecord.channel) == wanted.channel.value)
        if wanted.merchant_type is not None:
            conditions.append(col(ApplicationRecord.merchant_type) == wanted.merchant_type.value)
        if wanted.needs_attention is not None:
            conditions.append(col(ApplicationRecord.needs_attention) == wanted.needs_attention)
        if wanted.review_round is not None:
            conditions.append(col(ApplicationRecord.review_round) == wanted.review_round)
        if wanted.in_flight is not None:
            ended = col(ApplicationRecord.ended_at)
            conditions.append(ended.is_(None) if wanted.in_flight else ended.is_not(None))
        if wanted.overdue is not None:
            late = (
                col(ApplicationRecord.ended_at).is_(None)
                & col(ApplicationRecord.stage_deadline).is_not(None)
                & (col(ApplicationRecord.stage_deadline) < moment)
            )
            conditions.append(late if wanted.overdue else ~late)
        if wanted.q:
            term = wanted.q.strip()
            pattern = "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            conditions.append(
                or_(
                    col(ApplicationRecord.application_id) == term,
                    col(ApplicationRecord.workflow_id) == term,
                    col(ApplicationRecord.mid) == term,
                    col(ApplicationRecord.merchant_name).ilike(pattern, escape="\\"),
                )
            )
        for condition in conditions:
            query = query.where(condition)
        orders: dict[str, list[Any]] = {
            "deadline": [
                col(ApplicationRecord.stage_deadline).is_(None),
                col(ApplicationRecord.stage_deadline),
            ],
            "started": [col(ApplicationRecord.started_at).desc()],
            "updated": [col(ApplicationRecord.updated_at).desc()],
            "stage_entered": [col(ApplicationRecord.stage_entered_at)],
        }
        order = orders[wanted.sort]
        counting = select(func.count()).select_from(ApplicationRecord)
        for condition in conditions:
            counting = counting.where(condition)
        with self.session() as session:
            total = session.exec(counting).one()
            rows = session.exec(
                query.order_by(*order, col(ApplicationRecord.application_id))
                .offset(wanted.offset)
                .limit(wanted.limit)
            ).all()
            return list(rows), int(total)

    def overview(self, since: datetime, now: datetime | None = None) -> Overview:
        """Counts and times for the overview page: what is in flight now, what ended since
        `since`, and how long the stays in each stage that ended since then took."""
        moment = utc(now or datetime.now(UTC))
        start = utc(since)
        app = ApplicationRecord
        with self.session() as session:
            open_ = col(app.ended_at).is_(None)
            in_flight = dict(
                session.exec(
                    select(app.stage, func.count()).where(open_).group_by(col(app.stage))
                ).all()
            )
            overdue = session.exec(
                select(func.count())
                .select_from(app)
                .where(open_)
                .where(col(app.stage_deadline).is_not(None))
                .where(col(app.stage_deadline) < moment)
            ).one()
            attention = session.exec(
                select(func.count())
                .select_from(app)
                .where(open_)
                .where(col(app.needs_attention).is_(True))
            ).one()
            started = session.exec(
                select(func.count()).select_from(app).where(col(app.started_at) >= start)
            ).one()
            outcomes = dict(
                session.exec(
                    select(app.stage, func.count())
                    .where(col(app.ended_at) >= start)
                    .group_by(col(app.stage))
                ).all()
            )
            visit = StageVisitRecord
            funnel = dict(
                session.exec(
                    select(visit.stage, func.count(func.distinct(visit.application_id)))
                    .join(app, col(app.application_id) == col(visit.application_id))
                    .where(col(app.started_at) >= start)
                    .group_by(col(visit.stage))
                ).all()
            )
            durations: dict[str, list[float]] = defaultdict(list)
            for stage, seconds in session.exec(
                select(visit.stage, visit.seconds)
                .where(col(visit.left_at) >= start)
                .where(col(visit.seconds).is_not(None))
            ).all():
                durations[stage].append(float(seconds or 0.0))
        times = []
        for stage in IN_FLIGHT:
            values = sorted(durations.get(stage.value, []))
            if values:
                times.append(
                    {
                        "stage": stage.value,
                        "visits": len(values),
                        "median_seconds": statistics.median(values),
                        "p90_seconds": _percentile(values, 0.9),
                    }
                )
        return Overview(
            since=start,
            now=moment,
            in_flight={s.value: int(in_flight.get(s.value, 0)) for s in IN_FLIGHT},
            in_flight_total=int(sum(in_flight.values())),
            overdue=int(overdue),
            needs_attention=int(attention),
            started=int(started),
            outcomes={s.value: int(outcomes.get(s.value, 0)) for s in ENDINGS},
            funnel={s.value: int(funnel.get(s.value, 0)) for s in PROCESS},
            time_in_stage=times,
        )

    def gauges(self, now: datetime | None = None) -> tuple[dict[str, int], int, int]:
        """Applications per stage (ended ones under their ending), how many in flight are past
        their stage deadline, and how many need attention: what `/metrics` exports."""
        moment = utc(now or datetime.now(UTC))
        app = ApplicationRecord
        open_ = col(app.ended_at).is_(None)
        with self.session() as session:
            per_stage = dict(
                session.exec(select(app.stage, func.count()).group_by(col(app.stage))).all()
            )
            overdue = session.exec(
                select(func.count())
                .select_from(app)
                .where(open_)
                .where(col(app.stage_deadline) < moment)
            ).one()
            attention = session.exec(
                select(func.count()).select_from(app).where(open_).where(col(app.needs_attention))
            ).one()
        return {k: int(v) for k, v in per_stage.items()}, int(overdue), int(attention)

    def visits(self, application_id: str) -> list[StageVisitRecord]:
        with self.session() as session:
            query = select(StageVisitRecord).where(
                StageVisitRecord.application_id == application_id
            )
            return list(session.exec(query.order_by(col(StageVisitRecord.seq))).all())

    # --- messages -------------------------------------------------------------------------------

    def record_message(self, **fields: Any) -> int:
        """Keep one message with its outcome; returns the row's id."""
        body = fields.pop("body", None)
        record = MessageRecord(body=json.dumps(body, ensure_ascii=False) if body else "", **fields)
        with self.session() as session:
            session.add(record)
            session.commit()
            return int(record.id or 0)

    def messages(self, application_id: str) -> list[MessageRecord]:
        with self.session() as session:
            query = select(MessageRecord).where(MessageRecord.application_id == application_id)
            return list(session.exec(query.order_by(MessageRecord.id)).all())  # type: ignore[arg-type]

    def attempts(self, application_id: str, message_id: str) -> list[MessageRecord]:
        """Every earlier receipt of one message (a resend carries the same message id)."""
        with self.session() as session:
            query = (
                select(MessageRecord)
                .where(MessageRecord.application_id == application_id)
                .where(MessageRecord.message_id == message_id)
            )
            return list(session.exec(query.order_by(MessageRecord.id)).all())  # type: ignore[arg-type]

    def pending_messages(self, before: datetime, limit: int = 100) -> list[MessageRecord]:
        """Messages still pending that were received before `before`, oldest first."""
        with self.session() as session:
            query = (
                select(MessageRecord)
                .where(MessageRecord.outcome == "pending")
                .where(col(MessageRecord.received_at) < before)
                .order_by(col(MessageRecord.received_at))
                .limit(limit)
            )
            return list(session.exec(query).all())

    def settle_message(
        self,
        application_id: str,
        message_id: str,
        outcome: str,
        detail: str,
        row: int | None = None,
    ) -> int:
        """Give a pending message its final outcome (only the receipt `row`, if given); returns
        how many rows changed. A row already settled is left as it is."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        query = (
            update(MessageRecord)
            .where(col(MessageRecord.application_id) == application_id)
            .where(col(MessageRecord.message_id) == message_id)
            .where(col(MessageRecord.outcome) == "pending")
        )
        if row is not None:
            query = query.where(col(MessageRecord.id) == row)
        with self.session() as session:
            result = session.execute(
                query.values(outcome=outcome, detail=mask_text(detail), settled_at=_now())
            )
            session.commit()
            return int(result.rowcount)  # type: ignore[attr-defined]

    def stamp_action(
        self, application_id: str, message_id: str, kind: str, actor: str, reason: str
    ) -> int:
        """Say who took an action and why on the receipts kept for it without them (the
        forwarding keeps a message's receipts; an action's author is the route's to say).
        Returns how many rows were stamped; a row already stamped is left as it is."""
        query = (
            update(MessageRecord)
            .where(col(MessageRecord.application_id) == application_id)
            .where(col(MessageRecord.message_id) == message_id)
            .where(col(MessageRecord.kind) == kind)
            .where(col(MessageRecord.actor) == "")
        )
        with self.session() as session:
            result = session.execute(query.values(actor=actor, reason=mask_text(reason)))
            session.commit()
            return int(result.rowcount)  # type: ignore[attr-defined]

    def message_counts(self) -> dict[tuple[str, str], int]:
        """Messages received per (source, outcome), for the metrics."""
        with self.session() as session:
            rows = session.exec(
                select(MessageRecord.source, MessageRecord.outcome, func.count()).group_by(
                    col(MessageRecord.source), col(MessageRecord.outcome)
                )
            ).all()
            return {(source, outcome): int(n) for source, outcome, n in rows}

    def first_use_of(self, signature: str) -> bool:
        """True the first time a signature is seen; False for a replay. The primary key decides:
        of two gateways sharing the store that receive the same signed message at once, exactly
        one gets True."""
        with self.session() as session:
            if session.get(SeenSignature, signature) is not None:
                return False
            session.add(SeenSignature(signature=signature))
            try:
                session.commit()
            except IntegrityError:  # another gateway (or request) took it first
                session.rollback()
                return False
            return True

    # --- merchants after go-live ------------------------------------------------------------

    def apply_merchant(self, status: MerchantStatus) -> tuple[bool, int]:
        """Apply a merchant workflow's snapshot unless one as new or newer is here already.

        Versions only increase for a MID, across continue-as-new runs, so the run is not part
        of the order. Returns (applied, the version now held); the check is in the UPDATE."""
        values = self._merchant_values(status)
        with self.session() as session:
            result = session.execute(
                update(MerchantRecord)
                .where(col(MerchantRecord.mid) == status.mid)
                .where(col(MerchantRecord.version) < status.version)
                .values(**values)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                current = session.get(MerchantRecord, status.mid)
                if current is not None:
                    return False, current.version
                session.add(MerchantRecord(mid=status.mid, **values))
                try:
                    session.flush()
                except IntegrityError:  # another snapshot of it arrived meanwhile
                    session.rollback()
                    return self.apply_merchant(status)
            session.commit()
            return True, status.version

    @staticmethod
    def _merchant_values(status: MerchantStatus) -> dict[str, Any]:
        attention = status.attention

        def at(moment: datetime | None) -> datetime | None:
            return utc(moment) if moment else None

        serving = (TerminalState.ACTIVE, TerminalState.FAULTY, TerminalState.PENDING)
        snapshot = masked(status.model_dump(mode="json"))
        return {
            "workflow_id": status.workflow_id,
            "application_id": status.application_id,
            "run_id": status.run_id,
            "channel": status.channel,
            "merchant_type": status.merchant_type,
            "merchant_name": status.merchant_name,
            "state": status.state.value,
            "suspensions": ",".join(sorted({s.value for s in status.suspensions})),
            "suspended_since": at(status.suspended_since),
            "fees_due_cents": cents(status.fees_due),
            "fees_overdue_cents": cents(status.fees_overdue),
            "next_bill_at": at(status.next_bill_at),
            "next_inspection_at": at(status.next_inspection_at),
            "terminals": sum(1 for t in status.terminals if t.state in serving),
            "needs_attention": attention is not None,
            "attention_kind": attention.kind.value if attention else "",
            "attention_reason": mask_text(attention.reason) if attention else "",
            "attention_since": at(attention.since) if attention else None,
            "closure_cause": status.closure_cause.value if status.closure_cause else "",
            "closed_at": at(status.closed_at),
            "went_live_at": at(status.went_live_at),
            "version": status.version,
            "updated_at": _now(),
            "snapshot": json.dumps(snapshot, ensure_ascii=False),
        }

    def merchant(self, mid: str) -> MerchantRecord | None:
        with self.session() as session:
            return session.get(MerchantRecord, mid)

    def merchant_of_application(self, application_id: str) -> MerchantRecord | None:
        with self.session() as session:
            query = select(MerchantRecord).where(MerchantRecord.application_id == application_id)
            return session.exec(query.limit(1)).first()

    def merchant_page(self, wanted: MerchantFilter) -> tuple[list[MerchantRecord], int]:
        """One page of merchants matching `wanted`, and how many match in all."""
        row = MerchantRecord
        open_ = col(row.state).in_(OPEN_STATES)
        conditions: list[Any] = []
        if wanted.state is not None:
            conditions.append(col(row.state) == wanted.state.value)
        if wanted.channel is not None:
            conditions.append(col(row.channel) == wanted.channel.value)
        if wanted.merchant_type is not None:
            conditions.append(col(row.merchant_type) == wanted.merchant_type.value)
        if wanted.suspended is not None:
            suspended = open_ & (col(row.suspensions) != "")
            conditions.append(suspended if wanted.suspended else ~suspended)
        if wanted.suspension is not None:
            conditions.append(open_ & _has_reason(wanted.suspension))
        if wanted.fees_overdue is not None:
            overdue = open_ & (col(row.fees_overdue_cents) > 0)
            conditions.append(overdue if wanted.fees_overdue else ~overdue)
        if wanted.needs_attention is not None:
            attention = open_ & col(row.needs_attention).is_(True)
            conditions.append(attention if wanted.needs_attention else ~attention)
        if wanted.q:
            term = wanted.q.strip()
            pattern = "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            conditions.append(
                or_(
                    col(row.mid) == term,
                    col(row.application_id) == term,
                    col(row.workflow_id) == term,
                    col(row.merchant_name).ilike(pattern, escape="\\"),
                )
            )
        orders: dict[str, list[Any]] = {
            "updated": [col(row.updated_at).desc()],
            "went_live": [col(row.went_live_at).desc()],
            "next_bill": [col(row.next_bill_at).is_(None), col(row.next_bill_at)],
            "next_inspection": [col(row.next_inspection_at).is_(None), col(row.next_inspection_at)],
            "overdue": [col(row.fees_overdue_cents).desc()],
            "name": [col(row.merchant_name)],
        }
        query = select(row).options(defer(row.snapshot))  # type: ignore[arg-type]
        counting = select(func.count()).select_from(row)
        for condition in conditions:
            query = query.where(condition)
            counting = counting.where(condition)
        with self.session() as session:
            total = session.exec(counting).one()
            rows = session.exec(
                query.order_by(*orders[wanted.sort], col(row.mid))
                .offset(wanted.offset)
                .limit(wanted.limit)
            ).all()
            return list(rows), int(total)

    def merchant_counts(self) -> MerchantCounts:
        row = MerchantRecord
        open_ = col(row.state).in_(OPEN_STATES)
        with self.session() as session:

            def count(*conditions: Any) -> int:
                query = select(func.count()).select_from(row)
                for condition in conditions:
                    query = query.where(condition)
                return int(session.exec(query).one())

            by_state = dict(
                session.exec(select(row.state, func.count()).group_by(col(row.state))).all()
            )
            return MerchantCounts(
                total=int(sum(by_state.values())),
                by_state={s.value: int(by_state.get(s.value, 0)) for s in AccountState},
                suspended_by_reason={
                    r.value: count(open_, _has_reason(r)) for r in SuspensionReason
                },
                fees_overdue=count(open_, col(row.fees_overdue_cents) > 0),
                needs_attention=count(open_, col(row.needs_attention).is_(True)),
            )


def _has_reason(reason: SuspensionReason) -> Any:
    """Suspended for `reason` (reasons are enum values without commas: no pattern escapes)."""
    return ("," + col(MerchantRecord.suspensions) + ",").like(f"%,{reason.value},%")
