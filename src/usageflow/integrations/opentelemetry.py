"""OpenTelemetry spans around store calls (``pip install "usageflow[opentelemetry]"``).

::

    from usageflow.integrations.opentelemetry import instrument

    instrument()          # spans go to the global tracer provider

Each store call (an operation of :mod:`usageflow.ops`) becomes a span ``usageflow.<operation>``
with the attribute ``usageflow.operation``, a child of the span current when the call was
made (the request's, under an instrumented web framework); a call that raised has an error
status. The span is made from the call's measured start and end, after it returns, so that
a store call pays nothing for tracing when it is not instrumented.
"""

from __future__ import annotations

from usageflow import _observe
from usageflow.integrations import requires

with requires("opentelemetry"):
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode, TracerProvider

__all__ = ["SpanObserver", "instrument", "uninstrument"]


class SpanObserver(_observe.Observer):
    """Makes a span of each store call."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("usageflow", tracer_provider=tracer_provider)

    def store_call(self, operation: str, start_ns: int, end_ns: int, failed: bool) -> None:
        span = self.tracer.start_span(
            f"usageflow.{operation}",
            kind=trace.SpanKind.CLIENT,
            start_time=start_ns,
            attributes={"usageflow.operation": operation},
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end_ns)


def instrument(tracer_provider: TracerProvider | None = None) -> SpanObserver:
    """Start making spans of store calls (with ``tracer_provider``, else the global one)."""
    observer = SpanObserver(tracer_provider)
    _observe.add(observer)
    return observer


def uninstrument(observer: SpanObserver) -> None:
    """Stop making spans with ``observer``."""
    _observe.remove(observer)
