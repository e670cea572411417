"""UsageFlow's metrics in a ``prometheus_client`` registry (extra ``usageflow[prometheus]``).

::

    from prometheus_client import make_asgi_app
    from usageflow.integrations.prometheus import register

    register()                                  # into prometheus_client.REGISTRY
    app.mount("/metrics", make_asgi_app())

=====================================================  =======================================
``usageflow_decisions_total{feature, outcome}``        metered requests decided: ``allowed``,
                                                       ``refused`` (402), ``failed_open``,
                                                       ``store_error`` (503)
``usageflow_store_call_seconds{operation}``            store calls (histogram)
``usageflow_store_call_errors_total{operation}``       store calls that raised
``usageflow_cache_requests_total{result}``             plan-cache reads: ``hit`` / ``miss``
``usageflow_settle_errors_total{feature}``             commits, releases, refunds that failed
``usageflow_webhooks_total{action}``                   Stripe events: ``applied``,
                                                       ``duplicate``, ``pending``, ``ignored``
``usageflow_alerts_delivered_total``                   alerts handed to a handler that returned
``usageflow_alert_delivery_failures_total``            alert handlers that raised
``usageflow_alerts_pending``                           undelivered alerts (with ``flow=``)
=====================================================  =======================================

No label carries a user id. Decisions are counted where requests are metered (the ASGI
middleware, ``@metered``, the Flask and Django adapters, the LLM wrappers); store calls and
cache reads wherever they happen, direct calls of the flow included.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from usageflow import _observe
from usageflow.errors import config_error
from usageflow.integrations import requires

with requires("prometheus"):
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["PrometheusObserver", "register", "unregister"]

#: Store calls take from a tenth of a millisecond (SQLite) to a network round trip or more.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

_lock = threading.Lock()
_by_registry: dict[int, PrometheusObserver] = {}


class _Pending(Collector):
    """``usageflow_alerts_pending``, read from the store at each scrape."""

    def __init__(self, flow: Any) -> None:
        self.flow = flow

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending = len(self.flow.list_alerts(undelivered=True, limit=10_000))
        yield GaugeMetricFamily(
            "usageflow_alerts_pending", "Usage alerts not delivered yet (at most 10,000).", pending
        )


class PrometheusObserver(_observe.Observer):
    """The metrics of one registry, fed by UsageFlow's hooks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.decisions = prometheus_client.Counter(
            "usageflow_decisions",
            "Metered requests decided, by feature and outcome.",
            ["feature", "outcome"],
            registry=registry,
        )
        self.store_seconds = prometheus_client.Histogram(
            "usageflow_store_call_seconds",
            "Store calls, by operation.",
            ["operation"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.store_errors = prometheus_client.Counter(
            "usageflow_store_call_errors",
            "Store calls that raised, by operation.",
            ["operation"],
            registry=registry,
        )
        self.cache_requests = prometheus_client.Counter(
            "usageflow_cache_requests",
            "Reads of the plan cache, by result (hit or miss).",
            ["result"],
            registry=registry,
        )
        self.settle_errors = prometheus_client.Counter(
            "usageflow_settle_errors",
            "Commits, releases and refunds after a response that failed, by feature.",
            ["feature"],
            registry=registry,
        )
        self.webhooks = prometheus_client.Counter(
            "usageflow_webhooks",
            "Stripe webhook events handled, by action.",
            ["action"],
            registry=registry,
        )
        self.alerts_delivered = prometheus_client.Counter(
            "usageflow_alerts_delivered", "Usage alerts delivered.", registry=registry
        )
        self.alert_failures = prometheus_client.Counter(
            "usageflow_alert_delivery_failures",
            "Usage alert handlers that raised.",
            registry=registry,
        )
        self.pending: _Pending | None = None

    def decision(self, feature: str, outcome: str) -> None:
        self.decisions.labels(feature, outcome).inc()

    def store_call(self, operation: str, start_ns: int, end_ns: int, failed: bool) -> None:
        self.store_seconds.labels(operation).observe((end_ns - start_ns) / 1e9)
        if failed:
            self.store_errors.labels(operation).inc()

    def cache(self, hit: bool) -> None:
        self.cache_requests.labels("hit" if hit else "miss").inc()

    def settle_error(self, feature: str) -> None:
        self.settle_errors.labels(feature).inc()

    def webhook(self, action: str) -> None:
        self.webhooks.labels(action).inc()

    def alerts(self, delivered: int, failed: int) -> None:
        if delivered:
            self.alerts_delivered.inc(delivered)
        if failed:
            self.alert_failures.inc(failed)


def register(registry: CollectorRegistry | None = None, *, flow: Any = None) -> PrometheusObserver:
    """Install UsageFlow's metrics into ``registry`` (``prometheus_client.REGISTRY`` by
    default) and start feeding them; registering into the same registry again returns the
    same observer. ``flow`` (a :class:`~usageflow.UsageFlow`) adds the
    ``usageflow_alerts_pending`` gauge, read from its store at each scrape."""
    from usageflow.flow import UsageFlow

    target = prometheus_client.REGISTRY if registry is None else registry
    if flow is not None and not isinstance(flow, UsageFlow):
        raise config_error(
            "usageflow_alerts_pending reads the store at each scrape, which prometheus_client "
            "does synchronously: give register() a UsageFlow, not an AsyncUsageFlow"
        )
    with _lock:
        observer = _by_registry.get(id(target))
        if observer is None:
            observer = PrometheusObserver(target)
            _by_registry[id(target)] = observer
        if flow is not None and observer.pending is None:
            observer.pending = _Pending(flow)
            target.register(observer.pending)
    _observe.add(observer)
    return observer


def unregister(observer: PrometheusObserver) -> None:
    """Stop feeding ``observer`` and remove its metrics from its registry."""
    _observe.remove(observer)
    with _lock:
        _by_registry.pop(id(observer.registry), None)
    for metric in (
        observer.decisions,
        observer.store_seconds,
        observer.store_errors,
        observer.cache_requests,
        observer.settle_errors,
        observer.webhooks,
        observer.alerts_delivered,
        observer.alert_failures,
        observer.pending,
    ):
        if metric is not None:
            observer.registry.unregister(metric)
