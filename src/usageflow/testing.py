"""Helpers for testing code that uses UsageFlow: a clock you move by hand, and Stripe webhook
payloads signed exactly as Stripe signs them.

>>> from datetime import datetime, timezone
>>> clock = FakeClock(datetime(2024, 1, 31, tzinfo=timezone.utc))
>>> flow = UsageFlow("memory://", clock=clock)  # doctest: +SKIP
>>> clock.advance(days=1)
datetime.datetime(2024, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from usageflow.periods import to_utc

__all__ = ["FakeClock", "sign_stripe_payload"]


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


def sign_stripe_payload(
    payload: str | bytes | Mapping[str, Any], secret: str, timestamp: int | None = None
) -> tuple[str, str]:
    """``(body, Stripe-Signature header)`` for a webhook, signed as Stripe signs it: the
    header is ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed by secret>``.

    ``payload`` is the body (``str``/``bytes``) or an event dict (serialized to JSON);
    ``timestamp`` defaults to now.
    """
    if isinstance(payload, Mapping):
        body = json.dumps(payload, separators=(",", ":"))
    elif isinstance(payload, bytes):
        body = payload.decode("utf-8")
    else:
        body = payload
    stamp = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode("utf-8"), f"{stamp}.{body}".encode(), hashlib.sha256)
    return body, f"t={stamp},v1={mac.hexdigest()}"
