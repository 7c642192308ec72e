"""The bodies the gateway's API takes and answers that are its own (the messages themselves are
`schemas.messages`), so the OpenAPI description carries every shape."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from gateway.limits import APPLICATION_ID_RULE
from schemas.application import Application
from schemas.policy import PolicyOverrides


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
