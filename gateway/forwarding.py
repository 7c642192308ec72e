"""Forwarding messages to workflows as updates, each kept with its outcome.

A message reaches its workflow as an update. The gateway waits until the workflow has accepted or
refused it (the validator: answered at once), then for its result for a bounded time. A message
about something a step is still creating waits in the workflow until that step finishes, which
can take minutes: then the sender gets 202 `pending` (the update is durable in Temporal, so the
sender must not send it again) and the gateway keeps waiting in the background to record what
became of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from temporalio.client import (
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.service import RPCError, RPCStatusCode

from gateway.errors import TEMPORAL_UNAVAILABLE, ApiError, refusal, temporal_error
from gateway.limits import excerpt, valid_id
from gateway.metrics import GatewayMetrics
from gateway.store import MessageRecord, Store
from schemas.messages import Ack, Refusal, SubmissionResult, message_id

PENDING_DETAIL = "accepted: the application applies it as soon as the step it refers to is recorded"
# A receipt with one of these outcomes means the workflow has the message: a resend is a duplicate.
RECEIVED = ("applied", "duplicate", "pending")


class Result(Protocol):
    """What an update answers (`Ack`, `SubmissionResult`): a pydantic model that says whether
    the workflow had the message already."""

    @property
    def duplicate(self) -> bool: ...

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any: ...


R = TypeVar("R", bound=Result)


@dataclass(frozen=True)
class Forwarded(Generic[R]):
    outcome: str  # applied | duplicate | pending
    result: R | None  # None while pending


class Forwarder:
    """Sends messages to workflows as updates and keeps each with its outcome.

    The update's id is the message id, so a resend while the first is still waiting in the
    workflow attaches to the same update (Temporal answers an update id it already has with that
    update's handle and, once done, its result) instead of running it twice. Temporal also keeps
    a completed update's result under its id: after the workflow refused a message as
    temporarily unavailable, its next attempt must use a fresh update id, or it would be answered
    with the same refusal for ever.
    """

    def __init__(
        self, store: Store, metrics: GatewayMetrics, *, wait_seconds: float, accept_seconds: float
    ) -> None:
        self.store, self.metrics = store, metrics
        self.wait_seconds, self.accept_seconds = wait_seconds, accept_seconds
        # The background waits for pending messages: held here so they are not garbage
        # collected, cancelled at shutdown (see `close`).
        self.awaiting: set[asyncio.Task[None]] = set()
        metrics.awaiting.set_function(lambda: len(self.awaiting))

    def record(self, **fields: Any) -> int:
        row = self.store.record_message(**fields)
        self.metrics.message(fields["source"], fields["kind"], fields["outcome"])
        return row

    def record_refusal(
        self,
        err: ApiError,
        application_id: str,
        source: str,
        kind: str,
        body: Any,
        message_id: str = "",
        update_id: str = "",
    ) -> None:
        """Keep a message that was not applied, with the reason it was refused, in the audit
        trail of a known application; for an application the gateway does not know, the
        refusal is only counted (`posflow_gateway_refusals_total`): nobody can fill the store
        by sending refused requests for made-up ids."""
        self.metrics.refusal(err.error)
        if not valid_id(application_id) or self.store.application(application_id) is None:
            return
        self.record(
            application_id=application_id,
            source=source,
            kind=kind,
            message_id=message_id,
            outcome=_outcome_of(err),
            detail=f"{err.error}: {err.message}",
            body=body,
            update_id=update_id,
        )

    async def refused_raw(
        self, err: ApiError, application_id: str, source: str, kind: str, raw: bytes
    ) -> None:
        """`record_refusal` for a body that was never parsed: a masked excerpt of it is kept."""
        await asyncio.to_thread(
            self.record_refusal, err, application_id, source, kind, excerpt(raw)
        )

    async def forward(
        self,
        handle: WorkflowHandle[Any, Any],
        update: Any,
        payload: BaseModel,
        *,
        application_id: str,
        source: str,
        kind: str,
        body: Any,
        describe: Callable[[R], str],
        wait_seconds: float | None = None,
        scope: str = "",
    ) -> Forwarded[R]:
        """Send `payload` as `update` and keep it with its outcome.

        Returns the result (applied or duplicate) if it came within the wait, else `pending`
        (kept as such, and settled in the background). Raises an ApiError, the message kept as
        refused, invalid or failed, when the workflow refused it or Temporal did not answer.
        `scope` prefixes the update id (update ids are per workflow, message ids per kind).
        """
        message_id = message_id_of(payload)
        base = scope + message_id
        earlier = [
            m
            for m in await asyncio.to_thread(self.store.attempts, application_id, message_id)
            if not m.update_id or m.update_id == base or m.update_id.startswith(f"{base}~")
        ]
        resend = any(m.outcome in RECEIVED for m in earlier)
        update_id = _update_id(base, earlier)

        def refused(err: ApiError) -> ApiError:
            self.record_refusal(err, application_id, source, kind, body, message_id, update_id)
            return err

        try:
            started: WorkflowUpdateHandle[Any] = await _within(
                self.accept_seconds,
                handle.start_update(
                    update, payload, id=update_id, wait_for_stage=WorkflowUpdateStage.ACCEPTED
                ),
            )
        except TimeoutError as err:
            # Not accepted yet, perhaps later: a resend attaches to the same update id.
            raise refused(
                ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not take the message")
            ) from err
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
            raise refused(self._unanswered(err, application_id)) from err

        waiting = asyncio.ensure_future(started.result())
        try:
            await asyncio.wait(
                {waiting}, timeout=self.wait_seconds if wait_seconds is None else wait_seconds
            )
            if not waiting.done() and _known(started):
                # Refused by the validator, or already done: never "pending", however short the
                # wait (the result is in the answer to the start; only its decoding is left).
                await asyncio.wait({waiting})
        except asyncio.CancelledError:
            waiting.cancel()
            raise
        if waiting.done():
            try:
                result: R = waiting.result()
            except WorkflowUpdateFailedError as err:
                raise refused(refusal(err)) from err
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
                raise refused(self._unanswered(err, application_id)) from err
            if resend and not result.duplicate:
                result = result.model_copy(update={"duplicate": True})
            outcome = "duplicate" if result.duplicate else "applied"
            self.record(
                application_id=application_id,
                source=source,
                kind=kind,
                message_id=message_id,
                outcome=outcome,
                detail=describe(result),
                body=body,
                update_id=update_id,
            )
            return Forwarded(outcome, result)

        row = self.record(
            application_id=application_id,
            source=source,
            kind=kind,
            message_id=message_id,
            outcome="pending",
            detail=PENDING_DETAIL,
            body=body,
            update_id=update_id,
        )
        # The final outcome is written by this task only: a restart of the gateway loses it and
        # the row stays `pending` (the message itself is safe in the workflow, and a resend is
        # answered with what became of it).
        task = asyncio.create_task(
            self._settle(
                started, waiting, row, application_id, message_id, source, kind, resend, describe
            ),
            name=f"settle {application_id} {message_id}",
        )
        self.awaiting.add(task)
        task.add_done_callback(self.awaiting.discard)
        return Forwarded("pending", None)

    async def _settle(
        self,
        started: WorkflowUpdateHandle[Any],
        waiting: asyncio.Future[Any],
        row: int,
        application_id: str,
        message_id: str,
        source: str,
        kind: str,
        resend: bool,
        describe: Callable[[R], str],
    ) -> None:
        """Wait for a pending message's result and keep it: applied, duplicate, or refused."""
        delay = 1.0
        while True:
            try:
                result: R = await waiting
            except WorkflowUpdateFailedError as err:
                answer = refusal(err)
                outcome, detail = _outcome_of(answer), f"{answer.error}: {answer.message}"
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Shut down while waiting (the SDK reports our cancellation as a timeout).
                    raise asyncio.CancelledError from err
                if isinstance(err, RPCError) and err.status is RPCStatusCode.NOT_FOUND:
                    outcome = "refused"
                    detail = f"{Refusal.FINISHED.value}: the application ended first"
                else:  # Temporal did not answer: the update is durable, ask again
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
                    waiting = asyncio.ensure_future(started.result())
                    continue
            else:
                duplicate = resend or result.duplicate
                outcome, detail = ("duplicate" if duplicate else "applied"), describe(result)
            break
        await asyncio.to_thread(
            self.store.settle_message, application_id, message_id, outcome, detail, row
        )
        self.metrics.message_settled(source, kind, outcome)

    def _unanswered(
        self, err: RPCError | WorkflowUpdateRPCTimeoutOrCancelledError, application_id: str
    ) -> ApiError:
        if isinstance(err, RPCError):
            return temporal_error(err, application_id, self.store)
        return ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not answer")

    async def close(self) -> None:
        """Stop waiting for pending results (at shutdown); their rows stay `pending`."""
        for task in list(self.awaiting):
            task.cancel()
        await asyncio.gather(*self.awaiting, return_exceptions=True)


def answer(forwarded: Forwarded[Ack], payload: BaseModel) -> JSONResponse:
    """A callback's answer: 200 with the workflow's ack, or 202 while it is pending (the message
    is durable in the workflow: the sender must not send it again)."""
    if forwarded.result is None:
        return JSONResponse(
            {"outcome": "pending", "message_id": message_id_of(payload), "detail": PENDING_DETAIL},
            status_code=202,
        )
    return JSONResponse({"outcome": forwarded.outcome, **forwarded.result.model_dump(mode="json")})


def pending_ack(payload: BaseModel) -> Ack:
    return Ack(message_id=message_id_of(payload), stage="", detail=PENDING_DETAIL)


def describe_ack(ack: Ack) -> str:
    return ack.detail


def describe_submission(result: SubmissionResult) -> str:
    outstanding = ", ".join(k.value for k in result.outstanding) or "none"
    return f"{len(result.issues)} issues, outstanding: {outstanding}"


T = TypeVar("T")


async def _within(seconds: float, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, or TimeoutError after `seconds` (the work is then cancelled).

    Not `asyncio.wait_for`: the SDK turns a cancelled call into its own timeout error."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        task.cancel()
        task.add_done_callback(_swallow)
        raise TimeoutError
    return task.result()


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a cancelled call's error is of no interest


def _known(started: WorkflowUpdateHandle[Any]) -> bool:
    """Whether the answer to the start already held the outcome (a validator's refusal, or an
    update done at once). The SDK keeps it on the handle; if that ever changes, this says False
    and such an answer is only as prompt as the wait allows."""
    return getattr(started, "_known_outcome", None) is not None


def _update_id(message_id: str, earlier: list[MessageRecord]) -> str:
    """The message id, unless an update under that id was refused as temporarily unavailable:
    Temporal would answer that id with the same refusal for ever, so the next attempt gets the
    next unused `~n` suffix."""
    prefix = f"{Refusal.UNAVAILABLE.value}:"
    spent = {
        m.update_id
        for m in earlier
        if m.update_id and m.outcome == "failed" and m.detail.startswith(prefix)
    }
    candidate, n = message_id, 0
    while candidate in spent:
        n += 1
        candidate = f"{message_id}~{n}"
    return candidate


def _outcome_of(err: ApiError) -> str:
    if err.status == 409:
        return "refused"
    return "invalid" if err.status < 500 else "failed"


def message_id_of(payload: BaseModel) -> str:
    """The message's id as the workflow acknowledges it; "" for a body that carries none."""
    try:
        return message_id(payload)
    except TypeError:
        return ""
