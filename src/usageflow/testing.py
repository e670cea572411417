"""Helpers for testing code that uses UsageFlow: a clock you move by hand.

>>> from datetime import datetime, timezone
>>> clock = FakeClock(datetime(2024, 1, 31, tzinfo=timezone.utc))
>>> flow = UsageFlow("memory://", clock=clock)  # doctest: +SKIP
>>> clock.advance(days=1)
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from usageflow.periods import to_utc

__all__ = ["FakeClock"]


class FakeClock:
    """A thread-safe clock that only moves when told to. Pass it as ``clock=``."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = to_utc(start or datetime(2024, 1, 15, 12, 0, tzinfo=timezone.utc))
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        """Jump to ``moment`` (naive values are taken as UTC)."""
        with self._lock:
            self._now = to_utc(moment)

    def advance(
        self, *, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0
    ) -> datetime:
        """Move forward and return the new time."""
        with self._lock:
            self._now += timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
            return self._now
