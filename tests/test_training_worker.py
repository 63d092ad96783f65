"""The gateway's side of a training worker: how commands reach the worker process.

Small commands are written by the event loop's own thread when that cannot block (it saves a GIL hand-over
to the sender thread on every step); anything else goes through the sender thread. These tests drive a real
socket pair with no worker reading, so a write that could block would hang the loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from typing import Any

from hybridgate.training._worker import _DIRECT_MAX, Worker


def _worker_on(conn: Any, loop: asyncio.AbstractEventLoop) -> Worker:
    """A Worker wired to one end of a pipe, with its sender thread, and no process behind it."""
    w = Worker("m", "/nowhere", "cpu", "/nowhere")
    w._loop = loop
    w._attach(conn)
    threading.Thread(target=w._write, daemon=True).start()
    return w


def test_commands_arrive_in_order_and_a_full_socket_never_blocks_the_loop() -> None:
    ours, theirs = multiprocessing.get_context("spawn").Pipe()

    async def submit_all() -> Worker:
        w = _worker_on(ours, asyncio.get_running_loop())
        for i in range(300):
            # a mix of small commands and ones over the direct limit: 300 x ~4-24 KB is several times
            # the socket's buffer, and nobody reads until all are submitted
            size = 4_000 if i < 10 or i % 3 else _DIRECT_MAX + 8_000
            w.submit("op", payload=b"x" * size, i=i)
        return w

    done: list[Worker] = []
    t = threading.Thread(target=lambda: done.append(asyncio.run(submit_all())), daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "submitting blocked the event loop while the worker read nothing"
    w = done[0]
    # Some went straight from the loop (the socket had room at first), the rest through the sender thread.
    assert 0 < w._queued < 300
    got = [theirs.recv() for _ in range(300)]
    assert [m[2]["i"] for m in got] == list(range(300))
    assert [m[0] for m in got] == list(range(1, 301))
    assert w._sent == w._queued


def test_with_no_room_to_measure_everything_goes_through_the_sender_thread() -> None:
    ours, theirs = multiprocessing.get_context("spawn").Pipe()

    async def go() -> Worker:
        w = _worker_on(ours, asyncio.get_running_loop())
        w._sndbuf = 0  # what start() leaves when the socket's queue cannot be measured
        for i in range(5):
            w.submit("op", i=i)
        return w

    w = asyncio.run(go())
    assert [theirs.recv()[2]["i"] for _ in range(5)] == list(range(5))
    assert w._queued == 5
