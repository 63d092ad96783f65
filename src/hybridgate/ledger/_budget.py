"""Spend per key and reservations for calls in flight: the book every budget decision is made against.

Check-and-reserve is one synchronous step on the event loop (no await inside), which makes it atomic for
every request of this process: concurrent calls cannot both see the same headroom. Across processes
(workers, replicas) each holds its own book, refreshed from the database every few seconds; see the README.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Reservation:
    key_id: str
    amount: float
    expires: float


@dataclass
class BudgetBook:
    """Spent and reserved USD per key id. `spent` includes rows not yet flushed to the database."""

    spent: dict[str, float] = field(default_factory=dict)
    reserved: dict[str, float] = field(default_factory=dict)
    _open: dict[int, _Reservation] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    clock: Callable[[], float] = time.monotonic

    def headroom(self, key_id: str, budget: float) -> float:
        self._expire(key_id)
        return budget - self.spent.get(key_id, 0.0) - self.reserved.get(key_id, 0.0)

    def try_reserve(self, key_id: str, budget: float, amount: float, ttl_s: float) -> int | None:
        """Reserve `amount` if it fits under `budget`; the reservation id, or None when it does not fit.

        A reservation that is never settled (a bug, a lost stream) lapses after `ttl_s`, so it cannot
        block the key forever.
        """
        if amount > self.headroom(key_id, budget) + 1e-12:
            return None
        rid = next(self._ids)
        self._open[rid] = _Reservation(key_id, amount, self.clock() + ttl_s)
        self.reserved[key_id] = self.reserved.get(key_id, 0.0) + amount
        return rid

    def settle(self, key_id: str | None, reservation: int | None, cost: float) -> None:
        """Replace a reservation (if any) with the attempt's real cost."""
        if reservation is not None:
            self._release(reservation)
        if key_id is not None and cost:
            self.spent[key_id] = self.spent.get(key_id, 0.0) + cost

    def _release(self, reservation: int) -> None:
        r = self._open.pop(reservation, None)
        if r is not None:
            left = self.reserved.get(r.key_id, 0.0) - r.amount
            self.reserved[r.key_id] = left if left > 1e-12 else 0.0

    def _expire(self, key_id: str) -> None:
        if not self.reserved.get(key_id):
            return
        now = self.clock()
        for rid in [rid for rid, r in self._open.items() if r.key_id == key_id and r.expires <= now]:
            self._release(rid)

    def in_flight(self, key_id: str) -> float:
        return self.reserved.get(key_id, 0.0)


__all__ = ["BudgetBook"]
