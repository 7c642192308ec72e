"""Reset to the start of a stage, on a real dev server (the test server has no reset): a
workflow failed by a broken version runs that stage again on the fixed code, keeps what came
before, and every step comes out with the same idempotency key, so nothing happens twice."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import catalog as act
from schemas.status import OnboardingStart, Outcome, Stage
from tests.conftest import _binary
from tests.factories import individual_application
from tests.scenario import Run, fast_policy
from tests.standins import StandIns
from workers.admin import ResetRefused, reset_to_stage
from workers.temporal import INTERCEPTORS, build_worker, data_converter, register_search_attributes
from workflows.onboarding import PosOnboarding


@workflow.defn(name="PosOnboarding", sandboxed=False)
class BrokenOnboarding(PosOnboarding):
    """A bad deploy: delivery fails the whole workflow."""

    @workflow.run
    async def run(self, start: OnboardingStart) -> Outcome:
        return await super().run(start)

    async def dispatch(self, attempt: int) -> None:
        raise ApplicationError("a bug in the new delivery code", non_retryable=True)


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[Client]:
    environment = await WorkflowEnvironment.start_local(
        data_converter=data_converter(),
        dev_server_existing_path=_binary("temporal"),
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal"],
    )
    await register_search_attributes(environment.client)
    yield environment.client
    await environment.shutdown()


async def test_a_stage_failed_by_a_bad_deploy_runs_again_after_a_reset(server: Client) -> None:
    services = StandIns()
    queue = f"reset-{uuid.uuid4().hex[:8]}"
    app = individual_application(application_id=f"R{uuid.uuid4().hex[:10]}")
    policy = fast_policy(app, unit=timedelta(seconds=5))
    env = WorkflowEnvironment.from_client(server)
    broken = Worker(
        server,
        task_queue=queue,
        workflows=[BrokenOnboarding],
        activities=services.activities(),
        interceptors=INTERCEPTORS,
    )
    async with broken:
        run = await Run.start(env, queue, app, policy)
        await run.to(Stage.PREPARING_DEVICES)
        with pytest.raises(WorkflowFailureError):
            await run.handle.result()
    first = {c.name: c.request for c in services.calls}
    assert act.CREATE_SHIPMENT not in first and act.REGISTER_TERMINALS in first

    # The fix is deployed; the admin resets the failed run to the start of delivery.
    async with build_worker(server, queue, services.activities()):
        with pytest.raises(ResetRefused):
            await reset_to_stage(server, app.workflow_id, Stage.TRAINING, "never got there")
        done = await reset_to_stage(server, app.workflow_id, Stage.DELIVERING, "fixed in 1.2.1")
        assert done.new_run_id != done.old_run_id
        run.handle = server.get_workflow_handle_for(
            PosOnboarding.run, app.workflow_id, run_id=done.new_run_id
        )
        await run.delivery()
        await run.activate_all()
        await run.train()
        outcome = await run.outcome()

    assert outcome.stage is Stage.LIVE
    names = services.names()
    # What came before the stage was kept, not done again.
    for step in (act.OPEN_REVIEW_CASE, act.ISSUE_CONTRACT, act.RESERVE_TERMINALS):
        assert names.count(step) == 1, step
    assert names.count(act.REGISTER_TERMINALS) == 1
    assert names.count(act.CREATE_SHIPMENT) == 1


async def test_a_stage_run_again_repeats_its_steps_with_the_same_keys(server: Client) -> None:
    """Resetting a run that went live back to activation: the activation codes and the test
    transaction are asked for again with the keys of the first time, which the services answer
    from their idempotency records (no second code, no second MID)."""
    services = StandIns()
    queue = f"reset-{uuid.uuid4().hex[:8]}"
    app = individual_application(application_id=f"R{uuid.uuid4().hex[:10]}")
    policy = fast_policy(app, unit=timedelta(seconds=5))
    env = WorkflowEnvironment.from_client(server)
    async with build_worker(server, queue, services.activities()):
        run = await Run.start(env, queue, app, policy)
        await run.to(Stage.LIVE)
        await run.outcome()
        before = [
            c.request.idempotency_key for c in services.calls if c.name == act.ENABLE_ACQUIRING
        ]
        done = await reset_to_stage(server, app.workflow_id, Stage.ACTIVATING, "re-run activation")
        run.handle = server.get_workflow_handle_for(
            PosOnboarding.run, app.workflow_id, run_id=done.new_run_id
        )
        await run.activate_all()
        await run.train()
        outcome = await run.outcome()
    assert outcome.stage is Stage.LIVE
    keys = [
        c.request.idempotency_key for c in services.calls if c.name == act.ISSUE_ACTIVATION_CODES
    ]
    assert len(keys) == 2 and keys[0] == keys[1]
    again = [c.request.idempotency_key for c in services.calls if c.name == act.ENABLE_ACQUIRING]
    assert len(again) == 2 and again[0] == before[0] == again[1]
    assert services.names().count(act.REGISTER_TERMINALS) == 1
