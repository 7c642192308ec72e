"""The gateway's snapshots ride with the steps, and search attributes are written once per wait
(the `snapshots-ride-with-steps` patch): what an application costs, and that the gateway's pages
and Temporal's visibility still see every stage."""

from __future__ import annotations

from temporalio.api.enums.v1 import EventType

from activities import catalog as act
from bench.harness.actions import cost
from schemas.messages import ReviewOutcome
from schemas.status import Stage
from tests.scenario import HAPPY_PATH, Bench, Run
from workflows import search_attributes as sa


async def go_live(run: Run) -> None:
    await run.submit()
    await run.decide(ReviewOutcome.APPROVED)
    await run.sign_and_pay()
    await run.delivery()
    await run.activate_all()
    await run.train()
    assert (await run.outcome()).stage is Stage.LIVE


async def scheduled(run: Run) -> list[str]:
    history = await run.handle.fetch_history()
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


async def test_snapshots_ride_with_steps_and_the_gateway_sees_every_stage(bench: Bench) -> None:
    run = await bench.start()
    await go_live(run)

    mine = [p for p in bench.services.projections if p.application_id == run.app.application_id]
    # Every stage reached the gateway's pages, in order, and the last snapshot is the end.
    assert list(dict.fromkeys(p.stage for p in mine)) == list(HAPPY_PATH)
    assert [p.version for p in mine] == sorted(p.version for p in mine)
    latest = bench.services.latest_projection(run.app.application_id)
    assert latest.stage is Stage.LIVE and latest.mid is not None
    assert [v.stage for v in latest.visits] == list(HAPPY_PATH)
    # Only the snapshots no step could carry went alone: the review's deadline once the case
    # was opened, the delivery's once the shipment was created, and going live.
    assert (await scheduled(run)).count(act.PROJECT_STATUS) == 3

    history = await run.handle.fetch_history()
    found = cost(history)
    assert found.actions["search_attribute_upsert"] == 6  # one per wait, not one per change
    assert found.actions["activity"] == 14
    assert found.total_actions == 34
    assert await run.search_attribute(sa.STAGE.name) == "live"


async def test_a_snapshot_the_worker_could_not_deliver_is_sent_by_the_workflow(
    bench: Bench,
) -> None:
    bench.services.projection_failures = 3  # the gateway is down for the first deliveries
    run = await bench.start()
    await go_live(run)

    mine = [p for p in bench.services.projections if p.application_id == run.app.application_id]
    latest = bench.services.latest_projection(run.app.application_id)
    assert latest.stage is Stage.LIVE
    assert [v.stage for v in latest.visits] == list(HAPPY_PATH)
    assert Stage.COLLECTING_DOCUMENTS in {p.stage for p in mine}
    # The first step's snapshot did not reach the gateway, so the workflow sent it alone.
    assert (await scheduled(run)).count(act.PROJECT_STATUS) > 3


async def test_visibility_has_the_stage_once_its_first_steps_are_done(bench: Bench) -> None:
    """While the stage's first step runs, the gateway's pages already show the stage (its
    snapshot rode with the step) and Temporal's visibility still the one before; once the
    workflow waits for the world, both agree."""
    run = await bench.start()
    await run.submit()
    gate = bench.services.hold(act.RESERVE_TERMINALS)
    await run.decide(ReviewOutcome.APPROVED)
    await run.sign_and_pay()
    await bench.services.started[act.RESERVE_TERMINALS].wait()

    latest = bench.services.latest_projection(run.app.application_id)
    assert latest.stage is Stage.PREPARING_DEVICES
    assert (await run.status()).stage is Stage.PREPARING_DEVICES
    assert await run.search_attribute(sa.STAGE.name) == "contract"

    gate.set()
    assert await run.written(sa.STAGE.name, "delivering") == "delivering"
    assert bench.services.latest_projection(run.app.application_id).stage is Stage.DELIVERING
    assert await run.search_attribute(sa.STAGE_DEADLINE.name) is not None


async def test_a_case_that_ends_before_going_live_ends_in_visibility_too(bench: Bench) -> None:
    """The last stage's attributes are written before the workflow completes, even when its
    snapshot rode with the last notice and nothing was left for the projector to send."""
    run = await bench.start()
    await run.submit()
    await run.cancel()
    outcome = await run.outcome()

    assert outcome.stage is Stage.CANCELLED
    assert await run.search_attribute(sa.STAGE.name) == "cancelled"
    assert bench.services.latest_projection(run.app.application_id).stage is Stage.CANCELLED
