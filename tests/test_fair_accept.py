"""The serving loop accepts waiting connections in batches while it is busy (hybridgate._loop)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from hybridgate._loop import ACCEPT_PER_TURN, FairServer, new_event_loop
from hybridgate.cli._common import uvicorn_kwargs

uvloop = pytest.importorskip("uvloop")


def _accepted_after_busy_turns(loop_factory: object, clients: int, turns: int) -> tuple[int, int]:
    """Connect `clients` at once to a server whose loop turns take 20 ms; (accepted, turns run)."""
    accepted = 0

    class P(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal accepted
            accepted += 1

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(P, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        socks = []
        for _ in range(clients):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            socks.append(s)
        # Loopback handshakes complete in the kernel at once: all of them now wait in the accept queue, and
        # the loop gets no idle turn to take them in before it is busy.
        ran = 0
        for _ in range(turns):  # each turn holds the loop 20 ms, as thousands of busy streams would
            t = time.perf_counter()
            while time.perf_counter() - t < 0.02:
                pass
            await asyncio.sleep(0)
            ran += 1
        got = accepted
        server.close()
        for s in socks:
            s.close()
        return got, ran

    with asyncio.Runner(loop_factory=loop_factory) as runner:  # type: ignore[arg-type]
        return runner.run(main())


def test_a_busy_loop_accepts_a_batch_of_waiting_connections_per_turn() -> None:
    accepted, turns = _accepted_after_busy_turns(new_event_loop, 300, 6)
    assert accepted == 300, (accepted, turns)  # ACCEPT_PER_TURN a turn: all within three turns


def test_uvloops_own_server_takes_about_one_per_turn_which_is_what_this_fixes() -> None:
    accepted, turns = _accepted_after_busy_turns(uvloop.new_event_loop, 300, 6)
    assert accepted < ACCEPT_PER_TURN, (accepted, turns)


def test_the_fair_server_is_what_serve_runs_and_it_closes_its_sockets() -> None:
    assert uvicorn_kwargs()["loop"] == "hybridgate._loop:new_event_loop"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        assert isinstance(server, FairServer) and server.is_serving()
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
