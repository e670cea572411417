"""The seam metrics and traces hook onto: observers told what UsageFlow does.

Nothing here depends on a metrics library; ``usageflow.integrations.prometheus`` and
``usageflow.integrations.opentelemetry`` install observers. With none installed, each hook
site costs one truthiness check of :data:`observers`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from usageflow.ops import StoreCall

__all__ = ["Observer", "add", "notify", "observers", "remove", "timed", "timed_async"]

T = TypeVar("T")
logger = logging.getLogger("usageflow")


class Observer:
    """Hooks, each a no-op here: an observer overrides those it records. Labels never carry a
    user id (cardinality, privacy)."""

    def decision(self, feature: str, outcome: str) -> None:
        """A metered request was decided: ``allowed``, ``refused`` (402), ``failed_open``
        (let through unmetered on a store failure) or ``store_error`` (503)."""

    def store_call(self, operation: str, start_ns: int, end_ns: int, failed: bool) -> None:
        """One store call (an operation of :mod:`usageflow.ops`), from ``start_ns`` to
        ``end_ns`` (``time.time_ns()``); ``failed`` when it raised."""

    def cache(self, hit: bool) -> None:
        """One read of the plan cache (the catalog, a profile, adjustments)."""

    def settle_error(self, feature: str) -> None:
        """A commit, release or refund after a response failed (logged, not raised)."""

    def webhook(self, action: str) -> None:
        """A Stripe webhook event was handled: ``applied``, ``duplicate``, ``pending`` or
        ``ignored``."""

    def alerts(self, delivered: int, failed: int) -> None:
        """One ``deliver_alerts`` call: how many alerts were delivered, how many handlers
        raised."""


#: The installed observers. Hook sites read it without a lock: it is replaced, never
#: mutated in place, so a reader sees either list whole.
observers: tuple[Observer, ...] = ()


def add(observer: Observer) -> None:
    """Install ``observer`` (once; installing it again changes nothing)."""
    global observers  # noqa: PLW0603 - replaced whole, so that readers need no lock
    if observer not in observers:
        observers = (*observers, observer)


def remove(observer: Observer) -> None:
    """Uninstall ``observer`` (nothing when it is not installed)."""
    global observers  # noqa: PLW0603 - replaced whole, so that readers need no lock
    observers = tuple(o for o in observers if o is not observer)


def timed(call: Callable[[StoreCall[T]], T], op: StoreCall[T]) -> T:
    """``call(op)``, told to every observer as a store call."""
    start = time.time_ns()
    try:
        result = call(op)
    except BaseException:
        _store_call(op.method, start, True)
        raise
    _store_call(op.method, start, False)
    return result


async def timed_async(call: Awaitable[T], operation: str) -> T:
    """``await call``, told to every observer as a store call."""
    start = time.time_ns()
    try:
        result = await call
    except BaseException:
        _store_call(operation, start, True)
        raise
    _store_call(operation, start, False)
    return result


def _store_call(operation: str, start: int, failed: bool) -> None:
    notify("store_call", operation, start, time.time_ns(), failed)


def cache_read(hit: bool) -> None:
    """Tell every observer of one read of the plan cache."""
    notify("cache", hit)


def notify(hook: str, *args: Any) -> None:
    """Call ``hook`` of every observer. An observer that raises is logged and skipped: what
    is observed (a request, a store call whose answer is on its way) never fails for it."""
    for observer in observers:
        try:
            getattr(observer, hook)(*args)
        except Exception:
            logger.exception("usageflow: observer %r failed in %s", observer, hook)
