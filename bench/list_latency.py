"""How fast the operations list and overview answer with many applications in the gateway's store.

1. Fills a fresh gateway store (SQLite in a temporary directory, or `--database-url`) with N
   applications (default 5,000) through the gateway's own write path: `Store.record_application`
   (what `POST /api/applications` keeps: the masked merchant file) and `Store.apply(Projection)`
   (the workflow's latest snapshot with its stage visits). Stages, deadlines, attention and review
   rounds come from a small simulation of each case over the last 60 days.
2. Times the store calls behind each page in this process, without HTTP (`store p50`).
3. Serves the real gateway app (`gateway.app.create_app`) with uvicorn on loopback in this
   process, as `posflow up` does, and times requests from a separate load process (httpx, one
   keep-alive connection per client): warm-up first, then sequential requests per scenario, and
   a few concurrent clients on the default list for throughput.

Prints figures and a verdict per scenario against the 200 ms target; asserts nothing, exits 0
unless something fails (a request that is not a 200, say).

    python -m bench.list_latency [--count 5000] [--requests 200] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import delete, func
from sqlmodel import col, select
from temporalio.client import Client

from cli.samples import sample
from gateway.app import GatewaySettings, create_app
from gateway.store import ApplicationRecord, ListFilter, StageVisitRecord, Store
from schemas.status import Attention, AttentionKind, Projection, Stage, StageVisit
from services.stack import serve, stop_all
from tests.servers import free_port
from workers.logging import masked

TARGET_MS = 200.0
ID_PREFIX = (
    "BENCH-"  # every application the benchmark writes; what it deletes from a given database
)
ROOT = Path(__file__).resolve().parents[1]
S = Stage

# --- the applications ------------------------------------------------------------------------

# How long a case stays in each stage (days, exponentially distributed) and the deadline the
# workflow sets on entering it (None: the stage has none). A deadline twice the mean leaves about
# one case in eight of those in the stage past it.
MEAN_DAYS: dict[Stage, float] = {
    S.COLLECTING_DOCUMENTS: 2.0,
    S.SITE_SURVEY: 2.0,
    S.IN_REVIEW: 1.5,
    S.CONTRACT: 2.0,
    S.PREPARING_DEVICES: 1.0,
    S.DELIVERING: 2.5,
    S.ACTIVATING: 1.0,
    S.TRAINING: 1.5,
    S.GOING_LIVE: 0.5,
    S.CLOSING: 0.1,
}
DEADLINE_DAYS: dict[Stage, float | None] = {
    S.COLLECTING_DOCUMENTS: 4.0,
    S.SITE_SURVEY: 4.0,
    S.IN_REVIEW: 3.0,
    S.CONTRACT: 4.0,
    S.PREPARING_DEVICES: None,
    S.DELIVERING: 5.0,
    S.ACTIVATING: 2.0,
    S.TRAINING: 3.0,
    S.GOING_LIVE: 1.0,
    S.CLOSING: None,
}
ATTENTION: dict[Stage, list[AttentionKind]] = {
    S.SITE_SURVEY: [AttentionKind.SITE_SURVEY_OVERDUE],
    S.IN_REVIEW: [AttentionKind.REVIEW_OVERDUE],
    S.DELIVERING: [AttentionKind.DELIVERY_FAILED, AttentionKind.DELIVERY_OVERDUE],
    S.ACTIVATING: [AttentionKind.ACTIVATION_OVERDUE, AttentionKind.TEST_TRANSACTION_DECLINED],
    S.TRAINING: [AttentionKind.TRAINING_OVERDUE],
}
# Where each case is headed; whether it got there by now depends on when it started.
OUTCOMES = [S.LIVE, S.REJECTED, S.EXPIRED, S.CANCELLED]
OUTCOME_WEIGHTS = [0.70, 0.10, 0.10, 0.10]
REASONS = {
    S.REJECTED: "risk review declined the application",
    S.EXPIRED: "documents not received before the deadline",
    S.CANCELLED: "withdrawn by the merchant",
}
HISTORY_DAYS = 60.0
NAME_FRAGMENT = "王伟"  # a legal representative's name inside individual merchants' shop names


def _route(rnd: random.Random, outcome: Stage, rounds: int, survey: bool) -> list[Stage]:
    """The stages a case goes through on its way to `outcome`."""
    stages = [S.COLLECTING_DOCUMENTS, *([S.SITE_SURVEY] if survey else []), S.IN_REVIEW]
    for _ in range(rounds - 1):  # more documents asked for: back to collecting, reviewed again
        stages += [S.COLLECTING_DOCUMENTS, S.IN_REVIEW]
    if outcome is S.REJECTED:
        return [*stages, S.CLOSING, S.REJECTED]
    stages += [
        S.CONTRACT,
        S.PREPARING_DEVICES,
        S.DELIVERING,
        S.ACTIVATING,
        S.TRAINING,
        S.GOING_LIVE,
    ]
    if outcome is S.LIVE:
        return [*stages, S.LIVE]
    if outcome is S.EXPIRED:  # the merchant never sent documents or never signed
        waits = [i for i, s in enumerate(stages) if s in (S.COLLECTING_DOCUMENTS, S.CONTRACT)]
        cut = rnd.choice(waits) + 1
    else:
        cut = rnd.randint(1, len(stages) - 1)
    return [*stages[:cut], S.CLOSING, outcome]


@dataclass(frozen=True)
class Generated:
    record: ApplicationRecord  # as `POST /api/applications` keeps it
    snapshot: Projection  # the workflow's latest


def generate(index: int, rnd: random.Random, now: datetime) -> Generated:
    """One application and where its case stands `now`."""
    app = sample(rnd.randrange(1_000_000)).application
    app = app.model_copy(
        update={"application_id": f"{ID_PREFIX}{index:05d}{rnd.getrandbits(24):06X}"}
    )
    rounds = rnd.choices([1, 2, 3], [0.75, 0.18, 0.07])[0]
    outcome = rnd.choices(OUTCOMES, OUTCOME_WEIGHTS)[0]
    route = _route(rnd, outcome, rounds, survey=rnd.random() < 0.3)
    started = now - timedelta(days=rnd.uniform(0, HISTORY_DAYS))
    moment = started
    visits: list[StageVisit] = []
    for stage in route:
        visits.append(StageVisit(stage=stage, entered_at=moment))
        if stage.finished:
            break
        stay = timedelta(days=rnd.expovariate(1 / MEAN_DAYS[stage]))
        if moment + stay > now:
            break  # still in this stage
        moment += stay
    stage, entered = visits[-1].stage, visits[-1].entered_at
    ended = entered if stage.finished else None
    deadline_days = None if ended else DEADLINE_DAYS[stage]
    deadline = entered + timedelta(days=deadline_days) if deadline_days else None
    attention = None
    if ended is None:
        overdue = deadline is not None and deadline < now
        if rnd.random() < (0.5 if overdue else 0.04):
            kinds = ATTENTION.get(stage, [AttentionKind.STEP_FAILED])
            since = deadline if overdue and deadline else entered + (now - entered) / 2
            attention = Attention(
                kind=rnd.choice(kinds),
                step=stage.value,
                reason=f"{stage.value}: no answer from the service after 30 attempts",
                since=since,
                retryable=True,
            )
    reached_contract = S.CONTRACT in (v.stage for v in visits)
    snapshot = Projection(
        application_id=app.application_id,
        workflow_id=app.workflow_id,
        version=len(visits) + rnd.randint(0, 3),
        channel=app.channel.value,
        merchant_type=app.merchant.merchant_type.value,
        merchant_name=app.merchant.name,
        fulfilment=app.fulfilment.value,
        stage=stage,
        stage_entered_at=entered,
        stage_deadline=deadline,
        review_round=max(1, sum(v.stage is S.IN_REVIEW for v in visits)),
        attention=attention,
        mid=f"822{rnd.randrange(10**12):012d}" if reached_contract else None,
        started_at=started,
        ended_at=ended,
        outcome_reason=REASONS.get(stage, ""),
        visits=visits,
    )
    record = ApplicationRecord(
        application_id=app.application_id,
        workflow_id=app.workflow_id,
        channel=app.channel.value,
        merchant_type=app.merchant.merchant_type.value,
        merchant_name=app.merchant.name,
        stage=S.COLLECTING_DOCUMENTS.value,
        application=json.dumps(masked(app.model_dump(mode="json")), ensure_ascii=False),
    )
    return Generated(record, snapshot)


@dataclass
class Filled:
    count: int = 0
    visits: int = 0
    seconds_record: float = 0.0
    seconds_apply: float = 0.0
    seconds_total: float = 0.0
    stages: Counter[str] = field(default_factory=Counter)
    overdue: int = 0
    attention: int = 0
    rounds: Counter[int] = field(default_factory=Counter)
    ids: list[str] = field(default_factory=list)


def fill(store: Store, count: int, seed: int, now: datetime) -> Filled:
    rnd = random.Random(seed)
    filled = Filled()
    begun = time.perf_counter()
    for index in range(count):
        generated = generate(index, rnd, now)
        snap = generated.snapshot
        before = time.perf_counter()
        store.record_application(generated.record)
        between = time.perf_counter()
        applied, _ = store.apply(snap)
        filled.seconds_record += between - before
        filled.seconds_apply += time.perf_counter() - between
        if not applied:
            raise RuntimeError(f"snapshot of {snap.application_id} not applied")
        filled.count += 1
        filled.visits += len(snap.visits)
        filled.stages[snap.stage.value] += 1
        filled.overdue += bool(
            snap.ended_at is None and snap.stage_deadline and snap.stage_deadline < now
        )
        filled.attention += snap.attention is not None
        filled.rounds[snap.review_round] += 1
        filled.ids.append(snap.application_id)
    filled.seconds_total = time.perf_counter() - begun
    return filled


# --- the scenarios ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    concurrency: int = 1
    requests: int = 200
    # Fetched in a loop by one more client while this scenario is timed (not itself timed).
    background: tuple[str, dict[str, str]] | None = None
    # The store call behind the page, timed in process: a list filter or the overview's days.
    page: dict[str, Any] | None = None
    overview_days: float | None = None


def scenarios(count: int, exact_id: str, requests: int, concurrency: int) -> list[Scenario]:
    deep = 4000 if count >= 4050 else max(0, count * 4 // 5)
    listed: list[tuple[str, dict[str, str]]] = [
        ("list: default (50 by deadline)", {}),
        ("list: stage=in_review", {"stage": "in_review"}),
        ("list: overdue=true", {"overdue": "true"}),
        ("list: needs_attention=true", {"needs_attention": "true"}),
        ("list: channel=bank+enterprise", {"channel": "bank", "merchant_type": "enterprise"}),
        ("list: q=<merchant name fragment>", {"q": NAME_FRAGMENT}),
        ("list: q=<exact application id>", {"q": exact_id}),
        (f"list: deep page offset={deep}", {"offset": str(deep)}),
    ]
    out = [
        Scenario(name, "/api/applications", params, requests=requests, page=params)
        for name, params in listed
    ]
    out += [
        Scenario(
            "overview: /api/overview?days=30",
            "/api/overview",
            {"days": "30"},
            requests=requests,
            overview_days=30,
        ),
        Scenario("html: /ui/applications", "/ui/applications", requests=requests, page={}),
        Scenario("html: /ui?days=30", "/ui", {"days": "30"}, requests=requests, overview_days=30),
        Scenario(
            f"list: default, {concurrency} concurrent",
            "/api/applications",
            concurrency=concurrency,
            requests=requests * 2,
        ),
        Scenario(
            "list: default, /ui?days=30 in a loop",
            "/api/applications",
            requests=requests,
            background=("/ui", {"days": "30"}),
        ),
    ]
    return out


def time_store(store: Store, scenario: Scenario, reps: int, budget: float) -> float | None:
    """Median ms of the store call behind `scenario`, in this process (no HTTP, no rendering)."""
    call: Callable[[], object]
    if scenario.page is not None:
        wanted = ListFilter.model_validate(scenario.page)
        call = lambda: store.page(wanted)  # noqa: E731
    elif scenario.overview_days is not None:
        days = scenario.overview_days
        call = lambda: store.overview(datetime.now(UTC) - timedelta(days=days))  # noqa: E731
    else:
        return None
    call()  # warm
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < reps and time.perf_counter() < deadline:
        begun = time.perf_counter()
        call()
        times.append((time.perf_counter() - begun) * 1000)
    return statistics.median(times)


# --- the load process ------------------------------------------------------------------------


async def drive(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Run every scenario against `plan["base_url"]`; latencies in ms, as measured by httpx."""
    results: list[dict[str, Any]] = []
    widest = max(s["concurrency"] for s in plan["scenarios"])
    limits = httpx.Limits(max_connections=widest, max_keepalive_connections=widest)
    async with httpx.AsyncClient(base_url=plan["base_url"], timeout=60, limits=limits) as http:

        async def one(path: str, params: dict[str, str]) -> tuple[float, httpx.Response]:
            begun = time.perf_counter()
            response = await http.get(path, params=params)
            elapsed = (time.perf_counter() - begun) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"GET {path} {params}: {response.status_code} {response.text}")
            return elapsed, response

        for s in plan["scenarios"]:
            path, params = s["path"], s["params"]
            for _ in range(plan["warmup"]):
                await one(path, params)
            latencies: list[float] = []
            sizes: list[int] = []
            total: list[str | None] = []
            budget = {"left": s["requests"], "until": time.perf_counter() + plan["seconds"]}

            async def client(
                path: str,
                params: dict[str, str],
                budget: dict[str, Any],
                latencies: list[float],
                sizes: list[int],
                total: list[str | None],
            ) -> None:
                while budget["left"] > 0 and time.perf_counter() < budget["until"]:
                    budget["left"] -= 1
                    elapsed, response = await one(path, params)
                    latencies.append(elapsed)
                    sizes.append(len(response.content))
                    total.append(response.headers.get("X-Total-Count"))

            done = asyncio.Event()

            async def loop(path: str, params: dict[str, str], done: asyncio.Event) -> int:
                fetched = 0
                while not done.is_set():
                    await one(path, params)
                    fetched += 1
                return fetched

            behind = s["background"]
            looping = asyncio.create_task(loop(behind[0], behind[1], done)) if behind else None
            if looping is not None:
                await asyncio.sleep(0.05)  # under way before the timed requests start
            window = [time.monotonic()]
            begun = time.perf_counter()
            await asyncio.gather(
                *(
                    client(path, params, budget, latencies, sizes, total)
                    for _ in range(s["concurrency"])
                )
            )
            wall = time.perf_counter() - begun
            window.append(time.monotonic())
            done.set()
            if looping is not None:
                await looping
            results.append(
                {
                    "name": s["name"],
                    "latencies": latencies,
                    "wall": wall,
                    "window": window,
                    "bytes": statistics.median(sizes),
                    "total": total[-1],
                    "cut_short": budget["left"] > 0,
                }
            )
    return results


def drive_main() -> None:
    plan = json.loads(sys.stdin.read())
    results = asyncio.run(drive(plan))
    sys.stdout.write(json.dumps({"results": results}) + "\n")


# --- the gateway process's garbage collections ---------------------------------------------


@dataclass
class Collections:
    """Every garbage collection in this process while it serves: (start, end, generation), on
    the monotonic clock, which the load process shares."""

    pauses: list[tuple[float, float, int]] = field(default_factory=list)
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.monotonic()
        else:
            self.pauses.append((self._started, time.monotonic(), info["generation"]))

    def within(self, start: float, end: float) -> tuple[float, float, int]:
        """Total and longest pause (ms) and how many full (generation 2) collections."""
        inside = [(b - a, g) for a, b, g in self.pauses if a >= start and b <= end]
        total = sum(d for d, _ in inside) * 1000
        longest = max((d for d, _ in inside), default=0.0) * 1000
        return total, longest, sum(g == 2 for _, g in inside)


# --- reporting -------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))
    return ordered[index]


def peak_rss_mib(who: int) -> float:
    peak = resource.getrusage(who).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def verdict(p50: float, p99: float) -> str:
    if p99 < TARGET_MS:
        return f"meets the {TARGET_MS:.0f} ms target (p99 {p99:.1f} ms)"
    if p50 < TARGET_MS:
        return f"typical under {TARGET_MS:.0f} ms (p50 {p50:.1f}) but p99 {p99:.1f} ms is over"
    return f"MISSES the {TARGET_MS:.0f} ms target (p50 {p50:.1f} ms)"


def report(
    plan: Sequence[Scenario],
    results: list[dict[str, Any]],
    store_ms: dict[str, float | None],
    collections: Collections,
) -> None:
    header = (
        f"{'scenario':<40} {'n':>4} {'rows':>5} {'KiB':>6} {'p50':>7} {'p90':>7} {'p99':>7}"
        f" {'max':>7} {'req/s':>7} {'store':>7} {'gc/req':>7} {'gc max':>7} {'full':>4}"
    )
    print(header)
    print("-" * len(header))
    verdicts: list[str] = []
    by_name = {s.name: s for s in plan}
    for result in results:
        lat: list[float] = result["latencies"]
        p50, p90, p99 = (percentile(lat, q) for q in (0.5, 0.9, 0.99))
        store = store_ms.get(result["name"])
        gc_total, gc_longest, full = collections.within(*result["window"])
        print(
            f"{result['name']:<40} {len(lat):>4} {result['total'] or '':>5}"
            f" {result['bytes'] / 1024:>6.1f} {p50:>7.1f} {p90:>7.1f} {p99:>7.1f} {max(lat):>7.1f}"
            f" {len(lat) / result['wall']:>7.1f} {'' if store is None else f'{store:.1f}':>7}"
            f" {gc_total / len(lat):>7.1f} {gc_longest:>7.1f} {full:>4}"
        )
        short = " (cut short by the time budget)" if result["cut_short"] else ""
        scenario = by_name[result["name"]]
        clients = scenario.concurrency
        note = f" with {clients} clients at once" if clients > 1 else ""
        if scenario.background is not None:
            note = f" while another client fetches {scenario.background[0]} without pause"
        verdicts.append(f"verdict  {result['name']:<40} {verdict(p50, p99)}{note}{short}")
    print(
        "\nms, measured by the load process around each request (HTTP over loopback included);"
        "\nrows: X-Total-Count; KiB: median body; store: median ms of the store call behind the"
        "\npage, in the gateway process without HTTP or rendering; gc/req, gc max: garbage"
        "\ncollection pauses in the gateway process while the scenario ran (ms per timed request,"
        "\nlongest single pause), full: how many were full (generation 2) collections."
    )
    print()
    for line in verdicts:
        print(line)


# --- the run ---------------------------------------------------------------------------------


def _clean_external(store: Store) -> None:
    with store.session() as session:
        for table in (StageVisitRecord, ApplicationRecord):
            session.execute(delete(table).where(col(table.application_id).startswith(ID_PREFIX)))
        session.commit()


def _keep(home: str) -> str:
    """Move the temporary store out of the directory about to be removed."""
    kept = os.path.join(tempfile.mkdtemp(prefix="posflow-bench-kept-"), "gateway.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{home}/gateway.db{suffix}"):
            os.replace(f"{home}/gateway.db{suffix}", f"{kept}{suffix}")
    return kept


async def run(args: argparse.Namespace) -> None:
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="posflow-bench-") as home:
        url = args.database_url or f"sqlite:///{home}/gateway.db"
        shown = url.split("@")[-1]  # no credentials in the output
        engine = f"SQLite {sqlite3.sqlite_version}" if url.startswith("sqlite") else "store"
        print(
            f"posflow list/overview latency, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
            f"\nPython {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs,"
            f" {engine}: {shown}\n"
        )
        client = await Client.connect("127.0.0.1:1", lazy=True)  # never called by these pages
        app = create_app(client, GatewaySettings(database_url=url))
        store: Store = app.state.store
        with store.session() as session:
            present = session.exec(select(func.count()).select_from(ApplicationRecord)).one()
        if present:
            raise SystemExit(f"the gateway store at {shown} already holds {present} applications")
        try:
            await measure(args, store, app)
        finally:
            if args.database_url and not args.keep:
                _clean_external(store)
            store.engine.dispose()
            if args.keep and not args.database_url:
                print(f"\nstore kept at {_keep(home)}")
    print(
        f"\npeak RSS: gateway process (fill + serving)"
        f" {peak_rss_mib(resource.RUSAGE_SELF):.0f} MiB,"
        f" load process {peak_rss_mib(resource.RUSAGE_CHILDREN):.0f} MiB;"
        f" whole run {time.perf_counter() - wall:.0f} s"
    )


async def measure(args: argparse.Namespace, store: Store, app: Any) -> None:
    now = datetime.now(UTC)
    filled = fill(store, args.count, args.seed, now)
    in_flight = sum(n for s, n in filled.stages.items() if not Stage(s).finished)
    print(
        f"filled {filled.count} applications with {filled.visits} stage visits in"
        f" {filled.seconds_total:.1f} s: {filled.count / filled.seconds_total:.0f} applications/s"
        f"\n  (each: record_application {1000 * filled.seconds_record / filled.count:.2f} ms +"
        f" apply(Projection) {1000 * filled.seconds_apply / filled.count:.2f} ms, one commit each)"
        f"\n  in flight {in_flight}, overdue {filled.overdue}, needing attention"
        f" {filled.attention}; review rounds "
        + ", ".join(f"{r}: {n}" for r, n in sorted(filled.rounds.items()))
        + "\n  stages: "
        + ", ".join(f"{s} {n}" for s, n in sorted(filled.stages.items(), key=lambda i: -i[1]))
    )
    plan = scenarios(args.count, filled.ids[len(filled.ids) // 2], args.requests, args.concurrency)

    print("\ntiming the store calls in process...", flush=True)
    store_ms = {s.name: time_store(store, s, reps=30, budget=2.0) for s in plan}

    collections = Collections()
    served = await serve("gateway", app, free_port())
    gc.callbacks.append(collections)
    try:
        print(
            f"serving the gateway at {served.url} (uvicorn, this process); load from a separate"
            f" process (httpx), {args.warmup} warm-up requests per scenario, then {args.requests}"
            f" sequential ({args.requests * 2} over {args.concurrency} clients for the concurrent"
            f" one), at most {args.seconds:.0f} s each\n",
            flush=True,
        )
        body = {
            "base_url": served.url,
            "warmup": args.warmup,
            "seconds": args.seconds,
            "scenarios": [
                {
                    "name": s.name,
                    "path": s.path,
                    "params": s.params,
                    "concurrency": s.concurrency,
                    "requests": s.requests,
                    "background": s.background,
                }
                for s in plan
            ],
        }
        load = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.list_latency",
            "--drive",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await load.communicate(json.dumps(body).encode())
        if load.returncode != 0:
            raise RuntimeError(f"the load process failed ({load.returncode})")
    finally:
        gc.callbacks.remove(collections)
        await stop_all([served])
    results = json.loads(out.decode().strip().splitlines()[-1])["results"]
    report(plan, results, store_ms, collections)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.list_latency", description=__doc__)
    parser.add_argument("--count", type=int, default=5000, help="applications in the store")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per scenario")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per scenario")
    parser.add_argument("--concurrency", type=int, default=8, help="clients in the concurrent one")
    parser.add_argument("--seconds", type=float, default=10.0, help="time budget per scenario")
    parser.add_argument("--seed", type=int, default=1, help="of the generated applications")
    parser.add_argument(
        "--database-url",
        default="",
        help="an empty gateway store to fill instead of a temporary SQLite file "
        "(e.g. postgresql+psycopg://...); the benchmark's rows are deleted afterwards",
    )
    parser.add_argument("--keep", action="store_true", help="keep the filled store afterwards")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        drive_main()
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
