"""What the mock servers share: ASGI lifespan answers, and answers that end when their client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from hybridgate._asgi import Receive, Send


class MockASGIServer:
    """A mock API server's common plumbing; `in_flight` counts the answers under way."""

    def __init__(self) -> None:
        # Answers under way (the config routes excepted): a test can see that a client leaving ends its own.
        self.in_flight = 0

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

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
