"""The idle give-back (`hybridgate._memory`): when it runs, and that it does return memory (numbers:
benchmarks/README.md, "Concurrent streams")."""

from __future__ import annotations

import asyncio
import platform

import pytest

from hybridgate._memory import IdleTrim, resident_bytes

MB = 1024 * 1024


class Fake:
    """A process whose resident size and CPU time the test sets; counts the trims."""

    def __init__(self) -> None:
        self.rss = 100 * MB
        self.cpu = 0.0
        self.trims = 0

    def trim(self) -> int:
        self.trims += 1
        self.rss = 101 * MB
        return 1


async def _checks(t: IdleTrim, fake: Fake, n: int, *, cpu_per_check: float, grow: int = 0) -> None:
    for _ in range(n):
        fake.cpu += cpu_per_check
        fake.rss += grow
        t._check()
        await asyncio.sleep(0)


def _trimmer(fake: Fake, **kw: float) -> IdleTrim:
    t = IdleTrim(
        asyncio.get_running_loop(),
        check_s=1.0,
        growth_bytes=8 * MB,
        quiet_cpu=0.05,
        rss=lambda: fake.rss,
        cpu=lambda: fake.cpu,
        trim=fake.trim,
        **kw,
    )
    t.start()
    return t


async def test_memory_is_given_back_once_when_the_process_goes_quiet_after_it_grew() -> None:
    fake = Fake()
    t = _trimmer(fake, min_gap_s=0.0)
    try:
        await _checks(t, fake, 5, cpu_per_check=0.9, grow=4 * MB)  # under load: grew 20 MB, busy
        assert fake.trims == 0
        await _checks(t, fake, 3, cpu_per_check=0.0)  # the load ended
        assert fake.trims == 1
        assert t.history[-1].before == 120 * MB and t.history[-1].after == 101 * MB
        await _checks(t, fake, 10, cpu_per_check=0.0)  # quiet, no new growth: nothing more to do
        assert fake.trims == 1
    finally:
        t.stop()


async def test_a_busy_or_steady_process_is_never_trimmed() -> None:
    fake = Fake()
    t = _trimmer(fake, min_gap_s=0.0)
    try:
        await _checks(t, fake, 5, cpu_per_check=0.5, grow=4 * MB)  # growing, but busy throughout
        await _checks(t, fake, 1, cpu_per_check=0.5)
        fake.rss = 104 * MB  # steady, a little above the start: below the growth bar
        await _checks(t, fake, 10, cpu_per_check=0.0)
        assert fake.trims == 0
    finally:
        t.stop()


async def test_a_process_that_grew_while_quiet_throughout_is_left_alone() -> None:
    # e.g. a cache filled by a few slow requests: no load ended, so there is nothing to give back
    fake = Fake()
    t = _trimmer(fake, min_gap_s=0.0)
    try:
        await _checks(t, fake, 10, cpu_per_check=0.01, grow=4 * MB)
        assert fake.trims == 0
    finally:
        t.stop()


async def test_give_backs_are_at_least_min_gap_apart() -> None:
    fake = Fake()
    t = _trimmer(fake, min_gap_s=3600.0)
    try:
        await _checks(t, fake, 1, cpu_per_check=0.9, grow=10 * MB)
        await _checks(t, fake, 3, cpu_per_check=0.0)
        assert fake.trims == 1
        await _checks(t, fake, 1, cpu_per_check=0.9, grow=10 * MB)  # a second load
        await _checks(t, fake, 5, cpu_per_check=0.0)  # quiet again, but too soon after the first
        assert fake.trims == 1
    finally:
        t.stop()


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim"
)
async def test_a_real_give_back_returns_the_pages_freed_in_the_middle_of_the_heap() -> None:
    # 64 MB in 4 KB blocks (glibc's heap, not Python's small-object arenas), then all freed but every
    # 64th: the survivors pin the heap, so glibc trims nothing by itself; malloc_trim(0) returns the rest.
    t = IdleTrim(asyncio.get_running_loop())
    t.give_back()  # from a trimmed heap, so the blocks take new pages (earlier tests leave free ones)
    rss = resident_bytes()
    assert rss is not None
    blocks = [bytes(4096) for _ in range(16384)]
    kept = blocks[::64]
    del blocks
    before = resident_bytes()
    assert before is not None and before - rss > 32 * MB, "the blocks were not freed into the heap"
    done = t.give_back()
    assert done.before - done.after > 32 * MB
    assert len(kept) == 256
