"""The gateway's projection: numbered snapshots applied in order whatever order they arrive in,
the list's filters, search and paging, and the overview's counts and times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from activities.projection import worker_secret
from gateway.store import ListFilter, Store
from schemas.status import Attention, AttentionKind, Projection, Stage, StageVisit
from workers.config import DEV_SECRET, CredentialsError, ensure_credentials, read_credentials

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'gateway.db'}")


def snapshot(
    app_id: str,
    version: int,
    path: list[tuple[Stage, float]],
    *,
    deadline_hours: float | None = None,
    attention: bool = False,
    name: str = "Sunrise Noodles",
    channel: str = "bank",
    review_round: int = 1,
) -> Projection:
    """An application that went through `path`: (stage, hours after T0 it was entered)."""
    visits = [StageVisit(stage=stage, entered_at=T0 + timedelta(hours=h)) for stage, h in path]
    stage, entered = path[-1][0], visits[-1].entered_at
    return Projection(
        application_id=app_id,
        workflow_id=f"pos-application-{app_id}",
        version=version,
        channel=channel,
        merchant_type="individual",
        merchant_name=name,
        fulfilment="mail",
        stage=stage,
        stage_entered_at=entered,
        stage_deadline=entered + timedelta(hours=deadline_hours) if deadline_hours else None,
        review_round=review_round,
        attention=Attention(
            kind=AttentionKind.STEP_FAILED,
            step="reserve_terminals",
            reason="device service answered 503 for card 6222021234567890123",
            since=entered,
            retryable=True,
        )
        if attention
        else None,
        started_at=T0,
        ended_at=entered if stage.finished else None,
        visits=visits,
    )


DOCS, REVIEW, CONTRACT = Stage.COLLECTING_DOCUMENTS, Stage.IN_REVIEW, Stage.CONTRACT


def test_an_older_snapshot_never_overwrites_a_newer_one(store: Store) -> None:
    assert store.apply(snapshot("A1", 1, [(DOCS, 0)])) == (True, 1)
    assert store.apply(snapshot("A1", 3, [(DOCS, 0), (REVIEW, 2), (CONTRACT, 5)])) == (True, 3)
    assert store.apply(snapshot("A1", 2, [(DOCS, 0), (REVIEW, 2)])) == (False, 3)
    assert store.apply(snapshot("A1", 3, [(DOCS, 0), (REVIEW, 2), (CONTRACT, 5)])) == (False, 3)
    row = store.application("A1")
    assert row is not None and row.stage == "contract" and row.version == 3
    visits = store.visits("A1")
    assert [(v.stage, v.seconds) for v in visits] == [
        ("collecting_documents", 7200.0),
        ("in_review", 10800.0),
        ("contract", None),
    ]


def test_filters_search_sort_and_paging(store: Store) -> None:
    now = T0 + timedelta(hours=10)
    store.apply(snapshot("A1", 1, [(DOCS, 0)], deadline_hours=5, name="Sunrise Noodles"))  # late
    store.apply(snapshot("A2", 1, [(DOCS, 0), (REVIEW, 9)], deadline_hours=48, name="Blue Tea"))
    store.apply(snapshot("A3", 1, [(DOCS, 0)], deadline_hours=30, attention=True, name="50% Off"))
    store.apply(
        snapshot(
            "A4", 1, [(DOCS, 0), (REVIEW, 1)], review_round=2, channel="alipay", name="Harbour"
        )
    )

    def ids(**wanted: object) -> list[str]:
        rows, _ = store.page(ListFilter.model_validate(wanted), now)
        return [r.application_id for r in rows]

    assert ids(overdue=True) == ["A1"]
    assert ids(overdue=False, stage="collecting_documents") == ["A3"]
    assert ids(needs_attention=True) == ["A3"]
    assert ids(review_round=2) == ["A4"]
    assert ids(channel="alipay") == ["A4"]
    assert ids(stage="in_review") == ["A2", "A4"]  # by deadline; none last
    assert ids(q="noodles") == ["A1"]
    assert ids(q="A2") == ["A2"]
    assert ids(q="50%") == ["A3"]  # % is a character to find, not a wildcard
    assert ids(q="5_%") == []
    rows, total = store.page(ListFilter(limit=2, offset=2), now)
    assert total == 4 and [r.application_id for r in rows] == ["A2", "A4"]
    a3 = store.application("A3")
    assert a3 is not None and "6222021234567890123" not in a3.attention_reason
    assert a3.summary(now)["overdue"] is False and a3.summary(now)["needs_attention"] is True


def test_overview_counts_outcomes_funnel_and_times(store: Store) -> None:
    for n in range(10):  # stays in review of 1..10 hours, then live
        store.apply(
            snapshot(f"L{n}", 1, [(DOCS, 0), (REVIEW, 1), (CONTRACT, 2 + n), (Stage.LIVE, 20 + n)])
        )
    store.apply(snapshot("R1", 1, [(DOCS, 0), (REVIEW, 1), (Stage.REJECTED, 3)]))
    store.apply(snapshot("W1", 1, [(DOCS, 0)], deadline_hours=1))
    store.apply(snapshot("W2", 1, [(DOCS, 0), (REVIEW, 2)], attention=True))
    overview = store.overview(since=T0 - timedelta(days=1), now=T0 + timedelta(hours=40))
    assert overview.in_flight_total == 2
    assert overview.in_flight["collecting_documents"] == 1
    assert overview.in_flight["in_review"] == 1
    assert overview.overdue == 1 and overview.needs_attention == 1
    assert overview.started == 13
    assert overview.outcomes == {"live": 10, "rejected": 1, "expired": 0, "cancelled": 0}
    assert overview.funnel["collecting_documents"] == 13
    assert overview.funnel["in_review"] == 12
    assert overview.funnel["contract"] == 10 and overview.funnel["live"] == 10
    review = next(t for t in overview.time_in_stage if t["stage"] == "in_review")
    # 10 stays of 1..10 h and one of 2 h (the rejected one), in seconds.
    assert review["visits"] == 11
    assert review["median_seconds"] == 5 * 3600
    assert review["p90_seconds"] == 9 * 3600
    later = store.overview(since=T0 + timedelta(hours=25), now=T0 + timedelta(hours=40))
    assert later.outcomes["live"] == 5 and later.started == 0


def test_a_store_from_before_the_projection_gets_its_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE gateway_applications (application_id VARCHAR PRIMARY KEY, "
            "workflow_id VARCHAR NOT NULL, channel VARCHAR NOT NULL, merchant_type VARCHAR NOT "
            "NULL, merchant_name VARCHAR NOT NULL, stage VARCHAR NOT NULL, application VARCHAR "
            "NOT NULL, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL)"
        )
        db.execute(
            "INSERT INTO gateway_applications VALUES ('OLD1', 'pos-application-OLD1', 'direct', "
            "'individual', 'Old Shop', 'in_review', '{}', '2026-10-01 00:00:00', "
            "'2026-10-01 00:00:00')"
        )
    store = Store(f"sqlite:///{path}")
    rows, total = store.page(ListFilter(stage=Stage.IN_REVIEW))
    assert total == 1 and rows[0].version == 0 and rows[0].needs_attention is False
    assert store.apply(snapshot("OLD1", 1, [(DOCS, 0), (CONTRACT, 3)])) == (True, 1)


def test_the_worker_signs_snapshots_with_its_secret_from_the_credentials_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("POSFLOW_CREDENTIALS_FILE", raising=False)
    monkeypatch.delenv("POSFLOW_WORKER_SECRET", raising=False)
    assert worker_secret() == DEV_SECRET  # accepted by a gateway on loopback only
    assert ensure_credentials() is not None
    assert ensure_credentials() is None  # complete already: left as it is
    stored = read_credentials()
    assert stored is not None and worker_secret() == stored.secrets["worker"]
    assert len(worker_secret()) >= 32
    monkeypatch.setenv("POSFLOW_WORKER_SECRET", "set-by-the-deployment")
    assert worker_secret() == "set-by-the-deployment"
    # A credentials file others may read is refused, never used.
    (tmp_path / "credentials.json").chmod(0o640)
    monkeypatch.delenv("POSFLOW_WORKER_SECRET")
    with pytest.raises(CredentialsError, match="chmod 600"):
        worker_secret()


def test_after_a_reset_the_new_runs_snapshots_take_over(store: Store) -> None:
    """A reset's new run numbers its snapshots from the reset point, below the old run's: once
    the gateway follows the new run, they apply, and the old run's late ones no longer do."""
    old = snapshot("A9", 30, [(DOCS, 0), (REVIEW, 2), (CONTRACT, 5)]).model_copy(
        update={"run_id": "run-old"}
    )
    assert store.apply(old) == (True, 30)
    store.follow_run("A9", "run-new")
    new = snapshot("A9", 21, [(DOCS, 0), (REVIEW, 2)]).model_copy(update={"run_id": "run-new"})
    assert store.apply(new) == (True, 21)
    late = old.model_copy(update={"version": 31})
    assert store.apply(late) == (False, 21)
    row = store.application("A9")
    assert row is not None and row.stage == "in_review" and row.run_id == "run-new"
