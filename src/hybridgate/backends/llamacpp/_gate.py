"""The queue in front of a local model: one generation at a time, the rest wait in arrival order."""

from __future__ import annotations

import asyncio
from collections import deque


class QueueFull(Exception):
    pass


class FifoGate:
    """One generation at a time; waiters are served in arrival order, and at most `max_queue` may wait.

    Lives on the event loop: only the loop thread touches it (the worker releases it through the loop).
    """

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.busy = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, wait_s: float) -> None:
        if not self.busy and not self._waiters:
            self.busy = True
            return
        if len(self._waiters) >= self.max_queue:
            raise QueueFull
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(wait_s):
                await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us just as we gave up: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return
        self.busy = False
