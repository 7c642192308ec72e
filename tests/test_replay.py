"""Golden histories of every workflow path, replayed against the current workflow code.

A change that alters the commands the workflow issues for an existing history fails here: guard
it with `workflow.patched`. Record the histories again with
`POSFLOW_RECORD_GOLDEN=1 .venv/bin/pytest tests/test_workflow.py` only for a deliberate,
compatible change, and keep the old ones that still run in production: `before_projection/`
holds the histories of workflows started before snapshots went to the gateway, `before_notices/`
those of workflows started before the notices told the merchant each next step, and
`before_riding/` those of workflows started before the gateway's snapshots rode with steps and
search attributes were written once per wait.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory

from workers.temporal import build_replayer

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = sorted(GOLDEN_DIR.rglob("*.json"))


@pytest.mark.parametrize(
    "generation", [".", "before_riding", "before_notices", "before_projection"]
)
def test_every_path_has_a_golden_history(generation: str) -> None:
    names = {path.stem for path in (GOLDEN_DIR / generation).glob("*.json")}
    expected = {
        "individual_mail_live",
        "enterprise_on_site_live",
        "enterprise_legacy_live",
        "documents_expired",
        "two_rounds_then_approved",
        "rounds_exhausted",
        "rejected",
        "review_escalated",
        "site_survey_passed",
        "contract_expired",
        "parked_then_retried",
        "delivery_failed_then_reshipped",
        "duplicates_and_refusals",
        "withdrawn_collecting_documents_mail",
        "withdrawn_in_review_mail",
        "withdrawn_contract_mail",
        "withdrawn_preparing_devices_mail",
        "withdrawn_delivering_mail",
        "withdrawn_delivering_on_site",
        "withdrawn_activating_mail",
        "withdrawn_training_on_site",
    }
    if generation != "before_projection":
        expected.add("review_in_working_days")
    if generation == ".":
        expected |= {"lakala_pick_up_live", "tmall_two_training_sessions_live"}
    assert expected <= names, f"missing golden histories: {sorted(expected - names)}"


def test_every_merchant_path_has_a_golden_history() -> None:
    """After go-live: the hand-over, and the MerchantAccount paths (`tests/test_merchant.py`)."""
    assert (GOLDEN_DIR / "individual_mail_live_handed_over.json").exists()
    names = {path.stem for path in (GOLDEN_DIR / "merchant").glob("*.json")}
    expected = {
        "fee_late_reinstated_then_closed",
        "fee_unpaid_closed_by_suspension",
        "swapped_by_mail_then_closed",
        "rebound_after_review_then_closed",
        "continued_as_new_first_run",
        "continued_as_new_last_run",
    }
    assert expected <= names, f"missing golden histories: {sorted(expected - names)}"


@pytest.mark.parametrize("path", GOLDEN, ids=[str(p.relative_to(GOLDEN_DIR)) for p in GOLDEN])
async def test_golden_history_replays(path: Path) -> None:
    text = await asyncio.to_thread(path.read_text)
    history = WorkflowHistory.from_json(f"pos-application-{path.stem}", text)
    replayer = build_replayer()
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.stem}: {result.replay_failure}"
