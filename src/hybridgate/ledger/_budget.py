"""Spend per key and reservations for calls in flight: the book every budget decision is made against.

Check-and-reserve is one synchronous step on the event loop (no await inside), which makes it atomic for
every request of this process: concurrent calls cannot both see the same headroom. Across processes
(workers, replicas) each holds its own book, refreshed from the database every few seconds; see the README.

Reservations lapse by a heap of deadlines: a check pops only what has expired since the last one, so its
cost does not grow with the number of reservations open (walking them all was O(N) per request: 20 % of
the event loop at 4,000 concurrent streams). Settled reservations leave their heap entry behind; the heap
is rebuilt from the open ones when such stale entries outnumber them, so it stays within twice the
number open and the rebuild costs O(1) per settlement, amortised.
"""

from __future__ import annotations

import heapq
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
    # (expires, reservation id) of every open reservation, and of settled ones not yet swept out.
    _deadlines: list[tuple[float, int]] = field(default_factory=list)
    # Heap entries popped or rebuilt: what expiry costs, counted (tests pin it; independent of N open).
    expiry_steps: int = 0

    def headroom(self, key_id: str, budget: float) -> float:
        self._expire()
        return budget - self.spent.get(key_id, 0.0) - self.reserved.get(key_id, 0.0)

    def try_reserve(self, key_id: str, budget: float, amount: float, ttl_s: float) -> int | None:
        """Reserve `amount` if it fits under `budget`; the reservation id, or None when it does not fit.

        A reservation that is never settled (a bug, a lost stream) lapses after `ttl_s`, so it cannot
        block the key forever.
        """
        if amount > self.headroom(key_id, budget) + 1e-12:
            return None
        rid = next(self._ids)
        expires = self.clock() + ttl_s
        self._open[rid] = _Reservation(key_id, amount, expires)
        heapq.heappush(self._deadlines, (expires, rid))
        self.reserved[key_id] = self.reserved.get(key_id, 0.0) + amount
        return rid

    def settle(self, key_id: str | None, reservation: int | None, cost: float) -> None:
        """Replace a reservation (if any) with the attempt's real cost."""
        if reservation is not None:
            self._release(reservation)
            if len(self._deadlines) > 2 * len(self._open) + 64:
                self._compact()
        if key_id is not None and cost:
            self.spent[key_id] = self.spent.get(key_id, 0.0) + cost

    def _release(self, reservation: int) -> None:
        r = self._open.pop(reservation, None)
        if r is not None:
            left = self.reserved.get(r.key_id, 0.0) - r.amount
            self.reserved[r.key_id] = left if left > 1e-12 else 0.0

    def _expire(self) -> None:
        """Release every reservation past its deadline (of any key): only the expired entries are touched."""
        heap = self._deadlines
        if not heap:
            return
        now = self.clock()
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            self.expiry_steps += 1
            self._release(rid)

    def _compact(self) -> None:
        """Drop the heap entries of settled reservations (more of them than open ones: amortised O(1))."""
        self.expiry_steps += len(self._open)
        self._deadlines = [(r.expires, rid) for rid, r in self._open.items()]
        heapq.heapify(self._deadlines)

    def in_flight(self, key_id: str) -> float:
        return self.reserved.get(key_id, 0.0)


__all__ = ["BudgetBook"]
