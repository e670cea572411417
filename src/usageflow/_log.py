"""The ``usageflow`` logger, and the debug lines of a flow built with ``debug=True``.

``debug=True`` is a switch of one flow, not of the logger: only that flow's operations make
debug lines, and they are shown whatever the ``usageflow`` logger's level is. The level is
never changed, so a flow without ``debug`` stays silent, whichever other flow has it on. Each
line goes to the handlers logging would use for the ``usageflow`` logger (the app's, when it
configured logging, each filtering by its own level); when there is none, to ``sys.stderr``,
where Python's last-resort handler writes warnings. No handler is ever added.
"""

from __future__ import annotations

import contextlib
import logging
import sys

__all__ = ["debug", "logger"]

logger = logging.getLogger("usageflow")


def debug(message: str, *args: object) -> None:
    """Show one debug line of a flow with ``debug=True`` (``message % args``)."""
    if logger.disabled or logger.manager.disable >= logging.DEBUG:
        return
    fn, lno, func, _ = logger.findCaller(stacklevel=2)
    record = logger.makeRecord(logger.name, logging.DEBUG, fn, lno, message, args, None, func)
    if logger.hasHandlers():
        logger.handle(record)
        return
    stream = sys.stderr  # None under pythonw
    if stream is not None:
        with contextlib.suppress(OSError, ValueError):  # closed or broken: like logging, go on
            stream.write(f"{record.levelname} {record.getMessage()}\n")
