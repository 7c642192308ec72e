"""`posflow admin replay`: does the workflow code on disk reproduce the histories of workflows that
ran under earlier code? The check an admin runs before deploying a workflow change.

A history comes from the server (one workflow, or every workflow a visibility query selects) or
from an exported JSON file, and is replayed with the SDK's `Replayer` built as the workers build
it (`workers.temporal.build_replayer`: the same workflow, interceptors and payload codec). A
history the code does not reproduce is reported with the event where they part and why: the
event id the SDK's message names, or, when the message names only a command, the workflow task
found by replaying ever shorter prefixes of the history; with the event's type, what it records
and the stage the application was in (from the history's search-attribute upserts).

Exit codes: 0 every history replays; 1 at least one does not; 2 nothing could be checked (no
server, no such workflow, an unreadable file, no key ring, a query the server refuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from temporalio.api.enums.v1 import EventType
from temporalio.service import RPCError, RPCStatusCode

from schemas.application import application_id_of, workflow_id_for

if TYPE_CHECKING:
    from temporalio.api.history.v1 import HistoryEvent
    from temporalio.client import Client, WorkflowHistory
    from temporalio.runtime import Runtime
    from temporalio.worker import Replayer

ADMIN_HELP = (
    "Administer applications and their workflows: what needs an admin (failures), retry, skip, "
    "extend or withdraw one case or many, reset a run to a stage, replay histories against the "
    "code on disk."
)
admin_app = typer.Typer(help=ADMIN_HELP, no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)
progress_console = Console(stderr=True, highlight=False, soft_wrap=True)


@admin_app.callback(help=ADMIN_HELP)
def admin() -> None:
    """Administer applications and their workflows (`ADMIN_HELP`)."""


# Histories fetched ahead of the one being replayed, when a query selects many.
PREFETCH = 8
# Failures whose SDK message names no event are located by replaying prefixes (a few replays
# each); past this many, the rest are reported unlocated: they are almost always the same change.
LOCATED_AT_MOST = 20
# How many failures the human report lists in full.
SHOWN_FAILURES = 20


class CannotCheck(Exception):
    """Nothing could be replayed: the reason is the message (exit code 2)."""


# --- what one replay found ----------------------------------------------------------------------


@dataclass
class Divergence:
    """Why a history does not replay, and where."""

    kind: str  # nondeterminism | workflow_error | replay_error
    why: str  # the SDK's message, without its wrapping
    event_id: int | None = None
    event_type: str | None = None  # e.g. ActivityTaskScheduled
    event: str | None = None  # what the event records, e.g. "activity open_review_case"
    stage: str | None = None  # PosStage as last upserted before the event
    located_by: str | None = None  # "sdk message" | "prefix replay"
    raised_at: str | None = None  # workflow_error: where the workflow code raised

    def explanation(self) -> str:
        if self.kind == "nondeterminism":
            return (
                "the code on disk issues different commands here than the ones the history "
                "recorded: guard the change with workflow.patched(...)"
            )
        if self.kind == "workflow_error":
            return (
                "the workflow code failed while replaying: a bug, or an input, payload or "
                "workflow type it does not know"
            )
        return "the replay could not run to the end"


@dataclass
class Replayed:
    workflow_id: str
    run_id: str
    source: str  # "server" or the file replayed
    events: int
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None


@dataclass
class Report:
    results: list[Replayed] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # listed, but gone before it was fetched
    seconds: float = 0.0

    @property
    def failures(self) -> list[Replayed]:
        return [r for r in self.results if not r.ok]

    @property
    def per_second(self) -> float:
        return len(self.results) / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "replayed": len(self.results),
            "reproduced": len(self.results) - len(self.failures),
            "failed": len(self.failures),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "histories_per_second": round(self.per_second, 1),
            "failures": [
                {
                    "workflow_id": r.workflow_id,
                    "run_id": r.run_id,
                    "source": r.source,
                    "events": r.events,
                    **asdict(r.divergence),
                }
                for r in self.failures
                if r.divergence is not None
            ],
        }


# --- reading the SDK's failure --------------------------------------------------------------------

# The core reports a failed activation as the Debug rendering of its Failure proto.
_MESSAGE = re.compile(r'\bmessage: "((?:[^"\\]|\\.)*)"')
_STACK_TRACE = re.compile(r'\bstack_trace: "((?:[^"\\]|\\.)*)"')
_EVENT = re.compile(r"HistoryEvent\(id: (\d+), (\w+)")
_NONDETERMINISM = re.compile(r"^\[(TMPRL\d+)\] Nondeterminism error: ")
_EVICTION = re.compile(r"^(\d+): ")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_ESCAPE = re.compile(r"\\(u\{[0-9a-fA-F]+\}|.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
# "Activity type of scheduled event 'x' does not match activity type of activity command 'y'"
_SCHEDULED = re.compile(r"(\w[\w ]*?) of scheduled event '([^']*)' does not match")
# "Non-deprecated patch marker encountered for change x, but there is no corresponding ..."
_PATCH = re.compile(r"patch marker encountered for change (\S+?),")


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if escaped.startswith("u{"):
            return chr(int(escaped[2:-1], 16))
        return _ESCAPES.get(escaped, escaped)

    return _ESCAPE.sub(one, text)


def _eviction_reason(number: int) -> str:
    from temporalio.bridge.proto.workflow_activation import RemoveFromCache

    try:
        return RemoveFromCache.EvictionReason.Name(number)  # type: ignore[arg-type]
    except ValueError:
        return str(number)


def _frame(path: str, line: int | str | None, function: str) -> str:
    with contextlib.suppress(ValueError):
        path = str(Path(path).relative_to(Path.cwd()))
    return f"{path}:{line} in {function}"


def _raised_at(stack_trace: str) -> str | None:
    """The innermost frame of the project's own code in a workflow error's stack trace."""
    frames = [f for f in _FRAME.findall(stack_trace) if "site-packages" not in f[0]]
    return _frame(*frames[-1]) if frames else None


def _chain(error: BaseException) -> list[BaseException]:
    chain = [error]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 5:
        chain.append(cause)
    return chain


def explain_error(error: BaseException) -> tuple[str, str | None]:
    """What the workflow code raised, through its causes, and the innermost frame of the
    project's code. A validation error is given by field and rule, never with the input (an
    application's fields are personal data); any other message goes through the logs' masking."""
    from pydantic import ValidationError

    from workers.logging import mask_text

    parts = []
    for item in _chain(error):
        if isinstance(item, ValidationError):
            rules = "; ".join(
                f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in item.errors()
            )
            parts.append(f"{item.title} does not validate: {rules}")
        else:
            parts.append(f"{type(item).__name__}: {mask_text(str(item))}")
    frames = [
        frame
        for item in _chain(error)
        for frame in traceback.extract_tb(item.__traceback__)
        if "site-packages" not in frame.filename
    ]
    where = _frame(frames[-1].filename, frames[-1].lineno, frames[-1].name) if frames else None
    return " ← ".join(parts), where


def divergence_of(failure: Exception) -> Divergence:
    """The kind and the plain message of a replay failure, and the event its message names."""
    from temporalio.workflow import NondeterminismError

    text = str(failure)
    found = _MESSAGE.search(text)
    why = _unescape(found.group(1)) if found else text
    if isinstance(failure, NondeterminismError):
        divergence = Divergence("nondeterminism", _NONDETERMINISM.sub("", why))
    else:
        eviction = _EVICTION.match(text)
        reason = _eviction_reason(int(eviction.group(1))) if eviction else None
        if reason == "LANG_FAIL":
            divergence = Divergence("workflow_error", why)
            trace = _STACK_TRACE.search(text)
            if trace:
                divergence.raised_at = _raised_at(_unescape(trace.group(1)))
        else:
            divergence = Divergence("replay_error", f"{reason}: {why}" if reason else why)
    named = _EVENT.search(why)
    if named:
        divergence.event_id = int(named.group(1))
        divergence.located_by = "sdk message"
    return divergence


# --- reading the history ------------------------------------------------------------------------

_COMMAND_EVENTS = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED,
    EventType.EVENT_TYPE_TIMER_STARTED,
    EventType.EVENT_TYPE_TIMER_CANCELED,
    EventType.EVENT_TYPE_MARKER_RECORDED,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
    EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED,
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_NEXUS_OPERATION_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}
_TASK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
}


def event_type_name(event: HistoryEvent) -> str:
    """`ActivityTaskScheduled`, as the SDK's messages name event types."""
    name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
    return "".join(part.capitalize() for part in name.split("_"))


def _seconds(duration: Any) -> str:
    return str(timedelta(seconds=duration.seconds, microseconds=duration.nanos // 1000))


def describe(event: HistoryEvent) -> str | None:
    """What an event records, in words an admin recognises; never a payload's content."""
    if event.HasField("activity_task_scheduled_event_attributes"):
        return f"activity {event.activity_task_scheduled_event_attributes.activity_type.name}"
    if event.HasField("timer_started_event_attributes"):
        return f"timer {_seconds(event.timer_started_event_attributes.start_to_fire_timeout)}"
    if event.HasField("marker_recorded_event_attributes"):
        marker = event.marker_recorded_event_attributes
        patch = marker.details.get("patch-data")
        if patch is not None and patch.payloads:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return f"patch marker {json.loads(patch.payloads[0].data)['id']!r}"
        return f"marker {marker.marker_name}"
    if event.HasField("upsert_workflow_search_attributes_event_attributes"):
        fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
        return "search attributes " + ", ".join(sorted(fields.indexed_fields))
    if event.HasField("workflow_execution_signaled_event_attributes"):
        return f"signal {event.workflow_execution_signaled_event_attributes.signal_name}"
    if event.HasField("workflow_execution_update_accepted_event_attributes"):
        request = event.workflow_execution_update_accepted_event_attributes.accepted_request
        return f"update {request.input.name}"
    if event.HasField("activity_task_completed_event_attributes"):
        scheduled = event.activity_task_completed_event_attributes.scheduled_event_id
        return f"result of the activity scheduled at event {scheduled}"
    if event.HasField("activity_task_failed_event_attributes"):
        scheduled = event.activity_task_failed_event_attributes.scheduled_event_id
        return f"failure of the activity scheduled at event {scheduled}"
    if event.HasField("timer_fired_event_attributes"):
        return f"timer started at event {event.timer_fired_event_attributes.started_event_id}"
    if event.HasField("start_child_workflow_execution_initiated_event_attributes"):
        child = event.start_child_workflow_execution_initiated_event_attributes
        return f"child workflow {child.workflow_type.name}"
    return None


def stage_at(history: WorkflowHistory, event_id: int) -> str | None:
    """The application's stage as entered at or before `event_id`: from its PosStage upserts
    and its activities' stage headers (`workers.admin.stage_entries`), else the search
    attributes it started with."""
    from temporalio.converter import decode_typed_search_attributes

    from workers.admin import stage_entries
    from workflows import search_attributes as sa

    events = list(history.events)
    entered = [e for e in stage_entries(events) if e.entered_event_id <= event_id]
    if entered:
        return entered[-1].stage.value
    for event in events[:1]:
        if event.HasField("workflow_execution_started_event_attributes"):
            fields = event.workflow_execution_started_event_attributes.search_attributes
            with contextlib.suppress(Exception):  # an attribute of another shape: not ours
                return decode_typed_search_attributes(fields).get(sa.STAGE)
    return None


def _event(history: WorkflowHistory, event_id: int) -> HistoryEvent | None:
    return next((e for e in history.events if e.event_id == event_id), None)


def _pinpoint(divergence: Divergence, step: Sequence[HistoryEvent]) -> HistoryEvent | None:
    """The event of `step` (the events one failing workflow task replays) that the failure is
    about: for a command the code issued differently, the recorded command it names, else the
    first one; for an error, the first event the task handed to the workflow code."""
    if divergence.kind == "nondeterminism":
        commands = [e for e in step if e.event_type in _COMMAND_EVENTS]
        patch = _PATCH.search(divergence.why)
        if patch:
            for event in commands:
                if describe(event) == f"patch marker {patch.group(1)!r}":
                    return event
        named = _SCHEDULED.search(divergence.why)
        if named:
            what, value = named.group(1).lower(), named.group(2)
            for event in commands:
                if event.HasField("activity_task_scheduled_event_attributes"):
                    scheduled = event.activity_task_scheduled_event_attributes
                    if value in (scheduled.activity_type.name, scheduled.activity_id) and (
                        "activity" in what
                    ):
                        return event
                if event.HasField("start_child_workflow_execution_initiated_event_attributes"):
                    child = event.start_child_workflow_execution_initiated_event_attributes
                    if value in (child.workflow_type.name, child.workflow_id):
                        return event
        return commands[0] if commands else None
    handed = [
        e
        for e in step
        if e.event_type not in _TASK_EVENTS
        and e.event_type not in _COMMAND_EVENTS
        and e.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    return handed[0] if handed else (step[-1] if step else None)


class _PrefixReplayer:
    """Replays prefixes of histories, one at a time, through one replayer."""

    def __init__(self, replayer: Replayer) -> None:
        self._replayer = replayer
        self._queue: asyncio.Queue[WorkflowHistory | None] = asyncio.Queue()
        self._stack = contextlib.AsyncExitStack()
        self._results: AsyncIterator[Any] | None = None

    async def __aenter__(self) -> _PrefixReplayer:
        async def feed() -> AsyncIterator[WorkflowHistory]:
            while (history := await self._queue.get()) is not None:
                yield history

        self._results = await self._stack.enter_async_context(
            self._replayer.workflow_replay_iterator(feed())
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._queue.put(None)
        if self._results is not None:
            async for _ in self._results:
                pass
        await self._stack.aclose()

    async def fails(self, history: WorkflowHistory, events: int) -> bool:
        from temporalio.client import WorkflowHistory

        assert self._results is not None
        await self._queue.put(WorkflowHistory(history.workflow_id, history.events[:events]))
        result = await anext(self._results)
        return result.replay_failure is not None


async def _failing_step(
    prefixes: _PrefixReplayer, history: WorkflowHistory, kind: str
) -> Sequence[HistoryEvent]:
    """The events of the workflow task the failure is in, found by replaying prefixes of the
    history cut where a workflow task starts: the shortest that fails ends with the commands the
    code issues differently (nondeterminism). An error raised by the workflow code shows one task
    later (the last task of a prefix is run, not checked), so it is in the task before those.
    """
    events = history.events
    cuts = [
        i + 1
        for i, e in enumerate(events)
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    ]
    if not cuts or cuts[-1] != len(events):
        cuts.append(len(events))
    low, high = 0, len(cuts) - 1  # the whole history fails
    while low < high:
        middle = (low + high) // 2
        if await prefixes.fails(history, cuts[middle]):
            high = middle
        else:
            low = middle + 1
    if kind != "nondeterminism":
        low = max(low - 1, 0)
    return events[cuts[low - 1] if low else 0 : cuts[low]]


async def locate(results: Sequence[Replayed], histories: dict[int, WorkflowHistory]) -> None:
    """Fill in the event, its stage and what it records for every failure; find by prefix replay
    the event of a failure whose message names none (at most `LOCATED_AT_MOST` of them)."""
    unlocated = [r for r in results if r.divergence is not None and r.divergence.event_id is None][
        :LOCATED_AT_MOST
    ]
    if unlocated:
        async with _PrefixReplayer(make_replayer()) as prefixes:
            for result in unlocated:
                assert result.divergence is not None
                step = await _failing_step(prefixes, histories[id(result)], result.divergence.kind)
                event = _pinpoint(result.divergence, step)
                if event is not None:
                    result.divergence.event_id = event.event_id
                    result.divergence.located_by = "prefix replay"
    for result in results:
        divergence = result.divergence
        if divergence is None or divergence.event_id is None:
            continue
        history = histories[id(result)]
        event = _event(history, divergence.event_id)
        if event is not None:
            divergence.event_type = event_type_name(event)
            divergence.event = describe(event)
        divergence.stage = stage_at(history, divergence.event_id)


# --- replaying ------------------------------------------------------------------------------------

_quiet: Runtime | None = None


def _quiet_runtime() -> Runtime:
    """A runtime whose core does not print each failed workflow task: the report says it."""
    global _quiet
    if _quiet is None:
        from temporalio.runtime import (
            LogForwardingConfig,
            LoggingConfig,
            Runtime,
            TelemetryConfig,
            TelemetryFilter,
        )

        _quiet = Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(
                    filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"),
                    forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
                )
            )
        )
    return _quiet


def make_replayer() -> Replayer:
    """The workers' replayer (`workers.temporal.build_replayer`: workflow, interceptors, codec)."""
    from temporalio.worker import Replayer

    from workers.temporal import build_replayer

    config = build_replayer().config()
    config["runtime"] = _quiet_runtime()
    return Replayer(**config)


class _ActivationErrors(logging.Handler):
    """The exception each failed activation raised, by run id, from the SDK's log record: the
    failure the replayer reports carries only "Encoded failure" (the payload codec encrypts a
    failure's message and stack trace)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_run: dict[str, BaseException] = {}

    def emit(self, record: logging.LogRecord) -> None:
        details = getattr(record, "temporal_workflow", None)
        if record.exc_info and record.exc_info[1] is not None and isinstance(details, dict):
            self.by_run[str(details.get("run_id"))] = record.exc_info[1]


@contextlib.contextmanager
def _activation_errors() -> Iterator[_ActivationErrors]:
    """Collect the workflow code's errors, and keep the SDK from logging each failed activation
    with its traceback (and the core each failed task): the report says it once."""
    sdk = logging.getLogger("temporalio")
    activations = logging.getLogger("temporalio.worker._workflow_instance")
    saved = sdk.level, activations.level, activations.propagate
    errors = _ActivationErrors()
    sdk.setLevel(logging.CRITICAL)
    activations.setLevel(logging.WARNING)
    activations.propagate = False
    activations.addHandler(errors)
    try:
        yield errors
    finally:
        activations.removeHandler(errors)
        sdk.level, activations.level, activations.propagate = saved


@dataclass
class Source:
    """Histories to replay: an async iterator of (history, where it came from)."""

    histories: AsyncIterator[tuple[WorkflowHistory, str]]
    total: int | None = None
    skipped: list[str] = field(default_factory=list)


async def replay(source: Source, on_result: Callable[[Replayed], None] | None = None) -> Report:
    """Replay every history of `source` against the code on disk, then locate the failures."""
    report = Report(skipped=source.skipped)
    histories: dict[int, WorkflowHistory] = {}
    where: dict[int, str] = {}

    async def pushed() -> AsyncIterator[WorkflowHistory]:
        async for history, origin in source.histories:
            where[id(history)] = origin
            yield history

    started = time.perf_counter()
    with _activation_errors() as errors:
        async with make_replayer().workflow_replay_iterator(pushed()) as results:
            async for outcome in results:
                history = outcome.history
                replayed = Replayed(
                    workflow_id=history.workflow_id,
                    run_id=history.run_id,
                    source=where.pop(id(history), "server"),
                    events=len(history.events),
                )
                if outcome.replay_failure is not None:
                    replayed.divergence = divergence = divergence_of(outcome.replay_failure)
                    error = errors.by_run.pop(replayed.run_id, None)
                    if divergence.kind == "workflow_error" and error is not None:
                        divergence.why, divergence.raised_at = explain_error(error)
                    histories[id(replayed)] = history
                report.results.append(replayed)
                if on_result is not None:
                    on_result(replayed)
        report.seconds = time.perf_counter() - started
        await locate(report.failures, histories)
    return report


# --- where histories come from -------------------------------------------------------------------


def _history_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob("*.json"))
            if not found:
                raise CannotCheck(f"{path}: no .json history in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise CannotCheck(f"{path}: no such file or directory")
    return files


def from_files(paths: Sequence[Path]) -> Source:
    """Exported histories (`temporal workflow show --output json`, tests/golden/); a directory
    stands for every .json under it."""
    from temporalio.client import WorkflowHistory

    files = _history_files(paths)

    async def histories() -> AsyncIterator[tuple[WorkflowHistory, str]]:
        for path in files:
            try:
                text = await asyncio.to_thread(path.read_text)
                name = path.stem if application_id_of(path.stem) else workflow_id_for(path.stem)
                history = WorkflowHistory.from_json(name, text)
            except (OSError, ValueError, RuntimeError) as err:
                raise CannotCheck(f"{path}: not a workflow history ({err})") from err
            if not history.events or not history.events[0].HasField(
                "workflow_execution_started_event_attributes"
            ):
                raise CannotCheck(f"{path}: not a workflow history (it does not start a workflow)")
            yield history, str(path)

    return Source(histories(), total=len(files))


async def _client() -> Client:
    from workers.config import TemporalSettings
    from workers.temporal import connect

    # An admin's one-off client: it must not take the worker's metrics port.
    settings = replace(TemporalSettings.from_env(), metrics_address=None)
    try:
        return await connect(settings)
    except RuntimeError as err:
        raise CannotCheck(f"cannot reach Temporal at {settings.address}: {err}") from err


def _refused(err: RPCError, what: str) -> CannotCheck:
    return CannotCheck(f"{what}: {err.message or err.status.name}")


async def from_workflow(workflow_id: str, run_id: str | None) -> Source:
    client = await _client()
    try:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise CannotCheck(f"no workflow {workflow_id} in namespace {client.namespace}") from err
        raise _refused(err, workflow_id) from err

    async def histories() -> AsyncIterator[tuple[WorkflowHistory, str]]:
        yield history, "server"

    return Source(histories(), total=1)


async def from_query(query: str, limit: int | None) -> Source:
    """Every workflow `query` selects, its histories fetched `PREFETCH` ahead of the replay."""
    client = await _client()
    total: int | None = None
    with contextlib.suppress(RPCError):  # a count is only for the progress bar
        total = (await client.count_workflows(query)).count
        if limit is not None:
            total = min(total, limit)
    skipped: list[str] = []
    return Source(_fetched(client, query, limit, skipped), total=total, skipped=skipped)


async def _fetched(
    client: Client, query: str, limit: int | None, skipped: list[str]
) -> AsyncIterator[tuple[WorkflowHistory, str]]:
    async def fetch(workflow_id: str, run_id: str | None) -> WorkflowHistory | None:
        try:
            return await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:  # deleted since it was listed
                skipped.append(workflow_id)
                return None
            raise _refused(err, workflow_id) from err

    listing = client.list_workflows(query, limit=limit)
    pending: deque[asyncio.Task[WorkflowHistory | None]] = deque()
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < PREFETCH:
                try:
                    execution = await anext(listing)
                except StopAsyncIteration:
                    exhausted = True
                except RPCError as err:
                    raise _refused(err, "the server refused the query") from err
                else:
                    pending.append(asyncio.create_task(fetch(execution.id, execution.run_id)))
            if not pending:
                return
            history = await pending.popleft()
            if history is not None:
                yield history, "server"
    finally:
        for task in pending:
            task.cancel()


# --- the command --------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    progress_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


async def _replay_with_progress(sourced: Callable[[], Awaitable[Source]], show: bool) -> Report:
    """Read the source, then replay it under a progress bar (on stderr, when `show`)."""
    source = await sourced()
    show = show and source.total != 1
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
        console=progress_console,
        transient=True,
        disable=not (show and progress_console.is_terminal),
    ) as progress:
        task = progress.add_task("replaying", total=source.total, rate="")
        started = time.perf_counter()
        failed = 0

        def advance(result: Replayed) -> None:
            nonlocal failed
            failed += not result.ok
            done = progress.tasks[task].completed + 1
            rate = done / max(time.perf_counter() - started, 1e-9)
            label = f"replaying, [red]{failed} failed[/]" if failed else "replaying"
            progress.update(task, advance=1, description=label, rate=f"{rate:.1f}/s")

        return await replay(source, advance)


def _print_failure(result: Replayed) -> None:
    divergence = result.divergence
    assert divergence is not None
    where = "the history's end" if divergence.event_id is None else f"event {divergence.event_id}"
    if divergence.event_type:
        where += f" ({divergence.event_type}"
        where += f": {divergence.event})" if divergence.event else ")"
    origin = "" if result.source == "server" else f"  [dim]{result.source}[/]"
    console.print(f"[bold red]✗[/] {result.workflow_id}  run {result.run_id}{origin}")
    console.print(f"  does not replay at {where}")
    if divergence.stage:
        console.print(f"  stage then: {divergence.stage}")
    console.print(f"  why: {divergence.why.splitlines()[0] if divergence.why else '?'}")
    if divergence.raised_at:
        console.print(f"  raised at: {divergence.raised_at}")
    console.print(f"  [dim]{divergence.explanation()}[/]")


def _print_report(report: Report) -> None:
    if len(report.results) == 1 and not report.skipped:
        result = report.results[0]
        if result.ok:
            console.print(
                f"[green]✓[/] {result.workflow_id}  run {result.run_id}: the code on disk "
                f"reproduces its history ({result.events} events)"
            )
        else:
            _print_failure(result)
        return
    for result in report.failures[:SHOWN_FAILURES]:
        _print_failure(result)
    if len(report.failures) > SHOWN_FAILURES:
        console.print(f"... and {len(report.failures) - SHOWN_FAILURES} more (--json lists all)")
    for workflow_id in report.skipped:
        console.print(f"[yellow]skipped[/] {workflow_id}: gone before its history was read")
    failed = len(report.failures)
    verdict = "[green]every history replays[/]" if not failed else f"[red]{failed} failed[/]"
    console.print(
        f"{len(report.results)} replayed, {verdict}, in {report.seconds:.2f} s "
        f"({report.per_second:.1f} histories/s)"
    )


REPLAY_HELP = (
    "Replay histories against the workflow code on disk: does it reproduce them?\n\n"
    "Run it over what is in flight before deploying a workflow change. A history that does not "
    "replay is shown with the event where the code and the history part, its type, the stage "
    "the application was in, and the SDK's reason. Histories come from TEMPORAL_ADDRESS (one "
    "workflow, or --query) or from --file.\n\n"
    "Exit code 0: every history replays; 1: some do not; 2: nothing could be checked."
)


@admin_app.command("replay", help=REPLAY_HELP)
def replay_command(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="ID",
            help="An application id, or a workflow id (pos-application-<id>).",
            show_default=False,
        ),
    ] = None,
    files: Annotated[
        list[Path] | None,
        typer.Option(
            "--file",
            help="An exported history JSON (`temporal workflow show --output json`, "
            "tests/golden/); a directory means every .json under it. Repeatable.",
            show_default=False,
        ),
    ] = None,
    query: Annotated[
        str | None,
        typer.Option(
            "--query",
            help="Every workflow this visibility query selects, e.g. "
            "\"WorkflowType='PosOnboarding' AND ExecutionStatus='Running'\".",
            show_default=False,
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id", help="With an id: a run other than the latest.", show_default=False
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help="With --query: at most this many workflows.", show_default=False
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON to stdout, for scripts.")
    ] = False,
) -> None:
    """`posflow admin replay` (its help is `REPLAY_HELP`)."""
    from workers.codec import KeyRingError

    chosen = [
        name for name, given in (("ID", target), ("--file", files), ("--query", query)) if given
    ]
    if len(chosen) != 1:
        _fail("give exactly one of: an application or workflow id, --file, --query")
    if run_id is not None and target is None:
        _fail("--run-id goes with an application or workflow id")
    if limit is not None and query is None:
        _fail("--limit goes with --query")

    async def source() -> Source:
        if files:
            return from_files(files)
        if query is not None:
            return await from_query(query, limit)
        assert target is not None
        workflow_id = target if application_id_of(target) else workflow_id_for(target)
        return await from_workflow(workflow_id, run_id)

    try:
        report = asyncio.run(_replay_with_progress(source, show=not as_json))
    except (CannotCheck, KeyRingError) as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        _print_report(report)
    if report.failures:
        raise typer.Exit(1)


# --- the admin actions, through the gateway -----------------------------------------------------
#
# `failures`, `retry | skip | extend | withdraw` and `reset` are clients of the gateway's admin API
# (`/api/admin/...`), with an admin token (--token, POSFLOW_TOKEN, or the admin token of the
# credentials file `posflow up` wrote, for a gateway on this machine). The gateway checks and
# records every action (who, why, when, what became of it); the CLI selects the cases, paces the
# requests and reports each one. A bulk run's request ids are `<batch>:<verb>:<application>`:
# running it again with the same --batch is answered `duplicate` for what was done, never twice.

ACTION_VERBS = ("retry", "skip", "extend", "withdraw")
DEFAULT_RATE = 10.0
# Requests in flight at once, at most (the rate is the other bound).
MAX_IN_FLIGHT = 32
# A 503 (`retry: true`) is sent again after its Retry-After, this many times in all at most.
ATTEMPTS = 3
RETRY_AFTER_CAP = 10.0
PAGE = 500  # failures read per request when selecting by filter
# The failures list's query parameters and the options that set them, so a refusal names what
# the user typed.
FAILURE_OPTIONS = {
    "stage": "--stage",
    "kind": "--kind",
    "channel": "--channel",
    "older_than": "--older-than",
    "limit": "--limit",
    "offset": "--page",
    "reason": "--reason",
    "period": "--period",
    "to_stage": "--to-stage",
    "request_id": "--batch / --request-id",
}

AdminGatewayUrl = Annotated[
    str,
    typer.Option(
        "--gateway-url",
        envvar="POSFLOW_GATEWAY_URL",
        help="The gateway's base URL.",
        show_envvar=True,
    ),
]
AdminToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="POSFLOW_TOKEN",
        help="An admin bearer token; default: the admin token in the credentials file "
        "`posflow up` wrote, for a gateway on this machine.",
        show_default=False,
        show_envvar=True,
    ),
]
StageOption = Annotated[
    str | None, typer.Option("--stage", help="Only cases in this stage, e.g. delivering.")
]
KindOption = Annotated[
    str | None,
    typer.Option(
        "--kind",
        help="needs_attention (parked), overdue (past the stage deadline, parked or not) or "
        "failed (the workflow failed, timed out or was terminated).",
    ),
]
ChannelOption = Annotated[
    str | None, typer.Option("--channel", help="bank, lakala, tmall or alipay.")
]
OlderThanOption = Annotated[
    str | None,
    typer.Option(
        "--older-than",
        help="ISO 8601 duration (PT1H, P3D): parked, overdue or closed at least this long ago.",
    ),
]
ReasonOption = Annotated[
    str,
    typer.Option(
        "--reason", help="Why (1-500 characters): kept in each application's audit trail."
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="List what would be touched; send nothing.")
]
AdminJson = Annotated[bool, typer.Option("--json", help="Print JSON to stdout, for scripts.")]


def _default_url() -> str:
    from cli.apps import DEFAULT_GATEWAY_URL

    return DEFAULT_GATEWAY_URL


def _admin_token(url: str, token: str | None) -> str | None:
    from cli.apps import stored_token

    return token or stored_token(url, "admin")


def _gateway_failed(err: Exception) -> NoReturn:
    """End the command with the gateway's refusal, each field named by its option."""
    from cli.apps import GatewayError

    assert isinstance(err, GatewayError)
    progress_console.print(f"[bold red]error:[/] {escape(err.message)}")
    for name, why in err.fields.items():
        option = FAILURE_OPTIONS.get(name)
        where = f"{name} ({option})" if option else name
        progress_console.print(f"  [bold]{escape(where)}[/]: {escape(why)}")
    raise typer.Exit(err.code)


def _refusal(response: Any) -> tuple[str, str, dict[str, str], bool]:
    """An error answer: (error, message, fields, retry)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        fields = body.get("fields")
        return (
            str(body.get("error", "")),
            str(body["message"]),
            {str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {},
            bool(body.get("retry", False)),
        )
    text = response.text.strip()[:200] or response.reason_phrase
    return "http_error", f"{text} (HTTP {response.status_code})", {}, response.status_code >= 500


def _failure_params(
    stage: str | None,
    kind: str | None,
    channel: str | None,
    older_than: str | None,
    limit: int,
    offset: int,
) -> dict[str, str]:
    wanted = {
        "stage": stage,
        "kind": kind,
        "channel": channel,
        "older_than": older_than,
        "limit": str(limit),
        "offset": str(offset),
    }
    return {k: v for k, v in wanted.items() if v is not None}


def _read_failures(url: str, token: str | None, params: dict[str, str]) -> dict[str, Any]:
    """One page of `GET /api/admin/failures`; a refusal ends the command."""
    from cli.apps import Gateway, GatewayError

    gateway = Gateway(url, token)
    try:
        data = gateway.json("/api/admin/failures", params)
    except GatewayError as err:
        _gateway_failed(err)
    finally:
        gateway.close()
    if not isinstance(data, dict) or not isinstance(data.get("failures"), list):
        _gateway_failed(GatewayError(f"{url}/api/admin/failures is not the posflow gateway's"))
    return data


def _failures_table(rows: list[dict[str, Any]]) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from cli.apps import _relative, _stacked

    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption="times in China time (UTC+8)",
        caption_justify="left",
    )
    table.add_column("application", no_wrap=True)
    table.add_column("kind", overflow="fold")
    table.add_column("stage", overflow="fold")
    table.add_column("step", overflow="fold")
    table.add_column("since", overflow="fold", min_width=10)
    table.add_column("channel", overflow="fold")
    table.add_column("reason", overflow="fold", ratio=1)
    table.add_column("actions", overflow="fold")
    styles = {"needs_attention": "yellow", "overdue": "red", "failed": "bold red"}
    for row in rows:
        kind = str(row.get("kind", ""))
        what = row.get("attention") or (row.get("status") if kind == "failed" else "")
        since = row.get("since")
        table.add_row(
            Text(str(row.get("application_id", ""))),
            Text.assemble((kind, styles.get(kind, "")), f"\n{what}" if what else ""),
            Text(str(row.get("stage", ""))),
            Text(str(row.get("step", "") or "—")),
            Text(f"{_stacked(since)}\n{_relative(since)}" if since else "—"),
            Text(str(row.get("channel", ""))),
            Text(str(row.get("reason", ""))),
            Text(", ".join(row.get("actions") or [])),
        )
    return table


FAILURES_HELP = (
    "What needs an admin (GET /api/admin/failures): applications parked for attention (with the "
    "step, the reason and since when), past their stage deadline, or whose workflow failed, "
    "timed out or was terminated; with what an admin may do about each. A table, or --json."
)


@admin_app.command("failures", help=FAILURES_HELP)
def failures_command(
    stage: StageOption = None,
    kind: KindOption = None,
    channel: ChannelOption = None,
    older_than: OlderThanOption = None,
    limit: Annotated[int, typer.Option(help="Rows per page (at most 500).")] = 50,
    page: Annotated[int, typer.Option(min=1, help="Which page, from 1.")] = 1,
    as_json: AdminJson = False,
    gateway_url: AdminGatewayUrl = "",
    token: AdminToken = None,
) -> None:
    """`posflow admin failures` (its help is `FAILURES_HELP`)."""
    from workers.logging import masked

    url = gateway_url or _default_url()
    offset = (page - 1) * limit
    params = _failure_params(stage, kind, channel, older_than, limit, offset)
    data = masked(_read_failures(url, _admin_token(url, token), params))
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    rows = data["failures"]
    total = int(data.get("total", len(rows)))
    for problem in data.get("problems") or []:
        progress_console.print(f"[yellow]incomplete:[/] {escape(str(problem))}")
    if rows:
        console.print(_failures_table(rows))
        first, last = offset + 1, offset + len(rows)
        more = f"; next page: --page {page + 1}" if last < total else ""
        console.print(f"showing {first}–{last} of {total}{more}")
    elif total:
        console.print(f"nothing on page {page}: {total} match in all")
    else:
        console.print("nothing needs an admin")


# --- choosing the cases -------------------------------------------------------------------------


@dataclass
class Case:
    """One application a bulk action touches, and what became of it."""

    application_id: str
    request_id: str = ""
    selected_by: str = "id"  # id | failures | query
    kind: str = ""  # from the failures list: needs_attention | overdue | failed
    stage: str = ""
    step: str = ""
    skip_reason: str = ""  # not sent: the failures list does not offer this action for it
    outcome: str = ""  # applied | duplicate | pending | refused | failed | skipped
    status: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("skip_reason")
        return data


def request_id_for(batch: str, verb: str, application_id: str) -> str:
    """`<batch>:<verb>:<application>`, within the 80 characters an id may have (a long
    application id is replaced by its hash)."""
    import hashlib

    request_id = f"{batch}:{verb}:{application_id}"
    if len(request_id) > 80:
        digest = hashlib.sha256(application_id.encode()).hexdigest()[:24]
        request_id = f"{batch[:40]}:{verb}:{digest}"
    return request_id


def _by_filter(
    url: str, token: str | None, verb: str, filters: dict[str, str | None], limit: int | None
) -> list[Case]:
    """Every case on the failures list the filters select; those the list does not offer `verb`
    for are kept as skipped, with why."""
    cases: list[Case] = []
    offset = 0
    while True:
        params = _failure_params(
            filters["stage"],
            filters["kind"],
            filters["channel"],
            filters["older_than"],
            PAGE,
            offset,
        )
        data = _read_failures(url, token, params)
        for problem in data.get("problems") or []:
            progress_console.print(f"[yellow]incomplete:[/] {escape(str(problem))}")
        for row in data["failures"]:
            actions = row.get("actions") or []
            case = Case(
                application_id=str(row["application_id"]),
                selected_by="failures",
                kind=str(row.get("kind", "")),
                stage=str(row.get("stage", "")),
                step=str(row.get("step", "")),
            )
            if verb not in actions:
                case.skip_reason = (
                    f"not offered for this case ({case.kind}; offered: "
                    f"{', '.join(actions) or 'nothing'})"
                )
            cases.append(case)
        offset += len(data["failures"])
        if not data["failures"] or offset >= int(data.get("total", 0)):
            break
        if limit is not None and len(cases) >= limit:
            break
    return cases[:limit] if limit is not None else cases


async def _by_visibility(query: str, limit: int | None) -> list[Case]:
    """The onboarding workflows a visibility query selects, read with the admin's own access
    to Temporal (TEMPORAL_ADDRESS...). The query goes to Temporal as given, never through the
    gateway; only `PosOnboarding` workflows are kept, each acted on through the gateway."""
    client = await _client()
    cases: list[Case] = []
    seen: set[str] = set()
    try:
        async for execution in client.list_workflows(query):
            application_id = application_id_of(execution.id)
            if (
                execution.workflow_type != "PosOnboarding"
                or application_id is None
                or application_id in seen
            ):
                continue
            seen.add(application_id)
            cases.append(Case(application_id=application_id, selected_by="query"))
            if limit is not None and len(cases) >= limit:
                break
    except RPCError as err:
        raise CannotCheck(
            f"the server refused the query: {err.message or err.status.name}"
        ) from err
    return cases


def _select(
    url: str,
    token: str | None,
    verb: str,
    ids: list[str] | None,
    filters: dict[str, str | None],
    every_failure: bool,
    query: str | None,
    limit: int | None,
    batch: str,
) -> list[Case]:
    by_filter = every_failure or any(v is not None for v in filters.values())
    chosen = [
        name for name, given in (("ID", ids), ("filters", by_filter), ("--query", query)) if given
    ]
    if len(chosen) != 1:
        _fail(
            "choose the cases with exactly one of: application ids; --failures and/or the "
            "filters --stage, --kind, --channel, --older-than; --query"
        )
    if ids:
        cases = [Case(application_id=i) for i in dict.fromkeys(ids)]
        cases = cases[:limit] if limit is not None else cases
    elif query is not None:
        from workers.codec import KeyRingError

        try:
            cases = asyncio.run(_by_visibility(query, limit))
        except (CannotCheck, KeyRingError) as err:  # the client is built as the workers' are
            _fail(f"--query: {err}")
    else:
        cases = _by_filter(url, token, verb, filters, limit)
    for case in cases:
        case.request_id = request_id_for(batch, verb, case.application_id)
    return cases


# --- sending them ---------------------------------------------------------------------------------


@dataclass
class BulkReport:
    verb: str
    batch: str
    dry_run: bool
    cases: list[Case]
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        counted: dict[str, int] = {}
        for case in self.cases:
            key = case.outcome or ("would skip" if case.skip_reason else "would send")
            counted[key] = counted.get(key, 0) + 1
        return counted

    @property
    def refused(self) -> list[Case]:
        return [c for c in self.cases if c.outcome in ("refused", "failed")]

    def to_json(self) -> dict[str, Any]:
        sent = sum(1 for c in self.cases if c.outcome not in ("", "skipped"))
        return {
            "verb": self.verb,
            "batch": self.batch,
            "dry_run": self.dry_run,
            "cases": [c.to_json() for c in self.cases],
            "summary": self.counts(),
            "seconds": round(self.seconds, 3),
            "per_second": round(sent / self.seconds, 1) if self.seconds > 0 else 0.0,
        }


class _Fatal(Exception):
    """The gateway refused the credential: no case can succeed."""


async def _send_one(http: Any, verb: str, case: Case, body: dict[str, Any]) -> None:
    """One action, answered: applied, duplicate, pending, refused (with the gateway's reason),
    or failed (no answer, or still unavailable after ATTEMPTS)."""
    from urllib.parse import quote

    import httpx

    path = f"/api/admin/applications/{quote(case.application_id, safe='')}/{verb}"
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = await http.post(path, json={**body, "request_id": case.request_id})
        except httpx.HTTPError as err:
            case.outcome, case.detail = (
                "failed",
                f"no answer from the gateway ({type(err).__name__})",
            )
            if attempt == ATTEMPTS:
                return
            await asyncio.sleep(1.0)
            continue
        case.status = response.status_code
        if response.status_code in (401, 403):
            _, message, _, _ = _refusal(response)
            raise _Fatal(f"{message} (HTTP {response.status_code}): pass an admin token")
        if response.status_code in (200, 202):
            answer = response.json()
            case.outcome = str(answer.get("outcome", "applied"))
            case.detail = str(answer.get("detail", ""))
            return
        error, message, fields, retry = _refusal(response)
        detail = f"{error}: {message}" if error else message
        if fields:
            detail += " (" + "; ".join(f"{k}: {v}" for k, v in fields.items()) + ")"
        if retry and attempt < ATTEMPTS:
            after = response.headers.get("Retry-After", "1")
            await asyncio.sleep(min(float(after) if after.isdigit() else 1.0, RETRY_AFTER_CAP))
            continue
        case.outcome = "failed" if response.status_code >= 500 else "refused"
        case.detail = detail
        return


async def send_all(
    url: str,
    token: str | None,
    verb: str,
    cases: list[Case],
    body: dict[str, Any],
    rate: float,
    on_done: Any = None,
) -> None:
    """Send `verb` for every case not skipped, starting at most `rate` a second and keeping at
    most MAX_IN_FLIGHT waiting; `on_done(case)` after each."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=60) as http:

        async def one(case: Case) -> None:
            try:
                await _send_one(http, verb, case, body)
            finally:
                gate.release()
                if on_done is not None:
                    on_done(case)

        tasks: list[asyncio.Task[None]] = []
        try:
            for n, case in enumerate(c for c in cases if not c.skip_reason):
                delay = started + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                tasks.append(asyncio.create_task(one(case)))
                if any(t.done() and t.exception() is not None for t in tasks):
                    break
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
    for case in cases:
        if case.skip_reason:
            case.outcome, case.detail = "skipped", case.skip_reason


def _bulk_progress(total: int, show: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
        console=progress_console,
        transient=True,
        disable=not (show and progress_console.is_terminal),
    )


def _print_bulk(report: BulkReport) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    styles = {
        "applied": "green",
        "duplicate": "cyan",
        "pending": "yellow",
        "refused": "bold red",
        "failed": "bold red",
        "skipped": "dim",
    }
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("application", no_wrap=True)
    if report.dry_run:
        table.add_column("kind")
        table.add_column("stage")
        table.add_column("step")
        table.add_column("would")
        table.add_column("request id", overflow="fold")
    else:
        table.add_column("outcome", no_wrap=True)
        table.add_column("detail", overflow="fold", ratio=1)
    for case in report.cases:
        if report.dry_run:
            would = f"skip: {case.skip_reason}" if case.skip_reason else report.verb
            table.add_row(
                Text(case.application_id),
                Text(case.kind or "—"),
                Text(case.stage or "—"),
                Text(case.step or "—"),
                Text(would, style="dim" if case.skip_reason else ""),
                Text(case.request_id),
            )
        else:
            table.add_row(
                Text(case.application_id),
                Text(case.outcome, style=styles.get(case.outcome, "")),
                Text(case.detail),
            )
    console.print(table)
    counts = ", ".join(f"{n} {what}" for what, n in sorted(report.counts().items()))
    if report.dry_run:
        console.print(
            f"dry run: {len(report.cases)} selected ({counts or 'none'}); nothing was sent "
            f"(batch {report.batch})"
        )
        return
    sent = sum(1 for c in report.cases if c.outcome not in ("", "skipped"))
    pace = f", {sent / report.seconds:.1f}/s" if report.seconds > 0 and sent else ""
    verdict = (
        f"[bold red]{len(report.refused)} refused or failed[/]"
        if report.refused
        else "none refused"
    )
    console.print(
        f"{report.verb}: {len(report.cases)} cases — {counts or 'none'}; {verdict} "
        f"(in {report.seconds:.2f} s{pace}; batch {report.batch}: run again with "
        f"--batch {report.batch} to resend, answered duplicate where done)"
    )


def run_bulk(
    verb: str,
    *,
    ids: list[str] | None,
    every_failure: bool,
    filters: dict[str, str | None],
    query: str | None,
    limit: int | None,
    reason: str,
    period: str | None,
    dry_run: bool,
    rate: float,
    batch: str | None,
    as_json: bool,
    gateway_url: str,
    token: str | None,
) -> BulkReport:
    """`posflow admin <verb>`: select, send at the rate, report; exit 1 if any was refused."""
    import uuid

    if rate <= 0:
        _fail("--rate must be more than 0")
    if not reason.strip():
        _fail("--reason must say why (1-500 characters)")
    url = gateway_url or _default_url()
    token = _admin_token(url, token)
    batch = batch or f"cli-{uuid.uuid4().hex[:10]}"
    cases = _select(url, token, verb, ids, filters, every_failure, query, limit, batch)
    report = BulkReport(verb, batch, dry_run, cases)
    body: dict[str, Any] = {"reason": reason}
    if period is not None:
        body["period"] = period
    if not dry_run and cases:
        to_send = sum(1 for c in cases if not c.skip_reason)
        started = time.perf_counter()
        with _bulk_progress(to_send, show=not as_json) as progress:
            task = progress.add_task(verb, total=to_send, rate="")
            refused = 0

            def advance(case: Case) -> None:
                nonlocal refused
                refused += case.outcome in ("refused", "failed")
                done = progress.tasks[task].completed + 1
                pace = done / max(time.perf_counter() - started, 1e-9)
                label = f"{verb}, [red]{refused} refused[/]" if refused else verb
                progress.update(task, advance=1, description=label, rate=f"{pace:.1f}/s")

            try:
                asyncio.run(send_all(url, token, verb, cases, body, rate, advance))
            except _Fatal as err:
                progress_console.print(f"[bold red]error:[/] {escape(str(err))}")
                raise typer.Exit(1) from err
        report.seconds = time.perf_counter() - started
    if as_json:
        typer.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        _print_bulk(report)
    if report.refused:
        raise typer.Exit(1)
    return report


IdsArgument = Annotated[
    list[str] | None, typer.Argument(metavar="[ID]...", help="Application ids.", show_default=False)
]
EveryFailureOption = Annotated[
    bool,
    typer.Option(
        "--failures",
        help="Every case on the failures list (narrowed by --stage, --kind, --channel, "
        "--older-than; any of those alone implies it). Cases the list does not offer the action "
        "for are skipped, and said so.",
    ),
]
QueryOption = Annotated[
    str | None,
    typer.Option(
        "--query",
        help="A Temporal visibility query, e.g. \"ExecutionStatus='Running' AND "
        "PosStage='delivering'\", run with your own access to Temporal (TEMPORAL_ADDRESS...); "
        "only PosOnboarding workflows are kept, each acted on through the gateway.",
        show_default=False,
    ),
]
LimitOption = Annotated[
    int | None, typer.Option("--limit", min=1, help="At most this many cases.", show_default=False)
]
RateOption = Annotated[float, typer.Option("--rate", help="Requests started per second, at most.")]
BatchOption = Annotated[
    str | None,
    typer.Option(
        "--batch",
        help="The batch id the request ids are made from (default: a new one); the same batch "
        "again resends, answered duplicate where it was done.",
        show_default=False,
    ),
]

BULK_HELP = (
    "Choose the cases by id, by the failures list (--failures, --stage, --kind, --channel, "
    "--older-than) or by a visibility query (--query). Each is sent with --reason at --rate a "
    "second at most and reported (applied, duplicate, pending, refused with the reason, failed); "
    "--dry-run lists them and sends nothing. Exit code 1 if any was refused or failed."
)


def _bulk_command(verb: str, summary: str) -> None:
    def command(
        reason: ReasonOption,
        ids: IdsArgument = None,
        every_failure: EveryFailureOption = False,
        stage: StageOption = None,
        kind: KindOption = None,
        channel: ChannelOption = None,
        older_than: OlderThanOption = None,
        query: QueryOption = None,
        limit: LimitOption = None,
        dry_run: DryRunOption = False,
        rate: RateOption = DEFAULT_RATE,
        batch: BatchOption = None,
        as_json: AdminJson = False,
        gateway_url: AdminGatewayUrl = "",
        token: AdminToken = None,
    ) -> None:
        run_bulk(
            verb,
            ids=ids,
            every_failure=every_failure,
            filters={"stage": stage, "kind": kind, "channel": channel, "older_than": older_than},
            query=query,
            limit=limit,
            reason=reason,
            period=None,
            dry_run=dry_run,
            rate=rate,
            batch=batch,
            as_json=as_json,
            gateway_url=gateway_url,
            token=token,
        )

    command.__name__ = f"{verb}_command"
    admin_app.command(verb, help=f"{summary}\n\n{BULK_HELP}")(command)


_bulk_command("retry", "Re-run the step each case is parked on (an overdue wait: ask again).")
_bulk_command("skip", "Skip the compensation each case is parked on, done by hand.")
_bulk_command("withdraw", "Withdraw each application; what was done is undone in reverse.")


@admin_app.command(
    "extend",
    help=f"Give each overdue wait another period (--period, or the stage's own).\n\n{BULK_HELP}",
)
def extend_command(
    reason: ReasonOption,
    ids: IdsArgument = None,
    period: Annotated[
        str | None,
        typer.Option(
            "--period", help="ISO 8601 duration from now, e.g. P3D; default: the stage's own."
        ),
    ] = None,
    every_failure: EveryFailureOption = False,
    stage: StageOption = None,
    kind: KindOption = None,
    channel: ChannelOption = None,
    older_than: OlderThanOption = None,
    query: QueryOption = None,
    limit: LimitOption = None,
    dry_run: DryRunOption = False,
    rate: RateOption = DEFAULT_RATE,
    batch: BatchOption = None,
    as_json: AdminJson = False,
    gateway_url: AdminGatewayUrl = "",
    token: AdminToken = None,
) -> None:
    run_bulk(
        "extend",
        ids=ids,
        every_failure=every_failure,
        filters={"stage": stage, "kind": kind, "channel": channel, "older_than": older_than},
        query=query,
        limit=limit,
        reason=reason,
        period=period,
        dry_run=dry_run,
        rate=rate,
        batch=batch,
        as_json=as_json,
        gateway_url=gateway_url,
        token=token,
    )


# --- reset ----------------------------------------------------------------------------------------


RESET_HELP = (
    "Reset one application's latest run to the start of a stage (POST "
    "/api/admin/applications/ID/reset): what came before is kept, the stage's steps run again "
    "with the same idempotency keys, and the new run's id is printed.\n\n"
    "--dry-run shows the reset point (the workflow task that entered the stage, and when) and "
    "changes nothing. The gateway reads it from the history (GET .../reset-point), so an admin "
    "token is all it takes: no access to Temporal is needed. Exit code 1 when refused (the run "
    "never entered the stage, no such application), 2 for an invalid option."
)


@admin_app.command("reset", help=RESET_HELP)
def reset_command(
    application_id: Annotated[str, typer.Argument(metavar="ID", help="The application id.")],
    to_stage: Annotated[
        str, typer.Option("--to-stage", help="The stage to run again from its start.")
    ],
    reason: ReasonOption,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show the reset point (the workflow task that entered the stage, when) and "
            "change nothing.",
        ),
    ] = False,
    request_id: Annotated[
        str | None,
        typer.Option(
            "--request-id",
            help="The reset's id (default: a new one); the same id again is answered with the "
            "first reset, not a second.",
            show_default=False,
        ),
    ] = None,
    as_json: AdminJson = False,
    gateway_url: AdminGatewayUrl = "",
    token: AdminToken = None,
) -> None:
    """`posflow admin reset` (its help is `RESET_HELP`)."""
    import uuid
    from urllib.parse import quote

    import httpx

    from cli.apps import GatewayError, _when

    url = (gateway_url or _default_url()).rstrip("/")
    token = _admin_token(url, token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    path = f"/api/admin/applications/{quote(application_id, safe='')}"
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            if dry_run:
                response = http.get(f"{path}/reset-point", params={"to_stage": to_stage})
            else:
                body = {
                    "request_id": request_id or f"cli-reset-{uuid.uuid4().hex[:12]}",
                    "to_stage": to_stage,
                    "reason": reason,
                }
                response = http.post(f"{path}/reset", json=body)
    except httpx.HTTPError as err:
        _gateway_failed(GatewayError(f"cannot reach the gateway at {url} ({type(err).__name__})"))
    if not response.is_success:
        error, message, fields, _ = _refusal(response)
        status = response.status_code
        hint = "; pass an admin token with --token or POSFLOW_TOKEN" if status in (401, 403) else ""
        _gateway_failed(
            GatewayError(
                f"{error}: {message} (HTTP {status}){hint}" if error else message,
                fields,
                code=2 if status == 422 else 1,
                status=status,
            )
        )
    data = response.json()
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    if dry_run:
        run = f"{data['workflow_id']} run {data['run_id']} ({data['status']})"
        console.print(
            f"would reset {escape(run)} to the start of [bold]{escape(str(data['stage']))}[/]:"
        )
        console.print(
            f"  reset point: workflow task event {data['workflow_task_event_id']}; the stage was "
            f"entered at event {data['entered_event_id']}, {_when(data.get('entered_at'))} "
            "(China time)"
        )
        visited = ", ".join(
            f"{e['stage']} (event {e['entered_event_id']})" for e in data.get("entries") or []
        )
        console.print(f"  stages entered: {escape(visited)}")
        console.print("  dry run: nothing was changed")
        return
    verb = "already reset" if data.get("outcome") == "duplicate" else "reset"
    console.print(
        f"[green]✓[/] {verb} {escape(str(data['workflow_id']))} to the start of "
        f"[bold]{escape(str(data['stage']))}[/] (workflow task event "
        f"{data['workflow_task_event_id']}); new run {escape(str(data['new_run_id']))} "
        f"(was {escape(str(data['old_run_id']))})"
    )
