"""Worker processes: one per base model, running its `Engine` commands one at a time, in order sent.

The gateway side (`Worker`) never blocks its event loop: a command is written by the loop itself only when it
is small and the socket to the worker has room for it (so the write cannot wait), else by a sender thread;
answers are read by a reader thread and handed to asyncio futures. If the gateway dies (even by
kill -9) the worker notices its parent is gone and exits; if the worker dies, every command waiting on it
fails with a server error naming the exit code.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import multiprocessing
import os
import queue
import socket
import struct
import termios
import threading
import time
import traceback
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

log = logging.getLogger("hybridgate.training")

# Commands up to this size are written by the event loop's thread when nothing is queued before them and
# the socket has room: handing one to the sender thread costs a GIL hand-over, measured at 0.5-1 ms between
# a request and the worker starting (benchmarks/README.md, training API).
_DIRECT_MAX = 16 * 1024


class WorkerError(Exception):
    """A command failed: `category` is "user" (the request is wrong) or "server" (the worker failed)."""

    def __init__(self, message: str, category: str = "server") -> None:
        super().__init__(message)
        self.message = message
        self.category = category


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)  # the gateway is gone; nobody will read our answers


def worker_main(
    conn: Connection,
    parent: int,
    model: str,
    path: str,
    device: str,
    root: str,
    threads: int,
    cache: str | None,
) -> None:
    """The worker process: load the model, then serve commands until told to stop or the pipe closes."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    from hybridgate.training._checkpoints import CheckpointFiles
    from hybridgate.training._engine import Engine, UserError

    try:
        engine = Engine(model, path, device, CheckpointFiles(root), threads, cache)
    except ImportError as e:
        conn.send(
            (
                0,
                "fatal",
                f"training needs torch, peft and transformers ({e}): pip install 'hybridgate[training]'",
            )
        )
        return
    except Exception as e:
        conn.send((0, "fatal", f"cannot load base model {model} from {path}: {type(e).__name__}: {e}"))
        return
    conn.send((0, "ready", engine.info()))
    while True:
        try:
            rid, op, args = conn.recv()
        except (EOFError, OSError):
            return
        if op == "stop":
            return
        try:
            if op == "stream_text":
                for part in engine.stream_text(**args):
                    conn.send((rid, "part", part))
                conn.send((rid, "ok", None))
            else:
                conn.send((rid, "ok", getattr(engine, op)(**args)))
        except UserError as e:
            conn.send((rid, "error", "user", str(e)))
        except Exception as e:
            traceback.print_exc()
            conn.send((rid, "error", "server", f"{op} failed: {type(e).__name__}: {e}"))


class _Pending:
    __slots__ = ("future", "parts")

    def __init__(self, future: asyncio.Future[Any], parts: asyncio.Queue[Any] | None) -> None:
        self.future = future
        self.parts = parts


class Worker:
    """The gateway's handle on one worker process."""

    def __init__(
        self, model: str, path: str, device: str, root: str, threads: int = 0, cache: str | None = None
    ) -> None:
        self.model, self.path, self.device, self.root, self.threads = model, path, device, root, threads
        self.cache = cache
        self.info: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._out: queue.Queue[bytes | None] = queue.Queue()
        # Commands handed to the sender thread (written by the loop's thread) and sent by it (written by the
        # sender only): equal when nothing is queued or being written, so a direct write keeps the order.
        self._queued = 0
        self._sent = 0
        self._sndbuf = 0  # the socket's send buffer; 0: never write directly (unknown)
        self._proc: Any = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self.dead: str | None = None

    async def start(self, timeout_s: float = 900.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._proc = ctx.Process(
            target=worker_main,
            args=(
                theirs,
                os.getpid(),
                self.model,
                self.path,
                self.device,
                self.root,
                self.threads,
                self.cache,
            ),
            name=f"hybridgate-train-{self.model}",
            daemon=True,
        )
        self._proc.start()
        theirs.close()
        self._attach(ours)
        threading.Thread(target=self._read, name=f"train-read-{self.model}", daemon=True).start()
        threading.Thread(target=self._write, name=f"train-write-{self.model}", daemon=True).start()
        async with asyncio.timeout(timeout_s):
            self.info = await self._ready

    @property
    def alive(self) -> bool:
        return self.dead is None and self._proc is not None and self._proc.is_alive()

    def submit(self, op: str, **args: Any) -> asyncio.Future[Any]:
        """Queue a command now (this fixes its place in the order); its answer arrives in the future."""
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self.dead is not None:
            fut.set_exception(WorkerError(self.dead))
            return fut
        rid = next(self._ids)
        self._pending[rid] = _Pending(fut, None)
        self._send((rid, op, args))
        return fut

    async def call(self, op: str, **args: Any) -> Any:
        return await self.submit(op, **args)

    async def stream(self, op: str, **args: Any) -> AsyncIterator[Any]:
        assert self._loop is not None
        if self.dead is not None:
            raise WorkerError(self.dead)
        fut: asyncio.Future[Any] = self._loop.create_future()
        parts: asyncio.Queue[Any] = asyncio.Queue()
        rid = next(self._ids)
        self._pending[rid] = _Pending(fut, parts)
        self._send((rid, op, args))
        while True:
            getter = asyncio.ensure_future(parts.get())
            done, _ = await asyncio.wait({getter, fut}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            while not parts.empty():
                yield parts.get_nowait()
            fut.result()  # raises the worker's error, if any
            return

    def _attach(self, conn: Connection) -> None:
        """Talk to the worker over `conn`; direct writes only where its send buffer and queue can be read."""
        self._conn = conn
        try:
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                self._sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            self._unsent()
        except OSError:  # not a socket, or no TIOCOUTQ here: the sender thread writes everything
            self._sndbuf = 0

    def _unsent(self) -> int:
        """Bytes written to the worker's socket that it has not read yet (as the kernel accounts them)."""
        assert self._conn is not None
        out = fcntl.ioctl(self._conn.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", out)[0])

    def _send(self, item: tuple[Any, ...]) -> None:
        """Pickle a command and write it now if that cannot block, else queue it for the sender thread.

        A direct write happens only when every earlier command has been written (so order holds) and the
        socket's unread bytes plus twice this message (the kernel counts more than the payload) leave room
        in its send buffer: a busy worker that reads nothing must never make the event loop wait.
        """
        buf = bytes(ForkingPickler.dumps(item))
        conn = self._conn
        if (
            conn is not None
            and self._sndbuf
            and len(buf) <= _DIRECT_MAX
            and self._queued == self._sent
            and self._unsent() + 2 * len(buf) + 4096 <= self._sndbuf
        ):
            try:
                conn.send_bytes(buf)
            except (OSError, ValueError):
                pass  # the worker is gone: the reader thread sees it and fails what waits
            return
        self._queued += 1
        self._out.put(buf)

    def _write(self) -> None:
        while True:
            buf = self._out.get()
            if buf is None or self._conn is None:
                return
            try:
                self._conn.send_bytes(buf)
            except (OSError, ValueError):
                return
            self._sent += 1

    def _read(self) -> None:
        assert self._conn is not None and self._loop is not None
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break
            try:
                self._loop.call_soon_threadsafe(self._dispatch, msg)
            except RuntimeError:  # the loop is closed
                return
        code = self._proc.exitcode if self._proc is not None else None
        try:
            self._loop.call_soon_threadsafe(self._died, code)
        except RuntimeError:
            pass

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        rid, kind = msg[0], msg[1]
        if rid == 0:
            if self._ready is not None and not self._ready.done():
                if kind == "ready":
                    self._ready.set_result(msg[2])
                else:
                    self.dead = msg[2]
                    self._ready.set_exception(WorkerError(msg[2]))
            return
        p = self._pending.get(rid)
        if p is None:
            return
        if kind == "part":
            if p.parts is not None:
                p.parts.put_nowait(msg[2])
            return
        del self._pending[rid]
        if p.future.done():
            return
        if kind == "ok":
            p.future.set_result(msg[2])
        else:
            p.future.set_exception(WorkerError(msg[3], msg[2]))

    def _died(self, code: int | None) -> None:
        if self.dead is None:
            self.dead = (
                f"the training worker for {self.model} exited (code {code}); its unsaved state is lost"
            )
            if code not in (0, None):
                log.error("%s", self.dead)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(WorkerError(self.dead))
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(WorkerError(self.dead))
        self._pending.clear()

    async def close(self, timeout_s: float = 10.0) -> None:
        if self._proc is None:
            return
        self._send((0, "stop", {}))
        self._out.put(None)
        # Joined in a thread: the worker may be finishing a step before it reads "stop".
        await asyncio.to_thread(self._proc.join, timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            await asyncio.to_thread(self._proc.join, 5)
        if self._conn is not None:
            self._conn.close()


__all__ = ["Worker", "WorkerError", "worker_main"]
