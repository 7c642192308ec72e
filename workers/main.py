"""The onboarding worker: runs the `PosOnboarding` workflow and every activity it calls.

Document validation and notifications run in-process; the review, contract, device and
logistics activities are HTTP clients of those services, at `POSFLOW_<SERVICE>_URL` (the
embedded stack's ports by default), and so is `read_service_events`, which reads any of them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
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

# The worker's tuning, each from its environment variable (`workers.settings_check` validates
# them before a worker starts; unset: the SDK's default).
MAX_CACHED_WORKFLOWS_ENV = "POSFLOW_MAX_CACHED_WORKFLOWS"
MAX_CONCURRENT_ACTIVITIES_ENV = "POSFLOW_MAX_CONCURRENT_ACTIVITIES"
MAX_CONCURRENT_WORKFLOW_TASKS_ENV = "POSFLOW_MAX_CONCURRENT_WORKFLOW_TASKS"
SHUTDOWN_GRACE_ENV = "POSFLOW_WORKER_SHUTDOWN_GRACE_SECONDS"
DEFAULT_SHUTDOWN_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class WorkerTuning:
    """How much one worker process takes on, and how long it lets running activities finish
    when it is told to stop (SIGTERM on a deploy or a scale-down).

    On shutdown the worker stops polling at once; activities already running get
    `shutdown_grace_seconds` to finish and report their result, then are cancelled, and their
    retry policy runs them on another worker. Workflow tasks are short and simply handed back.
    The orchestrator's own grace (Kubernetes `terminationGracePeriodSeconds`, compose
    `stop_grace_period`) must be longer than this one.
    """

    max_cached_workflows: int | None = None  # SDK default: 1000
    max_concurrent_activities: int | None = None  # SDK default: 100
    max_concurrent_workflow_tasks: int | None = None  # SDK default: 100
    shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerTuning:
        """The tuning from the environment; a malformed value raises ValueError naming it (the
        start-up check reports every one of them before this runs)."""
        env = os.environ if environ is None else environ

        def count(name: str) -> int | None:
            raw = env.get(name, "").strip()
            if not raw:
                return None
            if not raw.isdigit() or int(raw) < 1:
                raise ValueError(f"{name} must be a positive integer, not {raw!r}")
            return int(raw)

        raw_grace = env.get(SHUTDOWN_GRACE_ENV, "").strip()
        try:
            grace = float(raw_grace) if raw_grace else DEFAULT_SHUTDOWN_GRACE_SECONDS
        except ValueError:
            grace = -1.0
        if not 0 <= grace <= 3600:
            raise ValueError(
                f"{SHUTDOWN_GRACE_ENV} must be seconds from 0 to 3600, not {raw_grace!r}"
            )
        return cls(
            max_cached_workflows=count(MAX_CACHED_WORKFLOWS_ENV),
            max_concurrent_activities=count(MAX_CONCURRENT_ACTIVITIES_ENV),
            max_concurrent_workflow_tasks=count(MAX_CONCURRENT_WORKFLOW_TASKS_ENV),
            shutdown_grace_seconds=grace,
        )

    def worker_options(self) -> dict[str, Any]:
        """Keyword arguments of `temporalio.worker.Worker`: the ones set, and the grace."""
        options: dict[str, Any] = {
            "graceful_shutdown_timeout": timedelta(seconds=self.shutdown_grace_seconds)
        }
        for name in (
            "max_cached_workflows",
            "max_concurrent_activities",
            "max_concurrent_workflow_tasks",
        ):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        return options


async def run_worker(
    settings: TemporalSettings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    tuning: WorkerTuning | None = None,
) -> None:
    """Serve `settings.task_queue` until `stop` is set (forever without one), then shut down
    gracefully: polling stops, running activities get the tuning's grace to finish. `ready` is
    set once the worker has started. `tuning` defaults to the environment's. Logging is the
    caller's to set up (the `posflow` commands do)."""
    tuning = tuning or WorkerTuning.from_env()
    client = await connect(settings)
    added = await register_search_attributes(client)
    if added:
        log.info("search_attributes_registered", names=added)
    worker = build_worker(
        client, settings.task_queue, activities=worker_activities(), **tuning.worker_options()
    )
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
        max_cached_workflows=tuning.max_cached_workflows,
        max_concurrent_activities=tuning.max_concurrent_activities,
        max_concurrent_workflow_tasks=tuning.max_concurrent_workflow_tasks,
        shutdown_grace_seconds=tuning.shutdown_grace_seconds,
    )
    if ready is not None:
        ready.set()
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not running.done():
            log.info("worker_stopping", grace_seconds=tuning.shutdown_grace_seconds)
            await worker.shutdown()
        # Re-raises the worker's error, if it stopped on one.
        await running
        log.info("worker_stopped", task_queue=settings.task_queue)
