"""`posflow bench`: posflow against the engine's floor on one dev server, in one run.

1. Throughput: rounds of `count` applications through the happy path (individual, by mail,
   one review round), each followed by a round of as many floor workflows (bench/harness/
   floor.py, shaped after posflow's histories of the warm-up); completed per second from the
   histories' own timestamps (first start to last close), and CPU per workflow of the worker,
   the dev server and this process (gateway, services, driver).
2. Cost per application, read from the fetched histories (bench/harness/actions.py): the happy
   path, documents refused once then corrected, a second review round, and the floor.
3. Latency: from an update's acceptance to the next activity scheduled and started, from the
   same histories, posflow's callbacks against the floor's bare updates.
4. Scale (`--skip-scale` to leave out): `open` applications parked in review (the review
   service's auto-reviewer off), a fresh worker with the default workflow cache; its resident
   memory, the start rate, the ops list and overview and Temporal visibility at that size; then
   a worker with a bounded cache after queries that fill it, and the floor's parked workflows.
5. Replay: the last posflow round's histories replayed by `posflow admin replay`'s function.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory

from bench.harness.actions import Cost, cost, ordered
from bench.harness.floor import Floor, FloorStart, Piece, Shape, shape_of
from bench.harness.stack import REPO, Stack, rss_bytes

T = TypeVar("T")
E = EventType
MiB = 1024 * 1024
SDK_DEFAULT_CACHE = 1000  # temporalio.worker.Worker's max_cached_workflows
PRODUCT = ("schemas", "workflows", "activities", "workers", "cli", "services", "gateway")
PARK_AT = 1  # parked in review: the documents update received, the review decision not
log = logging.getLogger("bench")


@dataclass
class Config:
    # Defaults that finish within 15 minutes on a 2-core machine (652 s measured): posflow parks
    # about 4 applications a second here, so 10,000 open would take 45 minutes on its own.
    count: int = 40
    rounds: int = 3
    open: int = 1_000
    skip_scale: bool = False
    bounded_cache: int = 100
    paths: int = 2  # applications of each other path (refused documents, second review round)
    warmup: int = 10
    concurrency: int = 32  # requests in flight from the driver
    replays: int = 3
    out_dir: Path = REPO / "bench" / "results"


# --- small helpers ---------------------------------------------------------------------------


async def bounded(limit: int, items: Iterable[T], work: Callable[[T], Awaitable[Any]]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered_values = sorted(values)
    k = (len(ordered_values) - 1) * q
    low = int(k)
    high = min(low + 1, len(ordered_values) - 1)
    return ordered_values[low] + (ordered_values[high] - ordered_values[low]) * (k - low)


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.5) * 1000, 1),
        "p95_ms": round(percentile(values, 0.95) * 1000, 1),
        "p99_ms": round(percentile(values, 0.99) * 1000, 1),
    }


def median(values: Iterable[float]) -> float:
    found = list(values)
    return statistics.median(found) if found else float("nan")


def at(event: HistoryEvent) -> float:
    return event.event_time.ToDatetime().timestamp()


# --- the applications -------------------------------------------------------------------------


@dataclass
class Planned:
    body: dict[str, Any]
    documents: list[dict[str, Any]]
    bad_documents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.body["application_id"])

    @property
    def workflow_id(self) -> str:
        from schemas.application import workflow_id_for

        return workflow_id_for(self.id)


def plan(prefix: str, seed: int, *, second_round: bool = False, bad: bool = False) -> Planned:
    """An individual business by mail on the Alipay channel, one terminal; `second_round`: an
    id the auto-reviewer sends back once for new premises photos; `bad`: a first filing with an
    identity card whose check character is wrong."""
    from cli.samples import sample
    from schemas.application import Channel
    from services.review import stable_bucket

    while True:
        drawn = sample(seed, channel=Channel.ALIPAY, bad_document=bad)
        app = drawn.application
        if app.merchant.merchant_type.value == "individual" and app.merchant.physical_shop:
            break
        seed += 100_003
    while True:
        app_id = f"{prefix}-{uuid.uuid4().hex[:8].upper()}"
        if (stable_bucket(app_id) == 0) == second_round:
            break
    data = app.model_dump(mode="json")
    data.update(
        application_id=app_id,
        fulfilment="mail",
        installation_address=None,
        device_order={**data["device_order"], "quantity": 1},
    )
    documents = [d.model_dump(mode="json") for d in drawn.documents]
    if not bad:
        return Planned(data, documents)
    good = [d.model_dump(mode="json") for d in sample(seed, channel=Channel.ALIPAY).documents]
    return Planned(data, good, bad_documents=documents)


class Driver:
    """Plays the merchants through the gateway (the services act on their own)."""

    def __init__(self, stack: Stack, config: Config) -> None:
        self.stack = stack
        self.config = config

    @property
    def client(self) -> Client:
        assert self.stack.client is not None
        return self.stack.client

    async def post(self, path: str, body: dict[str, Any], ok: Sequence[int]) -> Any:
        assert self.stack.http is not None
        for attempt in range(30):
            try:
                response = await self.stack.http.post(path, json=body)
            except Exception:
                if attempt == 29:
                    raise
                await asyncio.sleep(1)
                continue
            if response.status_code in ok:
                return response.json() if response.content else None
            if response.status_code != 503:
                raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        raise RuntimeError(f"POST {path}: still 503")

    async def apply(self, case: Planned) -> None:
        await self.post("/api/applications", case.body, (200, 201))

    async def file(self, case: Planned, documents: list[dict[str, Any]], name: str) -> Any:
        body = {"submission_id": f"{case.id}-{name}", "documents": documents}
        return await self.post(f"/api/applications/{case.id}/documents", body, (200, 422))

    async def happy(self, case: Planned) -> None:
        await self.apply(case)
        await self.file(case, case.documents, "docs")

    async def refused_then_corrected(self, case: Planned) -> None:
        await self.apply(case)
        first = await self.file(case, case.bad_documents, "docs")
        issues = (first or {}).get("result", {}).get("issues")
        if not issues:
            log.warning("the bad documents of %s were not refused: %s", case.id, first)
        card = [d for d in case.documents if d["kind"] == "identity_card"]
        await self.file(case, card, "corrected")

    async def second_round(self, case: Planned) -> None:
        assert self.stack.http is not None
        await self.happy(case)
        for _ in range(1200):
            rows = (
                await self.stack.http.get(
                    "/api/applications",
                    params={"q": case.id, "stage": "collecting_documents", "review_round": 2},
                )
            ).json()
            if rows:
                break
            await asyncio.sleep(0.25)
        else:
            raise RuntimeError(f"{case.id} was never asked for a second round")
        photos = [d for d in case.documents if d["kind"] == "premises_photos"]
        await self.file(case, photos, "round-2")

    async def finished(self, workflow_id: str) -> None:
        await self.client.get_workflow_handle(workflow_id).result()

    async def histories(self, workflow_ids: Sequence[str]) -> list[WorkflowHistory]:
        async def one(workflow_id: str) -> WorkflowHistory:
            return await self.client.get_workflow_handle(workflow_id).fetch_history()

        found: list[WorkflowHistory] = await bounded(16, workflow_ids, one)
        return found

    # --- the floor -----------------------------------------------------------------------------

    async def floor(
        self,
        workflow_id: str,
        shape: Shape,
        queue: str,
        park_at: int = -1,
        gate: asyncio.Semaphore | None = None,
    ) -> None:
        """One floor workflow: started, then each update sent once its piece is done. `gate` is
        held until the first update is answered, as posflow's start and documents are."""
        calls = self.stack.floor_calls
        assert self.stack.floor_client is not None
        held = gate is not None
        if gate is not None:
            await gate.acquire()
        try:
            handle = await self.stack.floor_client.start_workflow(
                Floor.run,
                FloorStart(shape, self.stack.notify_url, park_at),
                id=workflow_id,
                task_queue=queue,
            )
            for index, piece in enumerate(shape.pieces[:-1]):
                if piece.activities:
                    await calls.reached(workflow_id, index)
                if index == park_at:
                    return
                for _ in range(piece.signals):
                    await handle.signal(Floor.ping)
                await handle.execute_update(Floor.step, index + 1)
                if held and gate is not None:
                    gate.release()
                    held = False
            await handle.result()
        finally:
            if held and gate is not None:
                gate.release()


# --- 1-3: throughput, cost, latency ------------------------------------------------------------


@dataclass
class Round:
    kind: str
    count: int
    seconds: float  # first start to last close, by the histories' timestamps
    wall_seconds: float
    cpu: dict[str, float]  # seconds, by process, over the round
    histories: list[WorkflowHistory]

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    def cpu_ms_per_workflow(self) -> dict[str, float]:
        return {k: round(v * 1000 / self.count, 2) for k, v in self.cpu.items()}


def span(histories: Sequence[WorkflowHistory]) -> float:
    starts = [at(h.events[0]) for h in histories]
    closes = [at(h.events[-1]) for h in histories]
    return max(closes) - min(starts)


async def measured(
    driver: Driver, kind: str, count: int, work: Callable[[], Awaitable[list[str]]]
) -> Round:
    stack = driver.stack
    before = stack.cpu()
    began = time.perf_counter()
    ids = await work()
    wall = time.perf_counter() - began
    after = stack.cpu()
    histories = await driver.histories(ids)
    cpu = {k: after[k] - before.get(k, 0.0) for k in after}
    return Round(kind, count, span(histories), wall, cpu, histories)


async def posflow_round(driver: Driver, prefix: str, count: int) -> Round:
    cases = [plan(prefix, 1000 + n) for n in range(count)]

    async def work() -> list[str]:
        await bounded(driver.config.concurrency, cases, driver.happy)
        await asyncio.gather(*(driver.finished(c.workflow_id) for c in cases))
        return [c.workflow_id for c in cases]

    return await measured(driver, "posflow", count, work)


async def floor_round(driver: Driver, prefix: str, count: int, shape: Shape, queue: str) -> Round:
    ids = [f"{prefix}-{uuid.uuid4().hex[:8]}" for _ in range(count)]

    async def work() -> list[str]:
        gate = asyncio.Semaphore(driver.config.concurrency)
        await asyncio.gather(*(driver.floor(i, shape, queue, gate=gate) for i in ids))
        return ids

    return await measured(driver, "floor", count, work)


def update_latencies(histories: Iterable[WorkflowHistory]) -> dict[str, list[float]]:
    """Seconds, for each accepted update, to the next activity scheduled after it and to that
    activity's start: from the update's acceptance, and from the workflow task that carried it
    being scheduled (when the update reached the server, unless a task was already running)."""
    found: dict[str, list[float]] = {
        "accepted_scheduled": [],
        "accepted_started": [],
        "arrived_started": [],
    }
    for history in histories:
        events = list(history.events)
        started_at = {
            e.activity_task_started_event_attributes.scheduled_event_id: at(e)
            for e in events
            if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_STARTED
        }
        task_scheduled = 0.0
        for i, event in enumerate(events):
            if event.event_type == E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                task_scheduled = at(event)
            if event.event_type != E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
                continue
            accepted = at(event)
            for later in events[i + 1 :]:
                if later.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    found["accepted_scheduled"].append(at(later) - accepted)
                    start = started_at.get(later.event_id)
                    if start is not None:
                        found["accepted_started"].append(start - accepted)
                        found["arrived_started"].append(start - task_scheduled)
                    break
    return found


def common_shape(histories: Iterable[WorkflowHistory]) -> tuple[Shape, int, int]:
    """The shape of these histories: among those with the most common number of updates, the
    median of each piece's activities, timers and signals, and of the children; with how many
    histories have exactly that shape, of how many."""
    shapes = [shape_of(list(h.events)) for h in histories]
    pieces, _ = Counter(len(s.pieces) for s in shapes).most_common(1)[0]
    alike = [s for s in shapes if len(s.pieces) == pieces]

    def mid(values: Iterable[int]) -> int:
        return round(statistics.median(values))

    shape = Shape(
        [
            Piece(
                activities=mid(s.pieces[i].activities for s in alike),
                timers=mid(s.pieces[i].timers for s in alike),
                signals=mid(s.pieces[i].signals for s in alike),
            )
            for i in range(pieces)
        ],
        children=mid(s.children for s in alike),
    )
    same = sum(1 for s in shapes if s.key() == shape.key())
    return shape, same, len(shapes)


def cost_summary(histories: Sequence[WorkflowHistory]) -> dict[str, Any]:
    costs: list[Cost] = [cost(h) for h in histories]
    kinds = sorted({k for c in costs for k in c.actions})
    not_billed = sorted({k for c in costs for k in c.exempt})
    types = sorted({k for c in costs for k in c.event_types})
    return {
        "histories": len(costs),
        "events": median(c.events for c in costs),
        "bytes": median(c.bytes for c in costs),
        "actions": median(c.total_actions for c in costs),
        "actions_min_max": [
            min(c.total_actions for c in costs),
            max(c.total_actions for c in costs),
        ],
        "workflow_task_events": median(c.workflow_task_events for c in costs),
        "actions_by_kind": ordered({k: median(c.actions[k] for c in costs) for k in kinds}),
        "not_billed": {k: median(c.exempt[k] for c in costs) for k in not_billed},
        "events_by_type": {k: median(c.event_types[k] for c in costs) for k in types},
    }


# --- 4: scale --------------------------------------------------------------------------------


async def settled_rss(pid: int, seconds: float = 3.0) -> int:
    await asyncio.sleep(seconds)
    return rss_bytes(pid)


async def timed_requests(
    call: Callable[[], Awaitable[Any]], requests: int, budget: float = 20.0
) -> list[float]:
    await call()  # warm
    times: list[float] = []
    give_up = time.perf_counter() + budget
    for _ in range(requests):
        began = time.perf_counter()
        await call()
        times.append(time.perf_counter() - began)
        if time.perf_counter() > give_up:
            break
    return times


async def wait_count(client: Client, query: str, wanted: int, patience: float) -> float:
    began = time.perf_counter()
    while time.perf_counter() - began < patience:
        if (await client.count_workflows(query)).count >= wanted:
            break
        await asyncio.sleep(1)
    return time.perf_counter() - began


async def scale(driver: Driver, shape: Shape, config: Config) -> dict[str, Any]:
    stack = driver.stack
    client = driver.client
    assert stack.http is not None
    http = stack.http
    n = config.open
    out: dict[str, Any] = {"open": n}
    await stack.set_review_auto(False)
    worker = await stack.start_worker("posflow")
    idle = await settled_rss(worker.pid, 2)
    prefix = f"S{uuid.uuid4().hex[:4].upper()}"
    cases = [plan(prefix, 50_000 + i) for i in range(n)]
    before = stack.cpu()
    began = time.perf_counter()
    starts: list[float] = []

    async def park(case: Planned) -> None:
        await driver.apply(case)
        starts.append(time.perf_counter() - began)
        await driver.file(case, case.documents, "docs")

    await bounded(config.concurrency, cases, park)
    submitted = time.perf_counter() - began
    in_review = f"WorkflowId STARTS_WITH 'pos-application-{prefix}' AND PosStage = 'in_review'"
    await wait_count(client, in_review, n, patience=max(120.0, n / 5))
    parked = time.perf_counter() - began
    cpu = {k: v - before.get(k, 0.0) for k, v in stack.cpu().items()}
    default_rss = await settled_rss(worker.pid)
    cached = min(n, SDK_DEFAULT_CACHE)
    out["posflow_default_cache"] = {
        "cache": SDK_DEFAULT_CACHE,
        "cached_workflows": cached,
        "rss_idle_mib": round(idle / MiB, 1),
        "rss_mib": round(default_rss / MiB, 1),
        "kib_per_cached_workflow": round((default_rss - idle) / 1024 / cached, 1),
    }
    out["start_rate_per_s"] = round(n / max(starts), 1)
    out["parked_rate_per_s"] = round(n / parked, 1)
    out["submitted_seconds"] = round(submitted, 1)
    out["parked_seconds"] = round(parked, 1)
    out["cpu_ms_per_parked"] = {k: round(v * 1000 / n, 2) for k, v in cpu.items()}

    # The ops pages at that size (the gateway's store) and Temporal visibility.
    async def page(path: str, **params: Any) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            response = await http.get(path, params=params)
            response.raise_for_status()

        return call

    visibility = "WorkflowType = 'PosOnboarding' AND PosStage = 'in_review'"

    async def listed() -> None:
        async for _ in client.list_workflows(visibility, page_size=50, limit=50):
            pass

    async def counted() -> None:
        await client.count_workflows(visibility)

    out["latency"] = {
        "GET /api/applications": summary_ms(
            await timed_requests(await page("/api/applications"), 30)
        ),
        "GET /api/applications?stage=in_review": summary_ms(
            await timed_requests(await page("/api/applications", stage="in_review"), 30)
        ),
        "GET /api/overview": summary_ms(await timed_requests(await page("/api/overview"), 15)),
        "visibility: list 50 in review": summary_ms(await timed_requests(listed, 30)),
        "visibility: count in review": summary_ms(await timed_requests(counted, 30)),
    }
    await stack.stop_worker(worker)

    # A bounded cache, filled by queries (each one replays a parked workflow into the cache).
    bounded_worker = await stack.start_worker("posflow", cache=config.bounded_cache)
    idle_b = await settled_rss(bounded_worker.pid, 2)
    touched = cases[-min(n, config.bounded_cache * 2) :]
    began = time.perf_counter()

    async def query(case: Planned) -> None:
        await client.get_workflow_handle(case.workflow_id).query("status")

    await bounded(8, touched, query)
    replayed = time.perf_counter() - began
    bounded_rss = await settled_rss(bounded_worker.pid)
    cached_b = min(len(touched), config.bounded_cache)
    out["posflow_bounded_cache"] = {
        "cache": config.bounded_cache,
        "cached_workflows": cached_b,
        "rss_idle_mib": round(idle_b / MiB, 1),
        "rss_mib": round(bounded_rss / MiB, 1),
        "kib_per_cached_workflow": round((bounded_rss - idle_b) / 1024 / cached_b, 1),
        "cold_queries_per_s": round(len(touched) / replayed, 1),
    }
    await stack.stop_worker(bounded_worker)

    # The floor's workflows parked at the same point, on a fresh floor worker.
    queue = f"{stack.queue}-floor-scale"
    floor_worker = await stack.start_worker("floor", queue)
    idle_f = await settled_rss(floor_worker.pid, 2)
    floor_n = n
    ids = [f"floor-park-{uuid.uuid4().hex[:10]}" for _ in range(floor_n)]
    began = time.perf_counter()

    async def park_floor(workflow_id: str, gate: asyncio.Semaphore) -> None:
        await driver.floor(workflow_id, shape, queue, park_at=PARK_AT, gate=gate)

    gate = asyncio.Semaphore(config.concurrency)
    await asyncio.gather(*(park_floor(i, gate) for i in ids))
    floor_parked = time.perf_counter() - began
    floor_rss = await settled_rss(floor_worker.pid)
    cached_f = min(floor_n, SDK_DEFAULT_CACHE)
    out["floor_default_cache"] = {
        "cache": SDK_DEFAULT_CACHE,
        "cached_workflows": cached_f,
        "rss_idle_mib": round(idle_f / MiB, 1),
        "rss_mib": round(floor_rss / MiB, 1),
        "kib_per_cached_workflow": round((floor_rss - idle_f) / 1024 / cached_f, 1),
        "parked_rate_per_s": round(floor_n / floor_parked, 1),
    }
    out["memory_ratio_per_cached_workflow"] = round(
        out["posflow_default_cache"]["kib_per_cached_workflow"]
        / max(out["floor_default_cache"]["kib_per_cached_workflow"], 0.1),
        2,
    )
    await stack.stop_worker(floor_worker)
    return out


# --- 5: replay ---------------------------------------------------------------------------------


async def replay_rate(histories: Sequence[WorkflowHistory], runs: int) -> dict[str, Any]:
    from cli.admin import Source, replay

    rates: list[float] = []
    failures = 0
    for _ in range(runs):

        async def source() -> AsyncIterator[tuple[WorkflowHistory, str]]:
            for history in histories:
                yield history, "bench"

        report = await replay(Source(source(), total=len(histories)))
        failures += len(report.failures)
        rates.append(len(report.results) / report.seconds)
    return {
        "histories": len(histories),
        "runs": [round(r, 1) for r in rates],
        "per_second": round(median(rates), 1),
        "failures": failures,
    }


# --- the whole run -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def quiet() -> None:
    """Warnings and errors only from the gateway and services served in this process."""
    from workers.logging import configure_logging

    configure_logging(level=logging.WARNING)
    logging.getLogger("temporalio").setLevel(logging.ERROR)


def compile_sources() -> None:
    """What `make compile` does: the workflow sandbox imports the workflow modules again for
    every run, and without .pyc files (PYTHONDONTWRITEBYTECODE) it compiles them every time."""
    import compileall

    for package in (*PRODUCT, "bench"):
        compileall.compile_dir(REPO / package, quiet=1)


async def run(config: Config, progress: Callable[[str], None] = print) -> dict[str, Any]:
    quiet()
    compile_sources()
    results: dict[str, Any] = {
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "config": {
            "count": config.count,
            "rounds": config.rounds,
            "open": None if config.skip_scale else config.open,
            "bounded_cache": config.bounded_cache,
            "paths": config.paths,
            "concurrency": config.concurrency,
        },
    }
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="posflow-bench-") as home:
        # Every live application takes one terminal; the device service seeds them one by one.
        stock = config.count * config.rounds + config.warmup + 2 * config.paths + 50
        stack = Stack(Path(home), stock=stock)
        await stack.start()
        try:
            driver = Driver(stack, config)
            results.update(await throughput_and_cost(driver, config, progress))
            shape = results.pop("_shape")
            histories = results.pop("_last_posflow")
            progress(f"replaying {len(histories)} histories x{config.replays}")
            results["replay"] = await replay_rate(histories, config.replays)
            if not config.skip_scale:
                for worker in list(stack.workers):
                    await stack.stop_worker(worker)
                progress(f"scale: parking {config.open} applications in review")
                results["scale"] = await scale(driver, shape, config)
        finally:
            await stack.stop()
    results["seconds"] = round(time.perf_counter() - began, 1)
    return results


async def throughput_and_cost(
    driver: Driver, config: Config, progress: Callable[[str], None]
) -> dict[str, Any]:
    stack = driver.stack
    await stack.start_worker("posflow")
    floor_queue = f"{stack.queue}-floor"
    await stack.start_worker("floor", floor_queue)
    progress(f"warm-up: {config.warmup} applications")
    warm = await posflow_round(driver, "W", config.warmup)
    shape, agreeing, total = common_shape(warm.histories)
    progress(f"floor shape {shape.counts()} ({agreeing} of {total} warm-up histories)")
    await floor_round(driver, "floor-warm", config.warmup, shape, floor_queue)
    rounds: list[tuple[Round, Round]] = []
    for r in range(config.rounds):
        progress(f"round {r + 1}/{config.rounds}: {config.count} applications, then the floor")
        p = await posflow_round(driver, f"R{r}", config.count)
        f = await floor_round(driver, f"floor-{r}", config.count, shape, floor_queue)
        progress(f"  posflow {p.per_second:.1f}/s, floor {f.per_second:.1f}/s")
        rounds.append((p, f))
    progress(f"other paths: {config.paths} applications each")
    bad = [plan("D", 9000 + i, bad=True) for i in range(config.paths)]
    second = [plan("V", 9500 + i, second_round=True) for i in range(config.paths)]
    await asyncio.gather(
        *(driver.refused_then_corrected(c) for c in bad), *(driver.second_round(c) for c in second)
    )
    await asyncio.gather(*(driver.finished(c.workflow_id) for c in (*bad, *second)))
    bad_histories = await driver.histories([c.workflow_id for c in bad])
    second_histories = await driver.histories([c.workflow_id for c in second])

    ratios = [p.per_second / f.per_second for p, f in rounds]
    cpu_ratios: dict[str, list[float]] = {}
    for p, f in rounds:
        pc, fc = p.cpu_ms_per_workflow(), f.cpu_ms_per_workflow()
        cpu_ratios.setdefault("worker", []).append(pc["worker_posflow"] / fc["worker_floor"])
        cpu_ratios.setdefault("server", []).append(pc["server"] / fc["server"])
    posflow_histories = [h for p, _ in rounds for h in p.histories]
    floor_histories = [h for _, f in rounds for h in f.histories]
    posflow_latency = update_latencies(posflow_histories)
    floor_latency = update_latencies(floor_histories)
    p95 = percentile(posflow_latency["arrived_started"], 0.95)
    floor_p95 = percentile(floor_latency["arrived_started"], 0.95)
    return {
        "floor_shape": {**shape.counts(), "agreeing_warmup_histories": f"{agreeing}/{total}"},
        "throughput": {
            "rounds": [
                {
                    "posflow_per_s": round(p.per_second, 2),
                    "floor_per_s": round(f.per_second, 2),
                    "ratio": round(p.per_second / f.per_second, 3),
                    "posflow_wall_s": round(p.wall_seconds, 1),
                    "floor_wall_s": round(f.wall_seconds, 1),
                    "posflow_cpu_ms_per_workflow": p.cpu_ms_per_workflow(),
                    "floor_cpu_ms_per_workflow": f.cpu_ms_per_workflow(),
                }
                for p, f in rounds
            ],
            "posflow_per_s": round(median(p.per_second for p, _ in rounds), 2),
            "floor_per_s": round(median(f.per_second for _, f in rounds), 2),
            "ratio": round(median(ratios), 3),
            "worker_cpu_ratio": round(median(cpu_ratios["worker"]), 2),
            "server_cpu_ratio": round(median(cpu_ratios["server"]), 2),
        },
        "cost": {
            "happy_path": cost_summary(posflow_histories),
            "documents_refused_then_corrected": cost_summary(bad_histories),
            "second_review_round": cost_summary(second_histories),
            "floor": cost_summary(floor_histories),
        },
        "latency": {
            **{
                f"{who}_{key}": summary_ms(values[key])
                for who, values in (("posflow", posflow_latency), ("floor", floor_latency))
                for key in ("arrived_started", "accepted_scheduled", "accepted_started")
            },
            "p95_ratio": round(p95 / floor_p95, 2) if floor_p95 else None,
        },
        "_shape": shape,
        "_last_posflow": rounds[-1][0].histories,
    }
