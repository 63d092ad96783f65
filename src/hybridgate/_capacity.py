"""Slots with a bounded FIFO queue: a backend's concurrency cap (the router), a local model's one-at-a-time
gate (llamacpp). Shared by both layers, so it sits below them."""

from __future__ import annotations

import asyncio
from collections import deque


class QueueFull(Exception):
    """Every slot is taken and the queue is at its bound."""


class Capacity:
    """Slots for calls to one backend. Lives on the event loop; only the loop thread touches it.

    `try_acquire` never waits (the router skips a full backend for the next candidate); `acquire` waits in
    arrival order, at most `queue` callers at once, each at most its timeout.
    """

    __slots__ = ("_waiters", "in_flight", "limit", "queue")

    def __init__(self, limit: int, queue: int) -> None:
        self.limit = limit
        self.queue = queue
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def full(self) -> bool:
        return self.in_flight >= self.limit or bool(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued before us."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self, timeout_s: float) -> None:
        """Wait for a slot in arrival order. QueueFull at once past the queue bound; TimeoutError later."""
        if self.try_acquire():
            return
        if len(self._waiters) >= self.queue:
            raise QueueFull
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we gave up: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        """Give the slot to the first waiter still waiting, or free it."""
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)  # the slot passes over: in_flight stays the same
                return
        self.in_flight -= 1

    def describe(self) -> str:
        return f"busy: {self.in_flight} calls in flight (concurrency.max={self.limit}), {self.waiting} queued"


__all__ = ["Capacity", "QueueFull"]
