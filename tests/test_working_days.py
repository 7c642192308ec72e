"""Review deadlines in working days on the mainland calendar (where the channel counts them so):
computed once when the review opens, recorded in the history and the timeline, and the SLA and
the hard deadline fall on them. The calendar itself (National Day, Spring Festival, the adjusted
working weekends) is tested in tests/test_calendar.py."""

from __future__ import annotations

import pytest

from activities import catalog as act
from activities.calendar import add_working_days
from schemas.application import Channel
from schemas.policy import policy_for
from schemas.status import AttentionKind
from tests.factories import individual_application
from tests.scenario import Bench, Run, fast_policy, new_id


def test_the_bank_counts_its_review_in_working_days_unless_an_application_gives_durations() -> None:
    bank = policy_for(Channel.BANK)
    assert (bank.review_sla_working_days, bank.review_deadline_working_days) == (5, 15)
    timed = policy_for(Channel.BANK, {"review_sla": "PT5S", "review_deadline": "PT10S"})
    assert timed.review_sla_working_days is None and timed.review_deadline_working_days is None


async def test_the_review_sla_and_deadline_fall_on_working_days(bench: Bench) -> None:
    if not bench.env.supports_time_skipping:
        pytest.skip("working days are days: the time-skipping test server skips them")
    app = individual_application(application_id=new_id(), channel=Channel.BANK)
    policy = fast_policy(app, bench.unit).model_copy(
        update={"review_sla_working_days": 5, "review_deadline_working_days": 15}
    )
    run = await Run.start(bench.env, bench.task_queue, app, policy)
    bench.runs.append(run)
    await run.submit()
    status = await run.until(lambda s: s.deadlines.review_sla is not None, "review under way")
    opened = status.review.rounds[0].opened_at
    assert status.deadlines.review_sla is not None and status.deadlines.stage_deadline is not None
    assert status.deadlines.review_sla == add_working_days(opened, 5)
    assert status.deadlines.stage_deadline == add_working_days(opened, 15)
    # 15 working days always take three weekends or more.
    assert status.deadlines.stage_deadline - opened >= 15 * bench.unit + 4 * bench.unit
    [recorded] = run.events(status, "review_deadlines")
    assert "5 and 15 working days" in recorded.detail and "chinesecalendar" in recorded.detail

    # Nothing happens at five calendar days; the escalation comes at the fifth working day.
    await bench.sleep((status.deadlines.review_sla - opened) / bench.unit - 0.5)
    assert bench.services.requests(act.ESCALATE_REVIEW) == []
    await bench.sleep(1)
    status = await run.until(lambda s: s.review.rounds[-1].escalations == 1, "escalated")
    assert status.attention is None
    assert status.deadlines.stage_deadline is not None
    await bench.sleep((status.deadlines.stage_deadline - opened) / bench.unit)
    status = await run.parked()
    assert status.attention is not None
    assert status.attention.kind is AttentionKind.REVIEW_OVERDUE
    await run.save_golden("review_in_working_days")
