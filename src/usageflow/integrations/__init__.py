"""Framework and SDK adapters: the only place a web framework or client library is imported.

Each adapter imports its framework when it is itself imported; a missing one is a
:class:`~usageflow.errors.UsageFlowError` naming the ``pip install`` line (:func:`requires`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from usageflow.errors import missing_dependency

__all__ = ["requires"]


@contextmanager
def requires(extra: str) -> Iterator[None]:
    """Imports made inside this block that fail for a missing package raise
    ``USAGE_CONFIG_ERROR`` naming ``pip install 'usageflow[<extra>]'``."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise missing_dependency(exc.name or extra, extra) from exc
