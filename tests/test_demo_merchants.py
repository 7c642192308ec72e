"""The demo's merchants after go-live: every cohort's policy is one the gateway accepts, every
marker survives the application's text rules, and a re-binding account passes its rules."""

from __future__ import annotations

from datetime import date

import pytest

from activities.documents import validate_application
from cli.demo import COHORTS, SIMULATED_YEAR, cohort, demo_policy, samples
from cli.samples import new_settlement_account
from schemas.application import Application, Channel
from schemas.policy import policy_for


@pytest.mark.parametrize("years", [1, 2, 5])
@pytest.mark.parametrize("channel", list(Channel))
def test_every_cohort_policy_is_within_the_overrides_bounds(channel: Channel, years: int) -> None:
    for n in range(20):
        policy = policy_for(channel, demo_policy(n, years))
        assert policy.merchant.billing_period == SIMULATED_YEAR
        if cohort(n) == "short_contract":
            assert policy.merchant.contract_term < SIMULATED_YEAR * min(years, 3)
        else:
            assert policy.merchant.contract_term == SIMULATED_YEAR * 3
        if cohort(n) == "short_history":
            assert policy.merchant.history_limit == 200


def test_cohorts_are_fixed_by_index_and_skip_the_bad_documents() -> None:
    kinds = [cohort(n) for n in range(20)]
    assert kinds[1] == "late" and kinds[2] == "unpaid" and kinds[9] == "fail"
    assert kinds[3] == kinds[13] == "plain"  # a bad identity card never goes live
    assert set(kinds) <= set(COHORTS)


def test_markers_pass_the_text_rules_and_the_documents_stay_valid() -> None:
    batch = samples(20, 1)
    today = date(2026, 1, 1)
    for n, s in enumerate(batch):
        app = Application.model_validate(s.application.model_dump(mode="json"))
        assert validate_application(app, today=today) == []
        kind = cohort(n)
        if kind in ("late", "unpaid"):
            assert f"[{kind}]" in app.merchant.name
        if kind in ("fail", "fail_once"):
            assert f"[{kind.replace('_', '-')}]" in app.merchant.address.street


def test_the_new_settlement_account_meets_the_application_rules() -> None:
    for s in samples(20, 1):
        app = s.application
        account = new_settlement_account(app, 7_000_000)
        assert account.account_number != app.settlement_account.account_number
        rebound = app.model_copy(update={"settlement_account": account})
        assert validate_application(rebound, today=date(2026, 1, 1)) == []
