"""What every sandbox service shares: signatures, simulated faults, idempotent writes, and the
outbox's delivery rules (which answers are final, back-off, `Retry-After`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Response
from pydantic import BaseModel
from sqlmodel import col, select

from services.base import (
    MAX_RETRY_AFTER,
    Callback,
    IdempotencyRecord,
    Service,
    ServiceConfig,
    _deliver,
    callback_path,
    create_service,
    enqueue_callback,
    idempotent,
)
from services.signing import Signature, SignatureError, check, parse, sign, verify
from tests.servers import serving
from workers.config import DEV_SECRET, ensure_credentials, read_credentials


def test_a_signature_verifies_only_for_its_body_secret_and_time() -> None:
    body, now = b'{"a": 1}', int(time.time())
    header = sign(body, "s3cret", now)
    assert verify(body, header, "s3cret", now) == now
    for wrong_body, secret, at in [
        (b'{"a": 2}', "s3cret", now),
        (body, "other", now),
        (body, "s3cret", now + 301),
    ]:
        with pytest.raises(SignatureError):
            verify(wrong_body, header, secret, at)
    for malformed in (None, "", "v1=abc", "t=notanumber,v1=abc"):
        with pytest.raises(SignatureError):
            verify(body, malformed, "s3cret", now)


def test_a_signature_header_is_parsed_strictly_and_keyed_on_its_pair() -> None:
    body, now = b'{"a": 1}', int(time.time())
    header = sign(body, "s3cret", now)
    t, v1 = header.split(",")
    signature = check(body, header, "s3cret", now)
    # The same pair in the other order is the same signature: a replay check sees it as one.
    assert check(body, f"{v1},{t}", "s3cret", now).key == signature.key == header
    for malformed in (
        f"{header},x=1",  # anything else
        f"{header},t={now}",  # a second t
        f"{t},{v1},{v1}",  # a second v1
        f"{t},{v1.upper().replace('V1', 'v1')}",  # uppercase hex
        f"{t}, {v1}",  # spaces
        f"t=+{now},{v1}",  # a sign
        f"t={now}é,{v1}",  # not ASCII
        f"{t},{v1}\x00",
        "t=1,v1=" + "a" * 63,
        t,
        "=",
        ",",
        "x" * 10_000,
    ):
        with pytest.raises(SignatureError):
            parse(malformed)
    assert parse(header) == Signature(now, v1.removeprefix("v1="))


def test_a_service_signs_with_its_secret_from_the_environment_or_the_credentials_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("POSFLOW_CREDENTIALS_FILE", raising=False)
    monkeypatch.delenv("POSFLOW_REVIEW_SECRET", raising=False)
    assert ServiceConfig.from_env("review").callback_secret == DEV_SECRET  # nothing generated
    written = ensure_credentials()
    assert written == tmp_path / "credentials.json"
    stored = read_credentials()
    assert stored is not None
    assert ServiceConfig.from_env("review").callback_secret == stored.secrets["review"]
    assert stored.secrets["review"] != stored.secrets["contract"]
    monkeypatch.setenv("POSFLOW_REVIEW_SECRET", "from-the-environment")
    assert ServiceConfig.from_env("review").callback_secret == "from-the-environment"


class Echo(BaseModel):
    value: str


async def test_simulated_failures_answer_503_and_write_nothing(tmp_path: Path) -> None:
    config = ServiceConfig(
        name="probe",
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        failure_rate=1.0,
        delay=(0.05, 0.05),
    )
    service = create_service(config, tables=[])

    @service.app.post("/echo")
    def echo(body: Echo) -> object:
        with service.session() as session:
            return idempotent(session, "probe", "key-1", body, lambda: body)

    async with serving(service.app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/health")).status_code == 200  # health is never faulted
        started = time.monotonic()
        response = await http.post("/echo", json={"value": "x"})
        assert time.monotonic() - started >= 0.05
        assert response.status_code == 503 and response.json()["error"] == "simulated_failure"
    with service.session() as session:
        assert session.exec(select(IdempotencyRecord)).all() == []


# --- the outbox: which answers end a delivery, and when the next attempt comes ---------------


def outbox(tmp_path: Path, gateway_url: str = "http://gateway.test") -> Service:
    config = ServiceConfig(
        name="probe", database_url=f"sqlite:///{tmp_path / 'outbox.db'}", gateway_url=gateway_url
    )
    return create_service(config, tables=[])


async def attempt(
    service: Service, answer: Callable[[httpx.Request], httpx.Response], attempts_before: int = 0
) -> Callback:
    """One `_deliver` of a fresh callback against a fake gateway answering `answer`."""
    with service.session() as session:
        enqueue_callback(session, "probe", callback_path("APP-1", "delivery"), Echo(value="x"))
        session.commit()
        callback = session.exec(select(Callback).order_by(col(Callback.id).desc())).first()
        assert callback is not None
        callback.attempts = attempts_before
        async with httpx.AsyncClient(
            base_url="http://gateway.test", transport=httpx.MockTransport(answer)
        ) as client:
            await _deliver(client, session, service.config, callback)
        session.commit()
        session.refresh(callback)
        return callback


def waits(callback: Callback, since: datetime) -> float:
    at = callback.next_attempt_at
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return (at - since).total_seconds()


@pytest.mark.parametrize(
    ("status", "final"),
    [
        (200, True),
        (201, True),
        (202, True),  # the workflow accepted the message and will apply it: pending, not lost
        (204, True),
        (400, True),
        (404, True),
        (409, True),
        (422, True),
        (401, False),  # a signature refused: a clock or a secret to fix, then it goes through
        (403, False),
        (408, False),
        (425, False),
        (429, False),
        (500, False),
        (502, False),
        (503, False),
        (504, False),
    ],
)
async def test_which_answers_end_a_delivery(tmp_path: Path, status: int, final: bool) -> None:
    service = outbox(tmp_path)
    started = datetime.now(UTC)
    callback = await attempt(service, lambda _: httpx.Response(status, text="why"))
    assert callback.attempts == 1
    assert (callback.delivered_at is not None) is final
    if 200 <= status < 300:
        assert callback.last_error == ""
    else:
        assert callback.last_error == f"{status} why"
    if not final:
        assert 0.5 <= waits(callback, started) < 1.5  # the first back-off


async def test_a_transport_error_is_retried_with_back_off_capped_at_30_s(tmp_path: Path) -> None:
    service = outbox(tmp_path)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    started = datetime.now(UTC)
    callback = await attempt(service, down, attempts_before=2)
    assert callback.delivered_at is None and callback.last_error.startswith("ConnectError")
    assert 2.0 <= waits(callback, started) < 3.0  # 0.5 s doubled twice
    late = await attempt(service, down, attempts_before=20)
    assert 30.0 <= waits(late, started) < 31.0


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        (503, "120", 120.0),
        (429, "7", 7.0),
        (425, "2.5", 2.5),
        (503, "86400", MAX_RETRY_AFTER),  # capped: a callback is never parked for a day
        (503, "0", 0.5),  # never sooner than the back-off
        (503, "-5", 0.5),
        (503, "soon", 0.5),  # unreadable: the back-off
        (500, "120", 0.5),  # only 425, 429 and 503 say when to come back
    ],
)
async def test_retry_after_sets_the_next_attempt(
    tmp_path: Path, status: int, header: str, expected: float
) -> None:
    service = outbox(tmp_path)
    started = datetime.now(UTC)
    callback = await attempt(
        service, lambda _: httpx.Response(status, headers={"Retry-After": header})
    )
    assert callback.delivered_at is None and callback.attempts == 1
    assert expected <= waits(callback, started) < expected + 1.0


async def test_retry_after_as_an_http_date(tmp_path: Path) -> None:
    service = outbox(tmp_path)
    started = datetime.now(UTC)
    when = format_datetime(started + timedelta(seconds=90), usegmt=True)
    callback = await attempt(service, lambda _: httpx.Response(503, headers={"Retry-After": when}))
    assert 88.0 <= waits(callback, started) < 91.0


async def test_a_busy_gateway_is_tried_again_after_its_retry_after(tmp_path: Path) -> None:
    """Over real HTTP: a 503 with `Retry-After: 1`, then a 202 (accepted, pending): the second
    attempt waits the second out, and the 202 ends the delivery."""
    seen: list[float] = []
    gateway = FastAPI()

    @gateway.post("/api/applications/{application_id}/{kind}")
    async def receive(application_id: str, kind: str) -> Response:
        seen.append(time.monotonic())
        if len(seen) == 1:
            return Response(status_code=503, headers={"Retry-After": "1"})
        return Response(status_code=202, content=b'{"outcome": "pending"}')

    async with serving(gateway) as gateway_url:
        service = outbox(tmp_path, gateway_url)
        with service.session() as session:
            enqueue_callback(session, "probe", callback_path("APP-1", "contract"), Echo(value="x"))
            session.commit()
        async with serving(service.app):
            for _ in range(200):
                with service.session() as session:
                    [callback] = session.exec(select(Callback)).all()
                if callback.delivered_at is not None:
                    break
                await asyncio.sleep(0.05)
    assert callback.delivered_at is not None and callback.attempts == 2
    assert callback.last_error == ""
    assert len(seen) == 2 and seen[1] - seen[0] >= 0.95


async def test_one_slow_answer_does_not_hold_up_other_applications_callbacks(
    tmp_path: Path,
) -> None:
    """The gateway may take seconds over one application's message (held as pending by its
    workflow): another application's callback queued behind it is delivered meanwhile, and one
    application's callbacks still go in the order they were written."""
    slow_release = asyncio.Event()
    arrived: list[tuple[str, str, float]] = []
    gateway = FastAPI()

    @gateway.post("/api/applications/{application_id}/{kind}")
    async def receive(application_id: str, kind: str) -> Response:
        arrived.append((application_id, kind, time.monotonic()))
        if application_id == "APP-SLOW" and kind == "review-decision":
            await asyncio.wait_for(slow_release.wait(), 5)
        return Response(status_code=200, content=b"{}")

    async with serving(gateway) as gateway_url:
        service = outbox(tmp_path, gateway_url)
        with service.session() as session:
            for app_id, kind in [
                ("APP-SLOW", "review-decision"),
                ("APP-SLOW", "site-survey"),
                ("APP-FAST", "contract"),
            ]:
                enqueue_callback(session, "probe", callback_path(app_id, kind), Echo(value=kind))
            session.commit()
        async with serving(service.app):
            for _ in range(100):
                if any(a == "APP-FAST" for a, _, _ in arrived):
                    break
                await asyncio.sleep(0.05)
            # The fast application's callback got through while the slow one was still held.
            assert [(a, k) for a, k, _ in arrived] == [
                ("APP-SLOW", "review-decision"),
                ("APP-FAST", "contract"),
            ]
            slow_release.set()
            for _ in range(100):
                if len(arrived) == 3:
                    break
                await asyncio.sleep(0.05)
    assert [(a, k) for a, k, _ in arrived][2] == ("APP-SLOW", "site-survey")
