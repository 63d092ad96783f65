"""Requests per minute per key: an exact sliding window of the last minute's request times."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    """In memory, per process (each worker or replica counts its own requests)."""

    WINDOW_S = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._hits: dict[str, deque[float]] = {}
        self._clock = clock

    def hit(self, key_id: str, rpm: int) -> float | None:
        """Count one request; None if allowed, else the seconds until the next one would be."""
        now = self._clock()
        q = self._hits.get(key_id)
        if q is None:
            q = self._hits[key_id] = deque()
        while q and q[0] <= now - self.WINDOW_S:
            q.popleft()
        if len(q) >= rpm:
            return q[0] + self.WINDOW_S - now
        q.append(now)
        return None

    @staticmethod
    def retry_after(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))


__all__ = ["RateLimiter"]
