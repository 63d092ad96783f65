"""The event loop `hybridgate serve` runs on: uvloop, with a listener that accepts fairly under load.

uvloop takes one new connection per turn of the event loop (measured: a loop whose turns take 20 ms
accepted 51 connections a second with 600 waiting; asyncio's own loop took all 600). A gateway carrying
thousands of streams has long turns, so clients arriving then wait in the kernel's accept queue: 2,000
clients arriving within 2.5 s left about 800 there, draining at a few dozen a second, and the last ones
waited past 60 s for their first byte, while the streams already open ran on. `FairAcceptLoop` lets uvloop
bind and listen as usual (every host and socket option uvicorn asks for), then takes the listening socket
over: at each turn it accepts up to `ACCEPT_PER_TURN` waiting connections and hands each to the loop as
an accepted socket, so new clients get the same turn as the streams already open. Several workers on one
socket each take at most that many per turn, so an idle worker still takes its share.

The loop also carries `_memory.IdleTrim`: a timer that gives freed memory back to the system when the
process goes quiet after a load peak.

TLS listeners keep uvloop's own path (uvicorn terminates TLS there); without uvloop, asyncio's loop
already accepts in batches and is used as it is.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from hybridgate import _memory

log = logging.getLogger("hybridgate.serve")

# Connections accepted per loop turn and listening socket: enough to drain a burst of thousands in a few
# turns, few enough that one of several workers does not take a whole burst while the others idle.
ACCEPT_PER_TURN = 128
# Out of file descriptors (EMFILE): stop accepting this long, so the loop is not woken for nothing.
_PAUSE_S = 0.5
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _Listener:
    """One listening socket (a duplicate of uvloop's), accepted from by `add_reader`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: Callable[[], Any]):
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.accepted = 0
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._ready)

    def _ready(self) -> None:
        for _ in range(ACCEPT_PER_TURN):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _RESOURCE_ERRORS:
                    log.warning("cannot accept connections for now (%s); retrying in %gs", e, _PAUSE_S)
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(_PAUSE_S, self._resume)
                    return
                if e.errno == errno.ECONNABORTED:
                    continue  # the client gave up while waiting in the queue
                log.warning("accept failed: %s", e)
                return
            self.accepted += 1
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.loop.create_task(self._attach(conn))

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)

    async def _attach(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except Exception as e:  # the client went away before its transport was set up
            log.debug("accepted connection dropped: %r", e)
            conn.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class FairServer:
    """What `create_server` returns for a plain TCP listener: what uvicorn uses of an asyncio.Server."""

    def __init__(self, listeners: list[_Listener]) -> None:
        self._listeners = listeners
        self.sockets = [x.sock for x in listeners]
        self._forever: asyncio.Future[None] | None = None

    @property
    def accepted(self) -> int:
        return sum(x.accepted for x in self._listeners)

    def is_serving(self) -> bool:
        return not all(x.closed for x in self._listeners)

    def close(self) -> None:
        for x in self._listeners:
            x.close()
        if self._forever is not None and not self._forever.done():
            self._forever.cancel()

    async def wait_closed(self) -> None:
        return None

    async def serve_forever(self) -> None:
        """Until closed (then CancelledError, as asyncio's own servers do)."""
        self._forever = asyncio.get_running_loop().create_future()
        try:
            await self._forever
        finally:
            self.close()

    async def __aenter__(self) -> FairServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _fair_create_server(base: type) -> type:
    class FairAcceptLoop(base):
        """uvloop's loop whose TCP servers accept up to ACCEPT_PER_TURN connections per turn."""

        async def create_server(self, protocol_factory: Callable[[], Any], *args: Any, **kw: Any) -> Any:
            server = await super().create_server(protocol_factory, *args, **kw)
            if kw.get("ssl") is not None or not server.sockets:
                return server
            # Listen on duplicates of the bound sockets, then let uvloop's server go (closing its own
            # descriptors; the duplicates keep the sockets listening, with their queues).
            socks = [socket.socket(fileno=os.dup(s.fileno())) for s in server.sockets]
            server.close()
            return FairServer([_Listener(self, s, protocol_factory) for s in socks])

    return FairAcceptLoop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop for `hybridgate serve` (a zero-argument factory, as uvicorn's `loop` setting takes).

    Every worker's loop also gives memory back once it goes quiet after a load (`_memory.IdleTrim`)."""
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = _loop_class(uvloop.Loop)()
    _memory.install(loop)
    return loop


_classes: dict[type, type] = {}


def _loop_class(base: type) -> type:
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = _fair_create_server(base)
    return cls


__all__ = ["ACCEPT_PER_TURN", "FairServer", "new_event_loop"]
