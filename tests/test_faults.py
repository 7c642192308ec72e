"""Fault tests on a real stack (`make test-faults`; left out of `make test`): crashes and outages
must neither lose nor duplicate a case, whatever order the world answers in.

1. The worker process is SIGKILLed again and again, a new one started each time, while
   applications move through every stage on their own.
2. The Temporal dev server is stopped and started again on its data file, twice, mid-run.
3. The device service is down for longer than a step's retries: the step parks, the service
   comes back, an admin `retry` through the gateway, and the case goes live.

Each scenario checks every application's outcome against what the sandbox's rules give it
without faults, then audits the services' own databases and outboxes and the gateway's messages
(tests/faults_stack.py), prints its figures and keeps them in artifacts/faults.json.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faults_stack import (
    FAULT_POLICY,
    FINISHED,
    Audit,
    FaultStack,
    Planned,
    audit,
    finish,
    gather_merchants,
    plan,
    record,
)

pytestmark = pytest.mark.faults


def mixed_cases(prefix: str) -> list[Planned]:
    """Mail and on-site, individual and enterprise (one on a legacy licence), every channel
    (with and without a deposit), one to three terminals, a high-risk shop surveyed first, one
    sent back for new photos, and one prohibited (rejected, then compensated)."""
    return [
        plan(prefix, 1, channel="alipay", fulfilment="mail", quantity=1, seed=7001),
        plan(prefix, 2, channel="bank", fulfilment="on_site", quantity=3, seed=7000),
        plan(prefix, 3, channel="lakala", fulfilment="on_site", quantity=2, seed=7003),
        plan(prefix, 4, channel="bank", fulfilment="mail", quantity=1, category="jewelry"),
        plan(prefix, 5, channel="tmall", fulfilment="mail", quantity=2, more_info=True),
        plan(prefix, 6, channel="lakala", fulfilment="mail", quantity=1, category="prepaid_cards"),
        plan(prefix, 7, channel="lakala", fulfilment="mail", quantity=1, seed=7021),
        plan(prefix, 8, channel="tmall", fulfilment="on_site", quantity=1, seed=7012),
        plan(prefix, 9, channel="bank", fulfilment="mail", quantity=3, seed=7004),
        plan(prefix, 10, channel="tmall", fulfilment="on_site", quantity=2, category="jewelry"),
    ]


# Started in waves, so that early stages are still occupied while the first wave is far along.
WAVES = ((0.0, slice(0, 4)), (12.0, slice(4, 7)), (24.0, slice(7, 10)))


def summarise(
    scenario: str,
    cases: list[Planned],
    rows: dict[str, dict[str, Any]],
    result: Audit,
    began: float,
    **figures: Any,
) -> dict[str, Any]:
    outcomes = Counter(rows[c.id]["stage"] for c in cases)
    summary = {
        "applications": len(cases),
        "outcomes": dict(outcomes),
        "expected": dict(Counter(c.expected for c in cases)),
        "terminals": result.counts["terminals"],
        "duplicates_or_losses_found": len(result.findings),
        "findings": result.findings,
        "checks": result.counts["checks"],
        "callbacks": result.counts["callbacks"],
        "callback_attempts": result.counts["callback_attempts"],
        "callbacks_refused_for_good": result.counts["callbacks_refused"],
        "scans_refused": result.counts["scans_refused"],
        "gateway_refusals": result.counts["gateway_refusals"],
        "recovered_by_pull": result.counts["recovered_by_pull"],
        "workflow_tasks_timed_out": result.counts["workflow_tasks_timed_out"],
        "activities_rerun_after_timeout": result.counts["activities_rerun_after_timeout"],
        "activities_rerun_after_error": result.counts["activities_rerun_after_error"],
        "seconds": round(time.monotonic() - began, 1),
        "cases": [c.describe() for c in cases],
        **figures,
    }
    record(scenario, summary)
    return summary


async def summarise_and_show(
    stack: FaultStack,
    capsys: pytest.CaptureFixture[str],
    title: str,
    scenario: str,
    cases: list[Planned],
    rows: dict[str, dict[str, Any]],
    result: Audit,
    began: float,
    **figures: Any,
) -> None:
    histories = await stack.keep_histories(cases, result.findings)
    summary = summarise(scenario, cases, rows, result, began, histories=histories, **figures)
    show(capsys, title, summary)


def show(capsys: pytest.CaptureFixture[str], scenario: str, summary: dict[str, Any]) -> None:
    brief = {
        k: v for k, v in summary.items() if k not in ("cases", "kills", "restarts", "findings")
    }
    with capsys.disabled():
        print(f"\n[faults] {scenario}: {json.dumps(brief, ensure_ascii=False)}")
        for finding in summary["findings"]:
            print(f"[faults]   FINDING {finding}")


@pytest.fixture
async def fault_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    stack = FaultStack(tmp_path, request.node.name.removeprefix("test_")[:24])
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


# --- 1. SIGKILL the worker in every stage ---------------------------------------------------

MAX_KILLS = 40
KILL_PHASE = 150.0  # seconds at most of killing; then the last worker is left to finish


@pytest.mark.timeout(420)
async def test_sigkill_the_worker_in_every_stage(
    fault_stack: FaultStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, rng, began = fault_stack, random.Random(20260601), time.monotonic()
    cases = mixed_cases("K")
    merchants: list[asyncio.Task[None]] = []
    waves = list(WAVES)
    kills: list[dict[str, Any]] = []
    hit: Counter[str] = Counter()
    while len(kills) < MAX_KILLS and time.monotonic() - began < KILL_PHASE:
        while waves and time.monotonic() - began >= waves[0][0]:
            merchants += await gather_merchants(stack, cases[waves.pop(0)[1]], stagger=0.3)
        # Each worker lives 1.5 to 3 s, or is killed after 1 s if an application has just
        # entered a stage no kill has landed in yet (the short ones run a step or two).
        assert stack.worker is not None
        alive_since = stack.worker.started
        at_latest = alive_since + rng.uniform(1.5, 3.0)
        while True:
            stages = await stack.stages()
            in_flight = {k: v for k, v in stages.items() if v not in FINISHED}
            now = time.monotonic()
            fresh = set(in_flight.values()) - set(hit)
            if now >= at_latest or (fresh and now >= alive_since + 1.0):
                break
            await asyncio.sleep(0.1)
        if not waves and not in_flight and len(stages) == len(cases):
            break
        await stack.kill_worker()
        hit.update(in_flight.values())
        kills.append(
            {"kill": len(kills) + 1, "at": round(time.monotonic() - began, 1), "stages": in_flight}
        )
        await stack.start_worker()
    await finish(merchants)
    rows = await stack.all_finished(cases, patience=200)
    result = await audit(stack, cases)
    await summarise_and_show(
        stack,
        capsys,
        "SIGKILL the worker",
        "sigkill_worker",
        cases,
        rows,
        result,
        began,
        kills_done=len(kills),
        workers_started=stack.workers_started,
        stages_hit=dict(hit),
        kills=kills,
    )
    assert result.findings == []
    assert [rows[c.id]["stage"] for c in cases] == [c.expected for c in cases]
    # Kills landed while applications waited in every stage they wait in, and inside steps.
    assert {
        "collecting_documents",
        "in_review",
        "contract",
        "delivering",
        "activating",
        "training",
    } <= set(hit), hit


# --- 2. stop and restart the dev server on its data file ------------------------------------


@pytest.mark.timeout(360)
async def test_restart_the_dev_server_on_its_data_file(
    fault_stack: FaultStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, began = fault_stack, time.monotonic()
    cases = mixed_cases("S")
    merchants: list[asyncio.Task[None]] = []
    restarts: list[dict[str, Any]] = []
    # (when after the wave starts, how long the server stays down, SIGKILL instead of SIGTERM)
    outages = ((1.0, 3.0, False), (2.0, 4.0, True), (1.5, 6.0, False))
    for (_, wave), (after, down, crash) in zip(WAVES, outages, strict=True):
        merchants += await gather_merchants(stack, cases[wave], stagger=0.3)
        await asyncio.sleep(after)
        stages = await stack.stages()
        outage = await stack.restart_server(down, crash=crash)
        # The worker keeps its process and reconnects by itself; only if it gave up is a new
        # one started (and counted).
        await asyncio.sleep(3)
        survived = stack.worker_alive()
        if not survived:
            await stack.start_worker()
        restarts.append(
            {
                "at": round(time.monotonic() - began, 1),
                "how": "SIGKILL" if crash else "SIGTERM",
                "unavailable_seconds": round(outage, 1),
                "worker_survived": survived,
                "stages": {k: v for k, v in stages.items() if v not in FINISHED},
            }
        )
    await finish(merchants)
    rows = await stack.all_finished(cases, patience=200)
    result = await audit(stack, cases)
    hit = Counter(stage for r in restarts for stage in r["stages"].values())
    await summarise_and_show(
        stack,
        capsys,
        "restart the dev server",
        "restart_dev_server",
        cases,
        rows,
        result,
        began,
        restarts_done=len(restarts),
        workers_started=stack.workers_started,
        stages_hit=dict(hit),
        restarts=restarts,
    )
    assert result.findings == []
    assert [rows[c.id]["stage"] for c in cases] == [c.expected for c in cases]


# --- 3. a service down for longer than the step's retries -----------------------------------

# About 5 s of retries (0.2 + 0.4 + 0.8 + 1 + 1 + 1 + 1): the device service stays down longer.
SHORT_RETRIES = {**FAULT_POLICY, "activity_max_attempts": 8}


@pytest.mark.timeout(300)
async def test_a_service_down_past_the_retries_parks_then_retry_goes_live(
    fault_stack: FaultStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, began = fault_stack, time.monotonic()
    early = plan("D", 4, channel="tmall", fulfilment="mail", quantity=2, policy=SHORT_RETRIES)
    cases = [
        plan("D", 1, channel="bank", fulfilment="mail", quantity=2, policy=SHORT_RETRIES),
        plan("D", 2, channel="tmall", fulfilment="on_site", quantity=3, policy=SHORT_RETRIES),
        plan("D", 3, channel="lakala", fulfilment="mail", quantity=1, policy=SHORT_RETRIES),
        early,
    ]
    ids = {c.id for c in cases}
    # One application has its terminals (MID and TIDs) when the service goes down: it parks
    # on its activation codes; the others park on their reservation.
    await finish(await gather_merchants(stack, [early]))
    await stack.until(
        lambda rows: rows.get(early.id, {}).get("stage") == "delivering",
        patience=60,
        what=f"{early.id} has its terminals",
        poll=0.05,  # before its delivery comes back (a second) and it asks for its codes
    )
    await stack.stop_service("device")
    down_at = time.monotonic()
    await finish(await gather_merchants(stack, cases[:3], stagger=0.5))

    def all_parked(rows: dict[str, dict[str, Any]]) -> bool:
        return all(rows.get(i, {}).get("needs_attention") for i in ids)

    parked = await stack.until(all_parked, patience=120, what="every application parked")
    statuses = {i: await stack.status(i) for i in ids}
    steps = {i: statuses[i]["attention"]["step"] for i in ids}
    # A retry while the service is still down runs the step's retries again and parks again.
    first = cases[0].id
    early_retry = await stack.admin_retry(first, f"early-retry-{first}")
    assert early_retry.status_code == 200 and early_retry.json()["outcome"] == "applied"
    await stack.until(
        lambda rows: not rows[first]["needs_attention"], patience=30, what=f"{first} retrying"
    )
    await stack.until(all_parked, patience=60, what=f"{first} parked again")
    await stack.start_service("device")
    down_for = time.monotonic() - down_at
    for case in cases:
        response = await stack.admin_retry(case.id, f"retry-{case.id}")
        assert response.status_code == 200 and response.json()["outcome"] == "applied", (
            response.text
        )
        again = await stack.admin_retry(case.id, f"retry-{case.id}")  # a double click
        assert again.status_code == 200 and again.json()["outcome"] == "duplicate", again.text
    rows = await stack.all_finished(cases, patience=150)
    result = await audit(stack, cases)
    await summarise_and_show(
        stack,
        capsys,
        "device service down, then admin retry",
        "service_down_then_retry",
        cases,
        rows,
        result,
        began,
        service="device",
        down_seconds=round(down_for, 1),
        parked={
            i: {"stage": parked[i]["stage"], "kind": parked[i]["attention_kind"], "step": steps[i]}
            for i in ids
        },
        admin_retries=len(cases) + 1,
    )
    assert result.findings == []
    assert [rows[c.id]["stage"] for c in cases] == ["live"] * len(cases)
    assert steps[early.id] == "issue_activation_codes", steps
    assert {steps[c.id] for c in cases[:3]} == {"reserve_terminals"}, steps
