"""What every sandbox service shares: configuration, its database, idempotent writes, JSON errors,
simulated slowness and failures, and signed callbacks delivered with back-off until acknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Connection, Engine, Table, event, inspect, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from schemas.steps import ServiceEvent, ServiceEvents
from services.signing import HEADER, sign
from workers.config import DEV_SECRET, signing_secret, state_dir

log = structlog.get_logger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Where the gateway takes a service's messages about an application: CALLBACK_ROOT/{id}/{kind}.
CALLBACK_ROOT = "/api/applications"
# After go-live, a merchant's messages (fee paid, inspection, replacement delivered...):
# MERCHANT_CALLBACK_ROOT/{mid}/{kind}.
MERCHANT_CALLBACK_ROOT = "/api/merchants"


@dataclass(frozen=True)
class ServiceConfig:
    """One service's settings; every field can come from the environment (`from_env`)."""

    name: str
    database_url: str
    delay: tuple[float, float] = (0.0, 0.0)  # seconds, uniformly drawn per request
    failure_rate: float = 0.0  # share of requests answered 503 before doing anything
    gateway_url: str = "http://127.0.0.1:8000"
    callback_secret: str = DEV_SECRET  # from_env: POSFLOW_<NAME>_SECRET or the credentials file
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, name: str, **overrides: Any) -> ServiceConfig:
        prefix = f"POSFLOW_{name.upper()}_"
        env = os.environ
        delay_ms = env.get(prefix + "DELAY_MS", "0")
        low, _, high = delay_ms.partition("-")
        fields: dict[str, Any] = {
            "name": name,
            "database_url": env.get("DATABASE_URL") or f"sqlite:///{state_dir() / (name + '.db')}",
            "delay": (float(low) / 1000, float(high or low) / 1000),
            "failure_rate": float(env.get(prefix + "FAILURE_RATE", "0")),
            "gateway_url": env.get("POSFLOW_GATEWAY_URL", cls.gateway_url),
            "callback_secret": signing_secret(name),
        }
        return cls(**{**fields, **overrides})


class ServiceError(Exception):
    """A refusal mapped to `{"error", "message", "fields"}` with a 4xx status."""

    def __init__(
        self, status: int, error: str, message: str, fields: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.fields = fields or {}


def error_body(error: str, message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    return {"error": error, "message": message, "fields": fields or {}}


# --- the database ----------------------------------------------------------------------------


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "service_idempotency"

    service: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    fingerprint: str
    status_code: int
    response: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Callback(SQLModel, table=True):
    """The outbox: a callback is kept until the gateway acknowledges it, across restarts."""

    __tablename__ = "service_callbacks"

    id: int | None = Field(default=None, primary_key=True)
    service: str = Field(index=True)
    path: str
    body: str
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    delivered_at: datetime | None = None
    last_error: str = ""
    # When the message was recorded (null only for rows written before the column existed).
    recorded_at: datetime | None = Field(default_factory=lambda: datetime.now(UTC))


def engine_url(url: str) -> str:
    """A database URL as SQLAlchemy takes it: `postgres://` and `postgresql://` (what operators and
    hosted databases hand out) mean the psycopg 3 driver posflow installs."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


# The key of the advisory lock a sandbox service's transaction takes before its first write on
# PostgreSQL (`make_engine(single_writer=True)`).
WRITER_LOCK = 0x706F73777269  # "poswri"
_WRITES = ("INSERT", "UPDATE", "DELETE")


def _one_writer_at_a_time(engine: Engine) -> None:
    """SQLite's write discipline on PostgreSQL: a transaction's first INSERT, UPDATE or DELETE
    first waits for the database's writer lock (an advisory lock held to the end of the
    transaction), so writers take turns and each statement sees what the previous writer
    committed. The sandbox services claim rows with conditional UPDATEs written for that
    discipline (`services.device.reserve` picks terminals in stock in a subquery): under
    PostgreSQL's row locks alone, two such UPDATEs at once would pick the same rows and the
    second would find them gone rather than take the next ones. Reads never wait."""

    @event.listens_for(engine, "before_cursor_execute")
    def _take(connection: Any, cursor: Any, statement: str, _p: Any, _c: Any, _many: bool) -> None:
        if connection.info.get("writer") or not statement.lstrip().upper().startswith(_WRITES):
            return
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
        connection.info["writer"] = True

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _released(connection: Any) -> None:
        connection.info.pop("writer", None)


def make_engine(url: str, *, single_writer: bool = False) -> Engine:
    """An engine for SQLite (the default: a file per role under POSFLOW_HOME) or PostgreSQL.
    `single_writer`: on PostgreSQL too, one write transaction at a time (`_one_writer_at_a_time`),
    as SQLite always does."""
    url = engine_url(url)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _wal(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    if url.startswith(("postgresql:", "postgresql+")):
        # Times are stored without a zone (`TIMESTAMP`), in UTC, on every database: the session
        # zone is UTC so that an aware datetime is stored, compared and read back as UTC whatever
        # the server's own `TimeZone` is.
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            connect_args={"options": "-c TimeZone=UTC"},
        )
        if single_writer:
            _one_writer_at_a_time(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


# The key of the PostgreSQL advisory lock held while a process creates or upgrades its tables:
# processes sharing a database (two gateways, say) starting at once take turns instead of racing
# each other's CREATE TABLE.
SCHEMA_LOCK = 0x706F73666C6F77  # "posflow"


def lock_schema(connection: Connection) -> None:
    """Hold the schema lock until `connection`'s transaction ends (PostgreSQL; SQLite takes a
    database lock for any write, so nothing to do there)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})


def create_tables(engine: Engine, tables: Sequence[Table]) -> None:
    """Create the tables missing from the database, one process at a time."""
    with engine.begin() as connection:
        lock_schema(connection)
        SQLModel.metadata.create_all(connection, tables=list(tables))


def fingerprint(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def idempotent(
    session: Session,
    service: str,
    key: str | None,
    payload: BaseModel | dict[str, Any],
    write: Callable[[], BaseModel],
    status_code: int | Callable[[BaseModel], int] = 200,
) -> JSONResponse:
    """Do `write` once per idempotency key; a repeat gets the first answer, a different request
    under the same key is refused. `write` and the record commit together. `status_code` may
    depend on what `write` returned (201 created, 200 found, say)."""
    if not key:
        raise ServiceError(
            400, "idempotency_key_required", f"the {IDEMPOTENCY_HEADER} header is required"
        )
    print_ = fingerprint(payload)
    earlier = session.get(IdempotencyRecord, (service, key))
    if earlier is not None:
        if earlier.fingerprint != print_:
            raise ServiceError(
                409,
                "idempotency_key_reused",
                "this idempotency key was used for a different request",
            )
        return JSONResponse(
            json.loads(earlier.response),
            status_code=earlier.status_code,
            headers={"Idempotent-Replay": "true"},
        )
    result = write()
    # `notified` and `projected` are the worker's own marks on a step's result (the notice and
    # the snapshot the step carried went out): a service never says them.
    body = result.model_dump(mode="json", exclude={"notified", "projected"})
    if callable(status_code):
        status_code = status_code(result)
    session.add(
        IdempotencyRecord(
            service=service,
            key=key,
            fingerprint=print_,
            status_code=status_code,
            response=json.dumps(body),
        )
    )
    try:
        session.commit()
    except IntegrityError:
        # The same key arrived twice at once and the other request committed first: undo this
        # one's write and answer as the first did.
        session.rollback()
        winner = session.get(IdempotencyRecord, (service, key))
        if winner is None or winner.fingerprint != print_:
            raise ServiceError(
                409,
                "idempotency_key_reused",
                "this idempotency key was used for a different request",
            ) from None
        return JSONResponse(
            json.loads(winner.response),
            status_code=winner.status_code,
            headers={"Idempotent-Replay": "true"},
        )
    return JSONResponse(body, status_code=status_code)


def callback_path(application_id: str, kind: str) -> str:
    """The gateway path of an application's message of `kind` (review-decision, contract,
    delivery...): the id is quoted whole, so any character in it stays inside its segment."""
    return f"{CALLBACK_ROOT}/{quote(application_id, safe='')}/{kind}"


def merchant_callback_path(mid: str, kind: str) -> str:
    """The gateway path of a merchant's message of `kind` (fee-payment, inspection, delivery,
    activation, rebinding-decision)."""
    return f"{MERCHANT_CALLBACK_ROOT}/{quote(mid, safe='')}/{kind}"


def callback_path_for(application_id: str, merchant_id: str | None, kind: str) -> str:
    """Where a step's callback goes: the merchant's routes when the merchant workflow asked for
    the step (`merchant_id` set), else the application's."""
    if merchant_id:
        return merchant_callback_path(merchant_id, kind)
    return callback_path(application_id, kind)


def enqueue_callback(session: Session, service: str, path: str, body: BaseModel) -> None:
    """Queue a signed callback to the gateway; committed with the caller's transaction."""
    session.add(Callback(service=service, path=path, body=body.model_dump_json()))


def recorded_events(
    session: Session, service: str, application_id: str, *, merchant: bool = False
) -> ServiceEvents:
    """Every message `service` recorded for the application (or, with `merchant`, for the MID
    `application_id`), delivered or not, oldest first: what the workflow reads when a deadline
    passes with no word (push, then pull)."""
    prefix = (merchant_callback_path if merchant else callback_path)(application_id, "")
    rows = session.exec(
        select(Callback)
        .where(Callback.service == service)
        # A LIKE with `%` and `_` escaped: another application's id never matches by pattern.
        .where(col(Callback.path).startswith(prefix, autoescape=True))
        .order_by(col(Callback.id))
    ).all()
    events: list[ServiceEvent] = []
    for row in rows:
        kind = row.path[len(prefix) :]
        if not row.path.startswith(prefix) or not kind or "/" in kind:
            continue  # not exactly one segment under this application's own path
        at = row.recorded_at or row.next_attempt_at
        events.append(
            ServiceEvent(
                kind=kind,
                body=json.loads(row.body),
                recorded_at=at if at.tzinfo is not None else at.replace(tzinfo=UTC),
            )
        )
    return ServiceEvents(events=events)


def add_missing_columns(engine: Engine, table: Table) -> list[str]:
    """Add the nullable columns a newer version declares to a table an older one created
    (`create_all` creates missing tables, never missing columns), so kept state still loads;
    returns the names added."""
    added: list[str] = []
    names = {c["name"] for c in inspect(engine).get_columns(table.name)}
    for column in table.columns:
        if column.name in names or not column.nullable:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as connection:
                connection.execute(
                    text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}')
                )
            added.append(column.name)
        except (OperationalError, ProgrammingError):
            # Another process sharing the database added it first.
            if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                raise
    return added


def upgrade_outbox(engine: Engine) -> None:
    """An outbox from before `recorded_at`: its rows get their first scheduled attempt, the
    closest time kept to when each was recorded (exact for every row written since)."""
    if "recorded_at" in add_missing_columns(engine, Callback.__table__):  # type: ignore[attr-defined]
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE service_callbacks SET recorded_at = next_attempt_at"
                    " WHERE recorded_at IS NULL"
                )
            )


# --- the app ---------------------------------------------------------------------------------


@dataclass
class Service:
    """A running sandbox service: its config, engine and FastAPI app."""

    config: ServiceConfig
    engine: Engine
    app: FastAPI
    tables: Sequence[Any]

    def session(self) -> Session:
        return Session(self.engine)


def create_service(
    config: ServiceConfig,
    tables: Sequence[type[SQLModel]],
    setup: Callable[[Service], None] | None = None,
    background: Sequence[Callable[[Service], Coroutine[Any, Any, None]]] = (),
) -> Service:
    """A FastAPI app with the service's tables, JSON errors, simulated faults and the outbox."""
    engine = make_engine(config.database_url, single_writer=True)
    all_tables = [IdempotencyRecord.__table__, Callback.__table__, *(t.__table__ for t in tables)]  # type: ignore[attr-defined]
    create_tables(engine, all_tables)
    upgrade_outbox(engine)
    holder: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service = holder["service"]
        tasks = [asyncio.create_task(deliver_callbacks(service))]
        tasks += [asyncio.create_task(job(service)) for job in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(title=f"posflow sandbox {config.name} service", lifespan=lifespan)
    service = Service(config=config, engine=engine, app=app, tables=all_tables)
    holder["service"] = service

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, err: ServiceError) -> JSONResponse:
        return JSONResponse(error_body(err.error, err.message, err.fields), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        fields = {".".join(str(p) for p in e["loc"] if p != "body"): e["msg"] for e in err.errors()}
        return JSONResponse(
            error_body("invalid_request", "the request has invalid fields", fields), status_code=422
        )

    @app.middleware("http")
    async def _simulated_faults(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path == "/health":
            return await call_next(request)
        low, high = config.delay
        if high > 0:
            await asyncio.sleep(random.uniform(low, high))
        if config.failure_rate and random.random() < config.failure_rate:
            return JSONResponse(
                error_body("simulated_failure", f"{config.name} is failing on purpose"),
                status_code=503,
            )
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"service": config.name, "status": "ok"}

    # `:path`: an id holding a quoted `/` arrives decoded and still reaches this route.
    @app.get("/applications/{application_id:path}/events", response_model=ServiceEvents)
    def application_events(application_id: str) -> ServiceEvents:
        """Every message this service recorded for the application (its outbox), delivered or
        not, in the order recorded: `kind` is the gateway path's last segment, `body` the JSON
        as sent, with its message id, so applying one the gateway already had is a duplicate."""
        with service.session() as session:
            return recorded_events(session, config.name, application_id)

    @app.get("/merchants/{mid}/events", response_model=ServiceEvents)
    def merchant_events(mid: str) -> ServiceEvents:
        """The same for a merchant after go-live: every message recorded for the MID."""
        with service.session() as session:
            return recorded_events(session, config.name, mid, merchant=True)

    if setup is not None:
        setup(service)
    return service


# The gateway's answers that end a callback's delivery without success: it will never take it
# as sent (a malformed body, an unknown application, a message for another stage, invalid
# fields). The refusal is recorded in `last_error`, the workflow learns of it by pulling.
FINAL_REFUSALS = frozenset({400, 404, 409, 422})
# Answers that may say when to come back (`Retry-After`): unavailable, too many, too early.
RETRY_AFTER_STATUSES = frozenset({425, 429, 503})
MAX_BACKOFF = 30.0  # seconds between attempts when the gateway says nothing
MAX_RETRY_AFTER = 300.0  # the longest wait a `Retry-After` can impose


# How many callbacks one poll picks up, and how many applications' callbacks are sent at once.
OUTBOX_BATCH = 200
OUTBOX_CONCURRENCY = 16


async def deliver_callbacks(service: Service, poll: float = 0.2) -> None:
    """Send due callbacks to the gateway, signed, until each is acknowledged or refused for
    good (see `_deliver` for which answers are which)."""
    config = service.config
    async with httpx.AsyncClient(base_url=config.gateway_url, timeout=10) as client:
        while True:
            now = datetime.now(UTC)
            with service.session() as session:
                due = session.exec(
                    select(Callback)
                    .where(Callback.service == config.name, Callback.delivered_at == None)  # noqa: E711
                    .where(Callback.next_attempt_at <= now)
                    .order_by(Callback.id)  # type: ignore[arg-type]
                    .limit(OUTBOX_BATCH)
                    # Two instances of a service sharing its database: each callback is sent by
                    # the one that locked it (PostgreSQL; SQLite has one process per file).
                    .with_for_update(skip_locked=True)
                ).all()
                # One application's callbacks go in order; different applications' go side by
                # side, so one slow answer (the gateway may wait seconds for a workflow that
                # holds a message as pending) never holds up every other merchant's.
                by_application: dict[str, list[Callback]] = {}
                for callback in due:
                    by_application.setdefault(_application_of(callback.path), []).append(callback)
                lanes = asyncio.Semaphore(OUTBOX_CONCURRENCY)
                await asyncio.gather(
                    *(
                        _deliver_in_order(lanes, client, session, config, callbacks)
                        for callbacks in by_application.values()
                    )
                )
                session.commit()
            await asyncio.sleep(poll)


async def _deliver_in_order(
    lanes: asyncio.Semaphore,
    client: httpx.AsyncClient,
    session: Session,
    config: ServiceConfig,
    callbacks: list[Callback],
) -> None:
    async with lanes:
        for callback in callbacks:
            await _deliver(client, session, config, callback)


def _application_of(path: str) -> str:
    """The application a callback path is for (`/api/applications/{id}/...`)."""
    parts = path.split("/")
    return parts[3] if len(parts) > 3 else path


def retry_after(response: httpx.Response, now: datetime) -> float | None:
    """The seconds a 425, 429 or 503 asks to wait (`Retry-After` as seconds or an HTTP date),
    at most `MAX_RETRY_AFTER`; None when there is no usable header."""
    if response.status_code not in RETRY_AFTER_STATUSES:
        return None
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


async def _deliver(
    client: httpx.AsyncClient, session: Session, config: ServiceConfig, callback: Callback
) -> None:
    """One attempt at one callback.

    Final: any 2xx (200 applied or duplicate, 202 accepted but not applied yet: the workflow
    has it) and the refusals 400, 404, 409 and 422. Retried: everything else (401 and other
    4xx, 5xx, no answer), after 0.5 s doubling per attempt up to 30 s, or after the
    `Retry-After` of a 425, 429 or 503 when that is longer (at most 300 s).
    """
    body = callback.body.encode()
    callback.attempts += 1
    wait: float | None = None
    try:
        response = await client.post(
            callback.path,
            content=body,
            headers={
                "Content-Type": "application/json",
                HEADER: sign(body, config.callback_secret, int(time.time())),
            },
        )
        final = response.is_success or response.status_code in FINAL_REFUSALS
        callback.last_error = (
            "" if response.is_success else f"{response.status_code} {response.text[:300]}"
        )
        wait = retry_after(response, datetime.now(UTC))
    except httpx.HTTPError as err:
        final = False
        callback.last_error = f"{type(err).__name__}: {err}"
    if final:
        callback.delivered_at = datetime.now(UTC)
    else:
        backoff = min(0.5 * 2 ** (callback.attempts - 1), MAX_BACKOFF)
        callback.next_attempt_at = datetime.now(UTC) + timedelta(seconds=max(backoff, wait or 0.0))
    session.add(callback)
    log.info(
        "callback_attempt",
        service=config.name,
        path=callback.path,
        attempt=callback.attempts,
        delivered=final,
        error=callback.last_error or None,
        retry_after=wait,
    )
