"""posflow as a cluster deployment runs it, proven with processes (`make test-topology`; left out
of `make test`; no container engine runs on these machines).

A throwaway PostgreSQL cluster (Debian's `postgresql` package) on loopback holds posflow's store:
the gateways' shared database and one database per sandbox service. A Temporal dev server, three
`posflow worker` processes, each service in its own process and two gateways, each its own
process, behind one round-robin address: every request, the services' callbacks and the workers'
snapshots included, goes to the next gateway in turn. A batch of applications goes through on
its own (the services decide by themselves, as under `posflow up`); one worker is stopped with
SIGTERM midway, as a deploy stops it. Every application must go live exactly once: one workflow
run, completed, one MID, one contract, one reservation, one went-live notice, and nothing lost or
sent twice (the audit of tests/faults_stack.py, on the services' PostgreSQL databases).

Throughput (applications per minute) is printed with the number of workers, for one worker and
for three; nothing is asserted about time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faults_stack import FINISHED, Planned, audit, finish, gather_merchants, plan
from tests.topology_stack import GATEWAYS, TopologyStack, postgres

pytestmark = [pytest.mark.topology, pytest.mark.timeout(900)]

CHANNELS = ("bank", "lakala", "tmall", "alipay")
FULFILMENT = ("mail", "on_site")
# Applications past these stages are far along: the worker is stopped once half the batch is.
LATE = {"contract", "preparing_devices", "delivering", "activating", "training", "going_live"}


def batch(prefix: str, size: int, seed: int) -> list[Planned]:
    """`size` applications that all go live: every channel, mail and on-site (Alipay's by mail
    only), one to three terminals, every fifth one a high-risk shop surveyed first."""
    return [
        plan(
            prefix,
            i,
            channel=CHANNELS[i % len(CHANNELS)],
            fulfilment="mail" if i % len(CHANNELS) == 3 else FULFILMENT[(i // 2) % 2],
            quantity=1 + i % 3,
            category="jewelry" if i % 5 == 4 else "retail",
            seed=seed + i,
        )
        for i in range(size)
    ]


async def run_batch(
    stack: TopologyStack, cases: list[Planned], midway: Any = None
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Start every merchant at once, call `midway` once half the batch is far along; returns
    the seconds from the first submission to the last application finished, and the rows."""
    began = time.monotonic()
    tasks = await gather_merchants(stack, cases)
    try:
        return await _through(stack, cases, tasks, began, midway)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _through(
    stack: TopologyStack,
    cases: list[Planned],
    tasks: list[asyncio.Task[None]],
    began: float,
    midway: Any,
) -> tuple[float, dict[str, dict[str, Any]]]:
    if midway is not None:
        ids = {c.id for c in cases}
        await stack.until(
            lambda rows: (
                sum(1 for i in ids if rows.get(i, {}).get("stage") in LATE | set(FINISHED))
                >= len(ids) // 2
            ),
            patience=300,
            what="half the batch past review",
        )
        await midway()
    await finish(tasks)
    rows = await stack.all_finished(cases, patience=400)
    return time.monotonic() - began, rows


def went_live_notices(stack: TopologyStack, cases: list[Planned]) -> Counter[str]:
    rows = stack.query(
        "notification", "SELECT application_id FROM notification_notices WHERE notice = 'went_live'"
    )
    ids = {c.id for c in cases}
    return Counter(r["application_id"] for r in rows if r["application_id"] in ids)


def check(stack: TopologyStack, cases: list[Planned], rows: dict[str, Any], result: Any) -> None:
    stages = Counter(rows[c.id]["stage"] for c in cases)
    assert stages == {"live": len(cases)}, stages
    assert result.findings == [], "\n".join(result.findings)
    mids = [rows[c.id]["mid"] for c in cases]
    assert all(mids) and len(set(mids)) == len(cases), mids
    notices = went_live_notices(stack, cases)
    assert notices == dict.fromkeys((c.id for c in cases), 1), notices


async def test_posflow_on_postgresql_with_workers_services_and_two_gateways_as_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    figures: dict[str, Any] = {}
    with postgres() as pg:
        stack = TopologyStack(tmp_path, "topology", pg=pg)
        try:
            await stack.start()  # one worker
            figures["stack_started_seconds"] = round(time.monotonic() - began, 1)

            # One worker.
            first = batch("ONE", 12, 7100)
            seconds, rows = await run_batch(stack, first)
            figures["one_worker"] = {
                "applications": len(first),
                "seconds": round(seconds, 1),
                "per_minute": round(len(first) / seconds * 60, 1),
            }
            check(stack, first, rows, await audit(stack, first))

            # Three workers; one of them stopped midway.
            await asyncio.gather(stack.add_worker(), stack.add_worker())
            second = batch("THREE", 20, 7200)
            stopped: dict[str, Any] = {}

            async def stop_one() -> None:
                at = time.monotonic()
                stopped["exit_code"] = await stack.stop_worker(stack.workers[1])
                stopped["seconds_to_exit"] = round(time.monotonic() - at, 1)
                stopped["stages_then"] = dict(
                    Counter(s for a, s in (await stack.stages()).items() if a.startswith("THREE"))
                )

            seconds, rows = await run_batch(stack, second, midway=stop_one)
            figures["three_workers_one_stopped_midway"] = {
                "applications": len(second),
                "seconds": round(seconds, 1),
                "per_minute": round(len(second) / seconds * 60, 1),
                "stopped_worker": stopped,
            }
            result = await audit(stack, second)
            check(stack, second, rows, result)
            assert stopped["exit_code"] is not None

            # Both gateways took a share of everything (callbacks, snapshots, merchants, reads).
            served = {g: stack.proxied[stack.url(g)] for g in GATEWAYS}
            assert all(n > 0 for n in served.values()), served
            figures["requests_per_gateway"] = served
            figures["audit_checks"] = result.counts["checks"]
            figures["callbacks"] = result.counts["callbacks"]
            figures["recovered_by_pull"] = result.counts["recovered_by_pull"]
            figures["workflow_tasks_timed_out"] = result.counts["workflow_tasks_timed_out"]
            figures["activities_rerun_after_timeout"] = result.counts[
                "activities_rerun_after_timeout"
            ]
        finally:
            await stack.stop()
    figures["test_seconds"] = round(time.monotonic() - began, 1)
    with capsys.disabled():
        print(f"\n[topology] {json.dumps(figures, ensure_ascii=False)}")
