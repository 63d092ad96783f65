"""The queue in front of a local model: one generation at a time, the rest wait in arrival order."""

from __future__ import annotations

from hybridgate._capacity import Capacity, QueueFull


class FifoGate(Capacity):
    """One generation at a time; waiters are served in arrival order, and at most `max_queue` may wait.

    Lives on the event loop: only the loop thread touches it (the worker releases it through the loop).
    """

    __slots__ = ()

    def __init__(self, max_queue: int) -> None:
        super().__init__(1, max_queue)

    @property
    def max_queue(self) -> int:
        return self.queue

    @property
    def busy(self) -> bool:
        return self.in_flight > 0


__all__ = ["FifoGate", "QueueFull"]
