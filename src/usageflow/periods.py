"""Time windows and stats buckets: pure functions of a clock reading, all in UTC.

A *window* is the half-open interval ``[start, end)`` over which usage is summed. ``start`` is
``None`` for ``lifetime``; ``end`` (the moment the quota resets) is ``None`` when no reset is
scheduled: ``lifetime`` and the rolling windows, whose usage ages out gradually.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import NamedTuple

__all__ = [
    "Clock",
    "GroupBy",
    "Period",
    "Window",
    "add_months",
    "bucket_key",
    "bucket_starts",
    "system_clock",
    "to_utc",
    "window_for",
]

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The real time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class Period(str, Enum):
    """The windows a limit or a query can use."""

    CURRENT_MONTH = "current_month"
    LAST_30_DAYS = "last_30_days"
    LAST_28_DAYS = "last_28_days"
    CURRENT_WEEK = "current_week"
    DAY = "day"
    LIFETIME = "lifetime"
    BILLING_CYCLE = "billing_cycle"

    def __str__(self) -> str:
        return self.value


#: ``Period`` by value: a dict lookup, far cheaper than calling the enum (docs/benchmarks.md).
PERIODS: dict[str, Period] = {p.value: p for p in Period}


class GroupBy(str, Enum):
    """The bucket sizes of :meth:`UsageFlow.get_usage_stats`."""

    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"

    def __str__(self) -> str:
        return self.value


class Window(NamedTuple):
    """``[start, end)``; ``None`` is open (rolling windows have no end, lifetime no start)."""

    start: datetime | None
    end: datetime | None


def to_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; a naive value is taken to be UTC already."""
    tz = value.tzinfo
    if tz is timezone.utc:  # the system clock's answer: already what is asked for
        return value
    if tz is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def add_months(value: datetime, months: int, anchor_day: int | None = None) -> datetime:
    """Move ``value`` by whole months, clamping the day to the month's end.

    ``anchor_day`` is the day of month the sequence is anchored on (so that 31 Jan -> 28 Feb ->
    31 Mar, not 28 Mar).
    """
    day = anchor_day if anchor_day is not None else value.day
    index = value.year * 12 + (value.month - 1) + months
    year, month0 = divmod(index, 12)
    last = calendar.monthrange(year, month0 + 1)[1]
    return value.replace(year=year, month=month0 + 1, day=min(day, last))


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _anchored_cycle(anchor: datetime, now: datetime) -> Window:
    """The monthly cycle anchored on ``anchor`` (day and time of day) that contains ``now``."""
    months = (now.year - anchor.year) * 12 + (now.month - anchor.month)
    start = add_months(anchor, months, anchor.day)
    if start > now:
        months -= 1
        start = add_months(anchor, months, anchor.day)
    return Window(start, add_months(anchor, months + 1, anchor.day))


def window_for(
    period: Period,
    now: datetime,
    *,
    cycle_start: datetime | None = None,
    cycle_end: datetime | None = None,
) -> Window:
    """The window of ``period`` that contains ``now``.

    ``billing_cycle`` uses the subscription's ``[cycle_start, cycle_end)`` when ``now`` falls in
    it; when the renewal has not been recorded yet it rolls the cycle forward monthly from
    ``cycle_start``; without a cycle it is the calendar month.
    """
    now = to_utc(now)
    cached = _calendar.get(period)
    if cached is not None and cached.start <= now < cached.end:  # type: ignore[operator]
        return cached
    if period in _CALENDAR:
        window = _calendar_window(period, now)
        _calendar[period] = window
        return window
    return _other_window(period, now, cycle_start, cycle_end)


_CALENDAR = frozenset({"current_month", "current_week", "day"})
#: The last calendar window computed per period: the hot path asks for the same one again and
#: again. A plain dict: concurrent writers store equal values.
_calendar: dict[Period, Window] = {}


def _calendar_window(period: Period, now: datetime) -> Window:
    if period is Period.CURRENT_MONTH:
        start = _month_start(now)
        return Window(start, add_months(start, 1))
    if period is Period.CURRENT_WEEK:
        start = _day_start(now) - timedelta(days=now.weekday())
        return Window(start, start + timedelta(days=7))
    start = _day_start(now)
    return Window(start, start + timedelta(days=1))


def _other_window(
    period: Period, now: datetime, cycle_start: datetime | None, cycle_end: datetime | None
) -> Window:
    if period is Period.LAST_30_DAYS:
        return Window(now - timedelta(days=30), None)
    if period is Period.LAST_28_DAYS:
        return Window(now - timedelta(days=28), None)
    if period is Period.LIFETIME:
        return Window(None, None)
    # billing_cycle
    if cycle_start is None:
        return window_for(Period.CURRENT_MONTH, now)
    cycle_start = to_utc(cycle_start)
    if cycle_end is not None:
        cycle_end = to_utc(cycle_end)
        if cycle_start <= now < cycle_end:
            return Window(cycle_start, cycle_end)
    return _anchored_cycle(cycle_start, now)


def bucket_key(moment: datetime, group_by: GroupBy) -> datetime:
    """The start of the ``group_by`` bucket holding ``moment`` (weeks start on Monday)."""
    moment = to_utc(moment)
    if group_by is GroupBy.HOUR:
        return moment.replace(minute=0, second=0, microsecond=0)
    day = _day_start(moment)
    if group_by is GroupBy.DAY:
        return day
    if group_by is GroupBy.WEEK:
        return day - timedelta(days=day.weekday())
    return _month_start(moment)


def _next_bucket(start: datetime, group_by: GroupBy) -> datetime:
    if group_by is GroupBy.HOUR:
        return start + timedelta(hours=1)
    if group_by is GroupBy.DAY:
        return start + timedelta(days=1)
    if group_by is GroupBy.WEEK:
        return start + timedelta(days=7)
    return add_months(start, 1)


def bucket_starts(first: datetime, last: datetime, group_by: GroupBy) -> Iterator[datetime]:
    """Every bucket start from the bucket of ``first`` to the bucket of ``last``, inclusive."""
    current = bucket_key(first, group_by)
    end = bucket_key(last, group_by)
    while current <= end:
        yield current
        current = _next_bucket(current, group_by)


def bucket_label(start: datetime, group_by: GroupBy) -> str:
    """The ``date`` label of a bucket: ``YYYY-MM-DD``, or ``YYYY-MM-DDTHH:00:00Z`` for hours."""
    if group_by is GroupBy.HOUR:
        return start.strftime("%Y-%m-%dT%H:00:00Z")
    return start.strftime("%Y-%m-%d")
