"""Working days on the mainland China calendar, for review deadlines.

A channel's review SLA and hard deadline are counted in **working days** (工作日): Monday to
Friday except the public holidays the State Council announces each year, plus the weekend days
it makes working days to bridge a holiday (调休). The data comes from the `chinesecalendar`
package (`chinese_calendar`), which knows the years it has been released for and raises
`NotImplementedError` for any other.

The semantics (what an acquirer's "N working days" means, after 民法典 第二百零一条 and
第二百零三条: the opening day is not counted, and a period ends at 24:00 of its last day):

- Everything is in China time (UTC+8, the merchant's calendar), whatever zone `start` has.
- The start day is day 0 and never counts, whatever the hour and whether or not it is a working
  day. Working day 1 is the first working day *after* the start day's date.
- A deadline of N working days is the **end of the Nth working day**: 23:59:59 CST that day.
  Something done at or before that instant is on time. A case opened on Monday at 10:00 (or at
  23:30) with 1 working day is due on Tuesday at 23:59:59 CST; one opened on Saturday, or on
  Friday, is due on Monday at 23:59:59 CST (a weekend or holiday start gains nothing).
- 0 working days is the end of the start day itself (23:59:59 CST, T+0).
- Outside the years the library has data for, a day is a working day when it is Monday to
  Friday; `WorkingDeadlinesComputed.calendar` then says so and names the years.

The `working_deadlines` activity computes the review SLA and the deadline once; the workflow
records its result in history, so a replay never depends on which version of the library (or
of this module) the worker has installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from importlib.metadata import version

import chinese_calendar  # type: ignore[import-untyped]
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from temporalio import activity

# The merchant's calendar. China has kept UTC+8 without daylight saving since 1991, so a fixed
# offset is exact and needs no tz database (the same as `workflows.case.CHINA`).
CHINA = timezone(timedelta(hours=8), "CST")
END_OF_DAY = time(23, 59, 59)
LIBRARY = "chinesecalendar"
# The most working days a review SLA or deadline may be given: a year and more.
MAX_DAYS = 366

WORKING_DEADLINES = "working_deadlines"


@dataclass(frozen=True)
class _Count:
    """The result of a walk over the calendar: the day reached and the years without data."""

    day: date
    weekday_years: frozenset[int]


def _is_working_day(day: date) -> tuple[bool, bool]:
    """(is it a working day, did the holiday data decide it). Without data: Monday to Friday."""
    try:
        return bool(chinese_calendar.is_workday(day)), True
    except NotImplementedError:
        return day.weekday() < 5, False


def _china_date(moment: datetime) -> date:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"a naive datetime has no place on the calendar: {moment!r}")
    return moment.astimezone(CHINA).date()


def _walk(start: datetime, days: int) -> _Count:
    """The date of the `days`th working day after the start's China date (the date itself for 0)."""
    if days < 0:
        raise ValueError(f"working days cannot be negative: {days}")
    day = _china_date(start)
    without_data: set[int] = set()
    counted = 0
    while counted < days:
        day += timedelta(days=1)
        working, known = _is_working_day(day)
        if not known:
            without_data.add(day.year)
        if working:
            counted += 1
    return _Count(day, frozenset(without_data))


def _end_of(day: date) -> datetime:
    return datetime.combine(day, END_OF_DAY, tzinfo=CHINA)


def add_working_days(start: datetime, days: int) -> datetime:
    """The end (23:59:59 CST) of the `days`th working day after the start's day in China time.

    The start day is never counted (day 0); `days=0` is the end of the start day. A timezone-aware
    `start` is required; the result is in CST (UTC+8). Days in years the library has no data for
    count Monday to Friday (see `working_deadlines`, which says so in its result).
    """
    return _end_of(_walk(start, days).day)


def working_days_between(a: datetime, b: datetime) -> int:
    """How many working days fall after `a`'s China date, up to and including `b`'s.

    The inverse of `add_working_days`: `working_days_between(s, add_working_days(s, n)) == n`
    for every n ≥ 0. Negative when `b` falls on an earlier date than `a` (the count from `b` to
    `a`, negated); 0 for the same date. Years without data count Monday to Friday.
    """
    first, last = _china_date(a), _china_date(b)
    if last < first:
        return -working_days_between(b, a)
    count = 0
    day = first
    while day < last:
        day += timedelta(days=1)
        if _is_working_day(day)[0]:
            count += 1
    return count


def calendar_label(weekday_years: frozenset[int] | set[int]) -> str:
    """What decided the working days: the library and version, or the weekday fallback."""
    if not weekday_years:
        return f"{LIBRARY} {version(LIBRARY)}"
    years = ", ".join(str(year) for year in sorted(weekday_years))
    return f"weekdays (no holiday data for {years}; {LIBRARY} {version(LIBRARY)})"


class WorkingDeadlines(BaseModel):
    """Compute a review's SLA and hard deadline, `sla_days` and `deadline_days` working days
    after `start` (the moment the case was opened, timezone-aware)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: AwareDatetime
    sla_days: int = Field(ge=0, le=MAX_DAYS)
    deadline_days: int = Field(ge=0, le=MAX_DAYS)


class WorkingDeadlinesComputed(BaseModel):
    """The SLA and deadline (each the end of its working day, 23:59:59 CST) and the calendar
    that decided them: `"chinesecalendar 1.11.0"`, or `"weekdays (no holiday data for 2027;
    chinesecalendar 1.11.0)"` when a day counted fell outside the library's data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sla_at: AwareDatetime
    deadline_at: AwareDatetime
    calendar: str


@activity.defn(name=WORKING_DEADLINES)
async def working_deadlines(request: WorkingDeadlines) -> WorkingDeadlinesComputed:
    """The review's SLA and deadline in working days on the mainland calendar. Called once by
    the workflow; the result in history is what a replay uses."""
    sla = _walk(request.start, request.sla_days)
    deadline = _walk(request.start, request.deadline_days)
    return WorkingDeadlinesComputed(
        sla_at=_end_of(sla.day),
        deadline_at=_end_of(deadline.day),
        calendar=calendar_label(sla.weekday_years | deadline.weekday_years),
    )
