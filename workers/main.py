"""The onboarding worker: runs the `PosOnboarding` workflow and every activity it calls.

Document validation and notifications run in-process; the review, contract, device and
logistics activities are HTTP clients of those services, at `POSFLOW_<SERVICE>_URL` (the
embedded stack's ports by default), and so is `read_service_events`, which reads any of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from activities.calendar import working_deadlines
from activities.documents import validate_documents, validate_settlement
from activities.notifications import notify_merchant
from workers.config import TemporalSettings
from workers.temporal import build_worker, connect, register_search_attributes


def activity_methods(implementation: object) -> list[Callable[..., Any]]:
    """The bound `@activity.defn` methods of an activities object."""
    return [
        getattr(implementation, name)
        for name in dir(implementation)
        if hasattr(getattr(type(implementation), name, None), "__temporal_activity_definition")
    ]


def worker_activities() -> list[Callable[..., Any]]:
    from activities.contract import contract_activities
    from activities.device import device_activities
    from activities.events import event_activities
    from activities.logistics import logistics_activities
    from activities.projection import ProjectionActivities
    from activities.review import review_activities

    services: list[object] = [
        review_activities(),
        contract_activities(),
        device_activities(),
        logistics_activities(),
        event_activities(),
        ProjectionActivities(),
    ]
    return [
        validate_documents,
        validate_settlement,
        working_deadlines,
        notify_merchant,
        *(m for s in services for m in activity_methods(s)),
    ]


log = structlog.get_logger(__name__)


async def run_worker(
    settings: TemporalSettings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve `settings.task_queue` until `stop` is set (forever without one), then shut down
    gracefully. `ready` is set once the worker has started. Logging is the caller's to set up
    (the `posflow` commands do)."""
    client = await connect(settings)
    added = await register_search_attributes(client)
    if added:
        log.info("search_attributes_registered", names=added)
    worker = build_worker(client, settings.task_queue, activities=worker_activities())
    stop = stop or asyncio.Event()
    # The worker runs as its own task rather than inside `async with worker`: if polling fails
    # for good, the process must end with that error instead of idling on `stop`.
    running = asyncio.create_task(worker.run(), name="posflow-worker")
    stopping = asyncio.create_task(stop.wait(), name="posflow-worker-stop")
    log.info(
        "worker_started",
        address=settings.address,
        namespace=settings.namespace,
        task_queue=settings.task_queue,
    )
    if ready is not None:
        ready.set()
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not running.done():
            await worker.shutdown()
        # Re-raises the worker's error, if it stopped on one.
        await running
        log.info("worker_stopped", task_queue=settings.task_queue)
