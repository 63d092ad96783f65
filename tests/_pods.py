"""What the pod tests that run real processes share: the processes a test started (stopped after it, last
first) and a bounded wait for a condition."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from hybridgate.testing.procs import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    """`check()`'s first truthy value, polled every 0.1 s; fails naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
