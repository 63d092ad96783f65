"""What the mock servers share: ASGI lifespan answers, and answers that end when their client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence

from hybridgate._asgi import Receive, Send


async def lifespan(
    receive: Receive,
    send: Send,
    startup: Callable[[], None] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Answer an ASGI lifespan: `startup` runs before startup completes, `shutdown` before shutdown does."""
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            if startup is not None:
                startup()
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            if shutdown is not None:
                await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def whole_body(receive: Receive) -> bytes:
    """A request's body, all of it (a mock trusts its test clients: no size bound)."""
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


class MockASGIServer:
    """A mock API server's common plumbing; `in_flight` counts the answers under way."""

    def __init__(self) -> None:
        # Answers under way (the config routes excepted): a test can see that a client leaving ends its own.
        self.in_flight = 0

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        await lifespan(receive, send)

    async def _until_disconnect(self, receive: Receive, answer: Awaitable[None]) -> None:
        """Run `answer`, cancelled as soon as its client disconnects: a hung, slow or stalled answer must not
        outlive the client that asked for it (the body is read, so the next message is the disconnect)."""

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        self.in_flight += 1
        work = asyncio.ensure_future(answer)
        gone = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                # The answer's own cleanup runs before this request counts as ended.
                await asyncio.wait((work,))
            self.in_flight -= 1
        if not work.cancelled():
            work.result()  # an answer's error (an injected drop, a refusal) is this request's


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """A backing server must not outlive the mock, even one killed with SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


async def start_model_server(model: str, args: Sequence[str] = ()) -> tuple[asyncio.subprocess.Process, int]:
    """A real `hybridgate mock-server` on a free loopback port, serving `model`: what a mock cloud's pod or
    cluster runs once it is up (so routing to it can be tested for real). It dies with this process."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "hybridgate", "mock-server", "--port", str(port), "--model", model, *args],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    return proc, port


async def stop_model_server(proc: asyncio.subprocess.Process | None) -> None:
    """Stop a server `start_model_server` started: SIGTERM, then SIGKILL after 5 s."""
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
