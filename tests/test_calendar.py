"""Working-day deadlines on the mainland calendar (activities/calendar.py), against the
holiday data of chinesecalendar: 2025 National Day (Oct 1-8, working Sun Sep 28 and Sat Oct 11),
2025 Spring Festival (Jan 28-Feb 4, working Sun Jan 26 and Sat Feb 8), 2026 Spring Festival
(Feb 15-23, working Sat Feb 14 and Sat Feb 28); no data for 2027."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from importlib.metadata import version

import pytest
from pydantic import ValidationError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment

from activities.calendar import (
    CHINA,
    WORKING_DEADLINES,
    WorkingDeadlines,
    WorkingDeadlinesComputed,
    add_working_days,
    calendar_label,
    working_days_between,
    working_deadlines,
)

LIBRARY = f"chinesecalendar {version('chinesecalendar')}"


def cst(y: int, m: int, d: int, hh: int = 10, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=CHINA)


def due(y: int, m: int, d: int) -> datetime:
    """The end of a working day: 23:59:59 CST."""
    return datetime(y, m, d, 23, 59, 59, tzinfo=CHINA)


def test_the_library_version_is_the_pinned_one() -> None:
    assert version("chinesecalendar") == "1.11.0"


# National Day 2025: Tue Sep 30 is the last working day before Oct 1-8.
@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (1, due(2025, 10, 9)),  # Oct 1-8 skipped
        (2, due(2025, 10, 10)),
        (3, due(2025, 10, 11)),  # the adjusted working Saturday counts
        (4, due(2025, 10, 13)),  # Sun Oct 12 is a rest day
    ],
)
def test_national_day_is_skipped_and_the_working_saturday_counts(
    days: int, expected: datetime
) -> None:
    assert add_working_days(cst(2025, 9, 30), days) == expected


def test_an_adjusted_working_sunday_counts() -> None:
    # Fri Sep 26 2025 + 1: Sat Sep 27 is a rest day, Sun Sep 28 is worked (调休).
    assert add_working_days(cst(2025, 9, 26), 1) == due(2025, 9, 28)
    # From that Sunday, Mon Sep 29 and Tue Sep 30, then the holiday.
    assert add_working_days(cst(2025, 9, 28), 3) == due(2025, 10, 9)


def test_an_ordinary_weekend_is_skipped() -> None:
    assert add_working_days(cst(2025, 10, 17), 1) == due(2025, 10, 20)  # Fri -> Mon
    assert add_working_days(cst(2025, 10, 13), 5) == due(2025, 10, 20)  # Mon -> next Mon


def test_spring_festival_2025() -> None:
    # Mon Jan 27 2025 is the last working day before Jan 28-Feb 4.
    assert add_working_days(cst(2025, 1, 27), 1) == due(2025, 2, 5)
    # Fri Jan 24: Sat Jan 25 rests, Sun Jan 26 is worked, Mon Jan 27, then Feb 5.
    assert add_working_days(cst(2025, 1, 24), 1) == due(2025, 1, 26)
    assert add_working_days(cst(2025, 1, 24), 3) == due(2025, 2, 5)
    # ... and the working Saturday after it: Feb 5, 6, 7, Sat Feb 8.
    assert add_working_days(cst(2025, 1, 27), 4) == due(2025, 2, 8)


def test_spring_festival_2026() -> None:
    # Fri Feb 13 2026: the working Saturday Feb 14, then Feb 15-23 off.
    assert add_working_days(cst(2026, 2, 13), 1) == due(2026, 2, 14)
    assert add_working_days(cst(2026, 2, 13), 2) == due(2026, 2, 24)
    # Tue Feb 24 to Fri Feb 27 is four days, Sat Feb 28 the fifth.
    assert add_working_days(cst(2026, 2, 13), 6) == due(2026, 2, 28)
    assert add_working_days(cst(2026, 2, 13), 7) == due(2026, 3, 2)


def test_a_start_on_a_holiday_counts_from_the_next_working_day() -> None:
    assert add_working_days(cst(2025, 10, 3), 1) == due(2025, 10, 9)
    assert add_working_days(cst(2025, 10, 8, 23, 59), 1) == due(2025, 10, 9)
    # A start on a rest day gains nothing over the working day before it.
    assert add_working_days(cst(2025, 10, 18), 1) == add_working_days(cst(2025, 10, 17), 1)


def test_the_start_day_never_counts_whatever_the_hour() -> None:
    for hour in (0, 10, 23):
        assert add_working_days(cst(2025, 10, 13, hour), 1) == due(2025, 10, 14)


def test_the_day_is_the_china_day_not_the_utc_day() -> None:
    # 2025-09-29 16:30 UTC is Tue Sep 30 00:30 CST: +1 is Oct 9, not Sep 30.
    start = datetime(2025, 9, 29, 16, 30, tzinfo=UTC)
    assert add_working_days(start, 1) == due(2025, 10, 9)
    # The result is in CST and equal to the same instant in UTC.
    result = add_working_days(start, 1)
    assert result.utcoffset() == timedelta(hours=8)
    assert result == datetime(2025, 10, 9, 15, 59, 59, tzinfo=UTC)


def test_zero_days_is_the_end_of_the_start_day() -> None:
    assert add_working_days(cst(2025, 10, 13), 0) == due(2025, 10, 13)
    assert add_working_days(cst(2025, 10, 3), 0) == due(2025, 10, 3)  # even on a holiday
    assert working_days_between(cst(2025, 10, 3), due(2025, 10, 3)) == 0


def test_negative_days_and_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        add_working_days(cst(2025, 10, 13), -1)
    with pytest.raises(ValueError, match="naive"):
        add_working_days(datetime(2025, 10, 13, 10), 1)
    with pytest.raises(ValueError, match="naive"):
        working_days_between(datetime(2025, 10, 13, 10), cst(2025, 10, 14))


def test_working_days_between() -> None:
    # Sep 30 -> Oct 11: Oct 9, 10 and Sat 11.
    assert working_days_between(cst(2025, 9, 30), cst(2025, 10, 11)) == 3
    assert working_days_between(cst(2025, 10, 11), cst(2025, 9, 30)) == -3
    assert working_days_between(cst(2025, 10, 1), cst(2025, 10, 8)) == 0
    assert working_days_between(cst(2025, 10, 13, 0), cst(2025, 10, 13, 23)) == 0
    # A whole year: 261 weekdays in 2025, less 18 holiday weekdays, plus 5 working weekend days.
    assert working_days_between(cst(2024, 12, 31), cst(2025, 12, 31)) == 248


def test_working_days_between_inverts_add_working_days() -> None:
    start = date(2025, 1, 1)
    for offset in range(0, 365 + 120, 3):
        day = start + timedelta(days=offset)
        opened = datetime(day.year, day.month, day.day, 14, 30, tzinfo=CHINA)
        for n in (0, 1, 2, 3, 5, 10, 20):
            deadline = add_working_days(opened, n)
            assert working_days_between(opened, deadline) == n
            # The deadline is a working day (unless n == 0) and the day before it is not yet n.
            if n:
                assert working_days_between(opened, deadline - timedelta(days=1)) == n - 1


def test_beyond_the_data_it_counts_monday_to_friday() -> None:
    # Wed Dec 30 2026 + 3: Thu Dec 31 (data), Fri Jan 1 2027 (no data: a weekday, counted),
    # then Sat and Sun skipped, Mon Jan 4.
    assert add_working_days(cst(2026, 12, 30), 3) == due(2027, 1, 4)
    assert add_working_days(cst(2027, 10, 1), 1) == due(2027, 10, 4)  # Fri -> Mon
    assert working_days_between(cst(2027, 10, 1), cst(2027, 10, 8)) == 5
    assert calendar_label(frozenset()) == LIBRARY
    assert calendar_label({2028, 2027}) == f"weekdays (no holiday data for 2027, 2028; {LIBRARY})"


def test_the_models_refuse_what_makes_no_sense() -> None:
    with pytest.raises(ValidationError):
        WorkingDeadlines(start=datetime(2025, 10, 13, 10), sla_days=1, deadline_days=2)
    with pytest.raises(ValidationError):
        WorkingDeadlines(start=cst(2025, 10, 13), sla_days=-1, deadline_days=2)
    with pytest.raises(ValidationError):
        WorkingDeadlines.model_validate(
            {"start": cst(2025, 10, 13), "sla_days": 1, "deadline_days": 2, "extra": 1}
        )


async def test_the_activity_across_national_day() -> None:
    assert working_deadlines.__temporal_activity_definition.name == WORKING_DEADLINES  # type: ignore[attr-defined]
    assert WORKING_DEADLINES == "working_deadlines"
    # Opened on Fri Sep 26 2025 at 17:00 UTC (Sat Sep 27 01:00 CST, a rest day).
    request = WorkingDeadlines(
        start=datetime(2025, 9, 26, 17, 0, tzinfo=UTC), sla_days=3, deadline_days=5
    )
    result = await ActivityEnvironment().run(working_deadlines, request)
    # Sun Sep 28, Mon 29, Tue 30 (SLA); Oct 9, Fri Oct 10 (deadline).
    assert result == WorkingDeadlinesComputed(
        sla_at=due(2025, 9, 30), deadline_at=due(2025, 10, 10), calendar=LIBRARY
    )


async def test_the_activity_beyond_the_data_says_so() -> None:
    request = WorkingDeadlines(start=cst(2026, 12, 28), sla_days=2, deadline_days=5)
    result = await ActivityEnvironment().run(working_deadlines, request)
    # Tue Dec 29, Wed Dec 30 (SLA, from the data); Dec 31, Jan 1 (weekday), Mon Jan 4.
    assert result.sla_at == due(2026, 12, 30)
    assert result.deadline_at == due(2027, 1, 4)
    assert result.calendar == f"weekdays (no holiday data for 2027; {LIBRARY})"


def test_the_result_survives_the_data_converter_unchanged() -> None:
    """What the workflow records in history is what it reads back on replay."""
    computed = WorkingDeadlinesComputed(
        sla_at=due(2025, 10, 9), deadline_at=due(2025, 10, 11), calendar=LIBRARY
    )
    converter = pydantic_data_converter.payload_converter
    payloads = converter.to_payloads([computed])
    (back,) = converter.from_payloads(payloads, [WorkingDeadlinesComputed])
    assert back == computed
    assert back.deadline_at.utcoffset() == timedelta(hours=8)
