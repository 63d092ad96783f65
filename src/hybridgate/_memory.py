"""Give memory back to the system once the gateway goes quiet after a load peak.

Thousands of concurrent streams grow the process by tens of MB (benchmarks/README.md, "Concurrent
streams"); when they end, Python frees the objects but neither its own allocator nor glibc's hands the
pages back: the resident size stayed at its peak (or above it, after the burst of endings) for as long as
the process lived. A full `gc.collect()` frees the reference cycles the raised young-generation threshold
leaves waiting (connections closed mid-stream, the ORM's statement objects), and glibc's `malloc_trim(0)`
returns every free page of its heaps, not only the top one.

Neither belongs on a request's path: a full collection walks every object, and the pages given back are
faulted in again by the next burst. `IdleTrim` runs on a timer (one callback a second, no task): it reads
the process's resident size and CPU time, and gives memory back only when all of these hold:

- the resident size grew by at least `growth_bytes` since the last give-back (or the start), so a
  steady process never pays for it;
- the process was busy (at least `quiet_cpu` of one core over a check) since the last give-back, and
  used less than that over the last check, i.e. a load has just ended;
- at least `min_gap_s` passed since the last give-back, which bounds the cost under bursty traffic.

The process's own startup counts as a load: its first quiet second gives back what loading it left.

Where `/proc/self/statm` or glibc's `malloc_trim` is missing (macOS, musl), the part that needs it is
skipped: without /proc nothing runs; without glibc only the collection does.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("hybridgate.memory")

CHECK_S = 1.0
GROWTH_BYTES = 8 * 1024 * 1024
QUIET_CPU = 0.05
MIN_GAP_S = 10.0

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident set size (Linux), or None where /proc does not tell it."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _glibc_trim() -> Callable[[], int] | None:
    """glibc's `malloc_trim`, or None on other C libraries (which have no such call)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def trim() -> int:
        return int(fn(0))

    return trim


@dataclass
class GiveBack:
    """One give-back: resident bytes before and after, and what it cost."""

    before: int
    after: int
    collected: int
    seconds: float


class IdleTrim:
    """Checks once every `check_s` on `loop`; see the module's docstring for when it gives memory back."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        check_s: float = CHECK_S,
        growth_bytes: int = GROWTH_BYTES,
        quiet_cpu: float = QUIET_CPU,
        min_gap_s: float = MIN_GAP_S,
        rss: Callable[[], int | None] = resident_bytes,
        cpu: Callable[[], float] = time.process_time,
        trim: Callable[[], int] | None = None,
    ) -> None:
        self.loop = loop
        self.check_s = check_s
        self.growth_bytes = growth_bytes
        self.quiet_cpu = quiet_cpu
        self.min_gap_s = min_gap_s
        self._rss = rss
        self._cpu = cpu
        self._trim = _glibc_trim() if trim is None else trim
        self.history: list[GiveBack] = []  # the most recent few, for tests and debugging
        self._floor: int | None = None  # resident size after the last give-back (or at the start)
        self._last_cpu = 0.0
        self._last_at = float("-inf")
        self._loaded = False  # busy since the last give-back
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._floor = self._rss()
        if self._floor is None:
            return  # no way to see growth here: never run
        self._last_cpu = self._cpu()
        self._handle = self.loop.call_later(self.check_s, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = self.loop.call_later(self.check_s, self._check)
        cpu = self._cpu()
        busy = (cpu - self._last_cpu) / self.check_s
        self._last_cpu = cpu
        if busy >= self.quiet_cpu:
            self._loaded = True
            return
        rss = self._rss()
        if rss is None or self._floor is None:
            return
        self._floor = min(self._floor, rss)  # memory given back by itself lowers the bar
        if not self._loaded or rss - self._floor < self.growth_bytes:
            return
        if self.loop.time() - self._last_at < self.min_gap_s:
            return
        self.give_back(rss)

    def give_back(self, before: int | None = None) -> GiveBack:
        """Collect every generation and trim the C heap now; the next give-back waits for new growth."""
        before = self._rss() if before is None else before
        t0 = time.perf_counter()
        collected = gc.collect()
        if self._trim is not None:
            self._trim()
        spent = time.perf_counter() - t0
        after = self._rss() or 0
        self._floor = after
        self._last_at = self.loop.time()
        self._last_cpu = self._cpu()  # our own work is not load
        self._loaded = False
        done = GiveBack(before or 0, after, collected, spent)
        self.history = [*self.history[-7:], done]
        log.info(
            "gave back %.1f MB after the load (resident %.1f -> %.1f MB, %d objects collected, %.0f ms)",
            (done.before - after) / 1e6,
            done.before / 1e6,
            after / 1e6,
            collected,
            spent * 1000,
        )
        return done


def install(loop: asyncio.AbstractEventLoop) -> IdleTrim:
    """Start an `IdleTrim` on `loop` once it runs (callable before the loop has started)."""
    trimmer = IdleTrim(loop)
    loop.call_soon(trimmer.start)
    return trimmer


__all__ = ["GiveBack", "IdleTrim", "install", "resident_bytes"]
