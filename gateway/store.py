"""The gateway's own records: every application and every message received, with its outcome.

They outlive Temporal's history retention: the merchant file and the audit trail stay here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, select

from services.base import make_engine


def _now() -> datetime:
    return datetime.now(UTC)


class ApplicationRecord(SQLModel, table=True):
    __tablename__ = "gateway_applications"

    application_id: str = Field(primary_key=True)
    workflow_id: str
    channel: str = Field(index=True)
    merchant_type: str
    merchant_name: str = Field(index=True)
    stage: str = Field(index=True)
    application: str  # the application as submitted, JSON: the merchant file
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class MessageRecord(SQLModel, table=True):
    """Who sent what, when, and what became of it (applied, duplicate, refused and why)."""

    __tablename__ = "gateway_messages"

    id: int | None = Field(default=None, primary_key=True)
    application_id: str = Field(index=True)
    source: str  # merchant, review, contract, device, logistics, training, operator, admin
    kind: str  # documents, review_decision, cancel, retry, ...
    message_id: str = ""
    received_at: datetime = Field(default_factory=_now)
    outcome: str  # applied | duplicate | refused | invalid | unauthenticated
    detail: str = ""
    body: str = ""  # JSON with personal numbers masked


class SeenSignature(SQLModel, table=True):
    """Signatures already accepted: the same signed callback replayed is refused."""

    __tablename__ = "gateway_signatures"

    signature: str = Field(primary_key=True)
    received_at: datetime = Field(default_factory=_now)


TABLES = [ApplicationRecord, MessageRecord, SeenSignature]


class Store:
    def __init__(self, database_url: str) -> None:
        self.engine: Engine = make_engine(database_url)
        SQLModel.metadata.create_all(self.engine, tables=[t.__table__ for t in TABLES])  # type: ignore[attr-defined]

    def session(self) -> Session:
        return Session(self.engine)

    def record_application(self, record: ApplicationRecord) -> ApplicationRecord:
        with self.session() as session:
            existing = session.get(ApplicationRecord, record.application_id)
            if existing is not None:
                return existing
            session.add(record)
            session.commit()
            session.refresh(record)
            return record

    def set_stage(self, application_id: str, stage: str) -> None:
        with self.session() as session:
            record = session.get(ApplicationRecord, application_id)
            if record is not None and record.stage != stage:
                record.stage = stage
                record.updated_at = _now()
                session.add(record)
                session.commit()

    def application(self, application_id: str) -> ApplicationRecord | None:
        with self.session() as session:
            return session.get(ApplicationRecord, application_id)

    def record_message(self, **fields: Any) -> None:
        body = fields.pop("body", None)
        with self.session() as session:
            session.add(
                MessageRecord(body=json.dumps(body, ensure_ascii=False) if body else "", **fields)
            )
            session.commit()

    def messages(self, application_id: str) -> list[MessageRecord]:
        with self.session() as session:
            query = select(MessageRecord).where(MessageRecord.application_id == application_id)
            return list(session.exec(query.order_by(MessageRecord.id)).all())  # type: ignore[arg-type]

    def first_use_of(self, signature: str) -> bool:
        """True the first time a signature is seen; False for a replay."""
        with self.session() as session:
            if session.get(SeenSignature, signature) is not None:
                return False
            session.add(SeenSignature(signature=signature))
            session.commit()
            return True
