"""What every sandbox service shares: signatures, simulated faults, idempotent writes."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel
from sqlmodel import select

from services.base import IdempotencyRecord, ServiceConfig, create_service, idempotent
from services.signing import SignatureError, sign, verify
from tests.servers import serving


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
