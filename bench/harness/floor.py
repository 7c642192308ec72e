"""The floor: a workflow with posflow's shape and none of its logic, so that what posflow costs
above it is what posflow itself adds.

Its shape comes from a posflow history of the same run (`shape_of`): the history is cut at each
accepted update; each piece's activities run one after the other as no-op activities, its
timers (a day long) are started before its last activity and cancelled when the update that
ends the piece comes. The driver sends that update, and the piece's signals before
it, as soon as the piece's last activity tells it the workflow is about to wait (over HTTP, as
posflow's activities reach its services); a piece without activities is waited for right after
the update before it. Children posflow starts are started at the end (each returns at once).

The workflow module imports nothing but the SDK: the workflow sandbox re-imports it per run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.common import RetryPolicy
from temporalio.workflow import ParentClosePolicy

E = EventType
ACTIVITY_TIMEOUT = timedelta(seconds=30)
WAIT_TIMER = timedelta(days=1)


@dataclass
class Piece:
    activities: int = 0
    timers: int = 0  # started while waiting for the update that ends the piece
    signals: int = 0  # sent by the driver before that update


@dataclass
class Shape:
    pieces: list[Piece] = field(default_factory=list)  # the last one ends the run
    children: int = 0

    @property
    def updates(self) -> int:
        return len(self.pieces) - 1

    def counts(self) -> dict[str, int]:
        return {
            "activities": sum(p.activities for p in self.pieces),
            "updates": self.updates,
            "timers": sum(p.timers for p in self.pieces),
            "signals": sum(p.signals for p in self.pieces),
            "children": self.children,
        }

    def key(self) -> tuple[tuple[int, int, int], ...]:
        return (*((p.activities, p.timers, p.signals) for p in self.pieces), (self.children, 0, 0))


@dataclass
class FloorStart:
    shape: Shape
    notify_url: str
    park_at: int = -1  # >= 0: the driver never sends this update; the run waits (scale part)


def shape_of(events: list[HistoryEvent]) -> Shape:
    """The shape of a posflow history: its activities, timers and client signals, piece by
    piece between accepted updates, and its children."""
    pieces = [Piece()]
    children = 0
    for event in events:
        kind = event.event_type
        if kind == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            pieces[-1].activities += 1
        elif kind == E.EVENT_TYPE_TIMER_STARTED:
            pieces[-1].timers += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            if not event.workflow_execution_signaled_event_attributes.HasField(
                "external_workflow_execution"
            ):
                pieces[-1].signals += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            pieces.append(Piece())
        elif kind == E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            children += 1
    # Timers started after the last update have nothing to wait for: they are started and
    # cancelled at once at the end, which is what a wait already satisfied costs.
    return Shape(pieces, children)


@activity.defn(name="floor_noop")
async def noop(step: int) -> int:
    return step


_http: object | None = None


@activity.defn(name="floor_reached")
async def reached(url: str, wait: int) -> int:
    """A no-op that tells the driver the workflow is about to wait for update `wait`."""
    import httpx  # only where activities run, never in the workflow sandbox

    global _http
    if _http is None:
        _http = httpx.AsyncClient(timeout=30)
    assert isinstance(_http, httpx.AsyncClient)
    info = activity.info()
    response = await _http.post(url, json={"workflow_id": info.workflow_id, "wait": wait})
    response.raise_for_status()
    return wait


@workflow.defn(name="BenchFloorChild")
class FloorChild:
    @workflow.run
    async def run(self) -> None:
        return None


@workflow.defn(name="BenchFloor")
class Floor:
    def __init__(self) -> None:
        self.updated = 0
        self.signals = 0

    @workflow.run
    async def run(self, start: FloorStart) -> int:
        retry = RetryPolicy(maximum_interval=timedelta(seconds=1))
        pieces = start.shape.pieces
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            for n in range(piece.activities - (0 if last else 1)):
                await workflow.execute_activity(
                    noop, n, start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=retry
                )
            # The timers start before the driver is told (by the piece's last activity), so the
            # update can never come before them.
            timers = [asyncio.create_task(workflow.sleep(WAIT_TIMER)) for _ in range(piece.timers)]
            if not last:
                if piece.activities:
                    await workflow.execute_activity(
                        reached,
                        args=[start.notify_url, index],
                        start_to_close_timeout=ACTIVITY_TIMEOUT,
                        retry_policy=retry,
                    )
                await workflow.wait_condition(self._past(index))
            for timer in timers:
                timer.cancel()
        for n in range(start.shape.children):
            await workflow.start_child_workflow(
                FloorChild.run,
                id=f"{workflow.info().workflow_id}-child-{n}",
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
        return self.updated

    def _past(self, wanted: int) -> Callable[[], bool]:
        return lambda: self.updated > wanted

    @workflow.update
    def step(self, number: int) -> int:
        self.updated = max(self.updated, number)
        return number

    @workflow.signal
    def ping(self) -> None:
        self.signals += 1
