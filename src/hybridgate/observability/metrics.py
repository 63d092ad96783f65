"""Prometheus metrics in a registry owned by the app (no global state, so tests build their own)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

# The lifecycle states a backend can be in (hybridgate.backends.Lifecycle); one series each, 1 for the current.
LIFECYCLE_STATES = ("stopped", "provisioning", "warming", "ready", "draining", "failed")
# Series labelled by API key (names, ids, spend, budgets): shown only to the master key or a metrics token.
PER_KEY_PREFIXES = (b"hybridgate_key_", b"hybridgate_rejected_calls")


def _names_a_key(line: bytes) -> bool:
    name = line[7:] if line.startswith((b"# HELP ", b"# TYPE ")) else line
    return name.startswith(PER_KEY_PREFIXES)


_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _HealthCollector(Collector):
    """Reads backend health at scrape time, so routing never pays for it."""

    def __init__(self, snapshot: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        healthy = GaugeMetricFamily(
            "hybridgate_backend_healthy", "1 when the backend is healthy and ready", labels=["backend"]
        )
        failures = GaugeMetricFamily(
            "hybridgate_backend_consecutive_failures",
            "Consecutive failed calls or checks",
            labels=["backend"],
        )
        lifecycle = GaugeMetricFamily(
            "hybridgate_backend_lifecycle",
            "1 for the lifecycle state the backend is in (stopped, provisioning, warming, ready, draining, failed)",
            labels=["backend", "state"],
        )
        in_flight = GaugeMetricFamily(
            "hybridgate_backend_in_flight", "Calls running on the backend now", labels=["backend"]
        )
        for s in self._snapshot():
            healthy.add_metric([s["name"]], 1.0 if s["healthy"] else 0.0)
            failures.add_metric([s["name"]], float(s["consecutive_failures"]))
            for state in LIFECYCLE_STATES:
                lifecycle.add_metric([s["name"], state], 1.0 if s.get("lifecycle") == state else 0.0)
            in_flight.add_metric([s["name"]], float(s.get("in_flight", 0)))
        yield healthy
        yield failures
        yield lifecycle
        yield in_flight


class Metrics:
    def __init__(self, health_snapshot: Callable[[], Iterable[dict[str, Any]]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "hybridgate_requests",
            "Requests answered, by model and final status",
            ["model", "status"],
            registry=r,
        )
        self.attempts = Counter(
            "hybridgate_backend_attempts",
            "Attempts against backends, by outcome",
            ["backend", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "hybridgate_backend_latency_seconds",
            "Duration of successful attempts",
            ["backend"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "hybridgate_fallbacks",
            "Requests served by other than their first candidate",
            ["model"],
            registry=r,
        )
        self.cost = Counter("hybridgate_cost_usd", "Estimated spend in USD", ["backend"], registry=r)
        self.tokens = Counter("hybridgate_tokens", "Tokens processed", ["backend", "direction"], registry=r)
        if health_snapshot is not None:
            r.register(_HealthCollector(health_snapshot))
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}

    def labels(self, metric: MetricWrapperBase, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: prometheus_client re-validates and locks on every call."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def render(self, *, per_key: bool = True) -> bytes:
        """The exposition text; without `per_key`, the series that name API keys are left out."""
        text = generate_latest(self.registry)
        if per_key:
            return text
        return b"\n".join(line for line in text.split(b"\n") if not _names_a_key(line))
