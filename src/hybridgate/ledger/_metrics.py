"""Prometheus series for money: spend per key and backend, budget left, calls refused and why."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _Gauges(Collector):
    """Read at scrape time from the budget book and the recorder, so requests never pay for them."""

    def __init__(
        self,
        budgets: Callable[[], Iterable[tuple[str, str, float, float]]],
        pending: Callable[[], int],
    ) -> None:
        self._budgets, self._pending = budgets, pending

    def collect(self) -> Iterator[GaugeMetricFamily]:
        left = GaugeMetricFamily(
            "hybridgate_key_budget_remaining_usd",
            "Budget minus spend (USD), per key with a budget",
            labels=["key_id", "key"],
        )
        reserved = GaugeMetricFamily(
            "hybridgate_key_budget_reserved_usd",
            "Worst-case cost reserved by calls in flight",
            labels=["key_id", "key"],
        )
        for key_id, name, remaining, in_flight in self._budgets():
            left.add_metric([key_id, name], remaining)
            reserved.add_metric([key_id, name], in_flight)
        yield left
        yield reserved
        yield GaugeMetricFamily(
            "hybridgate_ledger_pending_rows", "Ledger rows not yet written", value=self._pending()
        )


class LedgerMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        budgets: Callable[[], Iterable[tuple[str, str, float, float]]],
        pending: Callable[[], int],
    ) -> None:
        self.spend = Counter(
            "hybridgate_key_spend_usd",
            "Spend in USD by API key and backend",
            ["key_id", "key", "backend"],
            registry=registry,
        )
        self.rejected = Counter(
            "hybridgate_rejected_calls",
            "Calls or attempts refused by policy (budget, unknown_cost, rate_limit)",
            ["key_id", "key", "reason"],
            registry=registry,
        )
        registry.register(_Gauges(budgets, pending))


__all__ = ["LedgerMetrics"]
