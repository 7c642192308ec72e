"""The gateway's error answers, `{"error", "message", "fields", "retry"}`, how the workflow's and
Temporal's refusals map onto them, and how they are declared in the OpenAPI description."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from gateway.store import Store
from schemas.messages import Refusal
from workers.logging import mask_text

# An id or a value echoed back in an error is cut to this length: a caller's 100 kB id is not
# sent back to it (nor kept).
SHOWN_CHARS = 64


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """`value` as an error may quote it: at most `limit` characters, masked."""
    text = value if len(value) <= limit else value[:limit] + "…"
    return mask_text(text)


class ApiError(Exception):
    """An error answer: `{"error", "message", "fields", "retry"}`. `retry` tells the sender
    whether the same message may succeed later (then `Retry-After` says when); it defaults to
    true for a 5xx and false otherwise."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        fields: dict[str, str] | None = None,
        *,
        retry: bool | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.fields = fields or {}
        self.retry = status >= 500 if retry is None else retry
        self.extra = extra

    def response(self, retry_after: int = 5) -> JSONResponse:
        body = {
            "error": self.error,
            "message": self.message,
            "fields": self.fields,
            "retry": self.retry,
            **self.extra,
        }
        headers = {"Retry-After": str(retry_after)} if self.retry else None
        return JSONResponse(body, status_code=self.status, headers=headers)


class ErrorBody(BaseModel):
    """Every error answer. `retry`: whether the same request may succeed later (after the
    `Retry-After` seconds of a 503); a false `retry` is final."""

    error: str = Field(examples=["invalid_request"])
    message: str
    fields: dict[str, str] = Field(default_factory=dict, description="field path -> rule")
    retry: bool = False


# How the workflow's refusals are answered: the status, and whether the sender should send the
# same message again later (503 with `Retry-After`) or take the refusal as final. A refusal type
# not listed is final (409).
REFUSALS: dict[str, tuple[int, bool]] = {
    Refusal.UNAVAILABLE.value: (503, True),
    Refusal.INVALID.value: (422, False),
    Refusal.STALE.value: (409, False),
    Refusal.UNKNOWN_REFERENCE.value: (409, False),
    Refusal.OUT_OF_STAGE.value: (409, False),
    Refusal.FINISHED.value: (409, False),
    Refusal.NOT_PARKED.value: (409, False),
    Refusal.NOT_SKIPPABLE.value: (409, False),
    # Temporal's own: the workflow ended while an accepted message was still waiting in it.
    "AcceptedUpdateCompletedWorkflow": (409, False),
}
TEMPORAL_UNAVAILABLE = "temporal_unavailable"  # no answer from Temporal: 503, try again


def refusal(err: WorkflowUpdateFailedError) -> ApiError:
    """The workflow's refusal, by its validator or by its handler after acceptance, answered."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        kind = cause.type or "Refused"
        status, retry = REFUSALS.get(kind, (409, False))
        return ApiError(status, kind, mask_text(cause.message), retry=retry)
    return ApiError(409, "refused", mask_text(str(cause or err)), retry=False)


def unknown_application(application_id: str) -> ApiError:
    return ApiError(404, "unknown_application", f"no application {shown(application_id)}")


def temporal_error(err: RPCError, application_id: str, store: Store) -> ApiError:
    """Temporal's own errors: no such workflow (never started, or ended), or no answer."""
    if err.status is RPCStatusCode.NOT_FOUND:
        if store.application(application_id) is None:
            return unknown_application(application_id)
        return ApiError(
            409, Refusal.FINISHED.value, f"application {shown(application_id)} has ended"
        )
    return ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not answer")


# Temporal's refusals of a start that no retry will change (a payload over the blob size limit,
# an argument it cannot take), and those that may pass later.
_START_REFUSED = frozenset(
    {RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.OUT_OF_RANGE}
)


def start_refused(err: RPCError) -> ApiError:
    """Temporal refused to start the workflow: 422 with its reason when the request itself is
    the cause (too large, say), 503 when trying again may help. Never a 500."""
    reason = shown(err.message or str(err), 300)
    if err.status in _START_REFUSED:
        return ApiError(
            422, "start_refused", f"the process engine refused to start the application: {reason}"
        )
    return ApiError(503, TEMPORAL_UNAVAILABLE, f"the process engine did not start it: {reason}")


def described(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry of an error answer."""
    return {"model": ErrorBody, "description": description}


Responses = dict[int | str, dict[str, Any]]
# The answers every guarded route may give, by audience (see `gateway.auth`).
SIGNED_IN: Responses = {
    401: described("no bearer token, or an unknown one"),
    403: described("the token's role is too low for this call"),
}
MERCHANT: Responses = {
    401: described("no merchant key (X-Api-Key) or ops token, or an unknown one"),
    403: described("the credential may not do this (a merchant key and a policy, say)"),
}
SIGNED: Responses = {
    401: described("the signature is missing, malformed, stale, wrong or replayed")
}
COMMON: Responses = {
    400: described("the body is not JSON"),
    413: described("the body is larger than the gateway takes (256 kB)"),
    415: described("the body is not sent as application/json"),
    422: described("invalid fields: `fields` names each with its rule"),
}
UNAVAILABLE: Responses = {
    503: described("Temporal or the workflow could not take it now: retry after Retry-After")
}
