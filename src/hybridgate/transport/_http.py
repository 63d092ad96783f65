"""The upstream HTTP client: HTTP/1.1 over keep-alive connections, responses parsed by httptools (C).

Every call to an HTTP backend goes through here, so what it costs is paid on every request. aiohttp's
client, the fastest general-purpose one measured, spent about 40 % of a bare proxy's CPU per request on
features a gateway does not use (cookies, redirects, proxies, tracing, multipart, a timer per deadline);
this one does the least HTTP/1.1 needs (benchmarks/README.md has the numbers). It speaks to one origin
per pool, sends the request in one write, and times every deadline with a single timer per request.

Deadlines (`Timeouts`): `connect_s` for TCP and TLS; `read_s` for any gap without a byte from the server,
the wait for the first byte included, so a stalled stream fails as fast as a slow answer; `total_s` for
the whole call, from the first attempt to connect to the end of the body.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

# Read no further ahead of the consumer than this; the upstream waits (TCP flow control) until it drains.
_HIGH_WATER = 512 * 1024
_IDEMPOTENT = frozenset({"GET", "OPTIONS", "PUT", "DELETE"})
# Loop turns a connect past its deadline is still given to be seen (see HTTPClient._connect).
_LATE_TURNS = 4


class HTTPClientError(Exception):
    """A call that did not get a complete answer; `message` says what happened."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectError(HTTPClientError):
    """No connection: refused, unreachable, name not found, TLS handshake failed."""


class ConnectTimeout(HTTPClientError):
    """The connection (TCP and TLS) was not up within `connect_s`."""


class ReadTimeout(HTTPClientError):
    """No byte from the server for `read_s`; `first_byte` when none of the response had come yet."""

    def __init__(self, message: str, *, first_byte: bool) -> None:
        super().__init__(message)
        self.first_byte = first_byte


class TotalTimeout(HTTPClientError):
    """The call passed `total_s`."""


class ConnectionDropped(HTTPClientError):
    """The connection closed or broke before the response was complete."""


class InvalidResponse(HTTPClientError):
    """The server answered with bytes that are not valid HTTP/1.1 (or an encoding this client cannot read)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float
    read_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class Origin:
    """Where connections go: scheme, host and port of a URL (one pool each)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def split(cls, url: str) -> tuple[Origin, str]:
        """The origin of an absolute http(s) URL and its request target (path and query)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port), target

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}"


class Response:
    """A response whose head has arrived; read its body with `read()` or piece by piece with `readany()`.

    Call `release()` when done with it (a complete body hands the connection back for the next call;
    anything else closes it).
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_decoder",
        "_done",
        "_draining",
        "_error",
        "_head",
        "_keep_alive",
        "_last",
        "_loop",
        "_paused",
        "_timeouts",
        "_timer",
        "_total_at",
        "_waiter",
        "got_bytes",
        "headers",
        "status",
    )

    def __init__(self, conn: _Conn, timeouts: Timeouts, started: float) -> None:
        loop = conn.loop
        self._loop = loop
        self._conn: _Conn | None = conn
        self._timeouts = timeouts
        self.status = 0
        self.headers: dict[bytes, bytes] = {}  # lower-case names
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._done = False
        self._draining = False
        self._keep_alive = False
        self._paused = False
        self._error: HTTPClientError | None = None
        self._decoder: zlib._Decompress | None = None
        self._head: asyncio.Future[None] | None = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self.got_bytes = False
        self._total_at = started + timeouts.total_s
        self._last = loop.time()
        # One timer per call, armed at the nearest deadline and re-armed only if it fires early.
        self._timer: asyncio.TimerHandle | None = loop.call_at(
            min(self._total_at, self._last + timeouts.read_s), self._on_timer
        )

    # --- what the connection reports -------------------------------------------------------------
    def _on_timer(self) -> None:
        self._timer = None
        if self._done or self._error is not None:
            return
        now = self._loop.time()
        t = self._timeouts
        if now >= self._total_at:
            self._fail(TotalTimeout(f"no complete answer within the total timeout of {t.total_s:g}s"))
        elif now >= self._last + t.read_s and not self._paused:
            first = not self.got_bytes
            what = "no first byte" if first else "no data"
            self._fail(ReadTimeout(f"{what} for {t.read_s:g}s", first_byte=first))
        else:
            gap_at = (now if self._paused else self._last) + t.read_s
            self._timer = self._loop.call_at(min(self._total_at, gap_at), self._on_timer)

    def _on_data(self, now: float) -> None:
        self._last = now
        self.got_bytes = True

    def _on_head(self, status: int) -> bool:
        """The head is in; False for an interim 1xx response, which is skipped for the final one."""
        if 100 <= status < 200:
            self.headers.clear()
            return False
        self.status = status
        enc = self.headers.get(b"content-encoding", b"identity").strip().lower()
        if enc in (b"gzip", b"x-gzip"):
            self._decoder = zlib.decompressobj(wbits=31)
        elif enc == b"deflate":
            # zlib-wrapped, as HTTP means it (or gzip): told apart by the header
            self._decoder = zlib.decompressobj(wbits=47)
        elif enc not in (b"identity", b""):
            self._fail(InvalidResponse(f"the server sent a body encoded as {enc.decode('latin-1')!r}"))
            return True
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(None)
        return True

    def _on_body(self, data: bytes) -> None:
        if self._draining:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause()
        self._wake()

    def _on_complete(self, keep_alive: bool) -> None:
        self._done = True
        self._keep_alive = keep_alive
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._draining:
            self.release()
            return
        self._wake()

    def _on_lost(self, exc: Exception | None) -> None:
        if self._done or self._error is not None:
            return
        te = self.headers.get(b"transfer-encoding", b"").lower()
        if exc is None and self.status and b"content-length" not in self.headers and b"chunked" not in te:
            self._on_complete(False)  # a body delimited by the end of the connection: this is its end
            return
        where = "before the response head" if not self.status else "before the body was complete"
        why = f": {exc}" if exc else ""
        self._fail(ConnectionDropped(f"connection closed by the server {where}{why}"))

    def _fail(self, err: HTTPClientError) -> None:
        if self._error is not None or self._done:
            return
        self._error = err
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(err)
        self._wake()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # --- what the caller uses --------------------------------------------------------------------
    async def _wait_head(self) -> None:
        head = self._head
        if head is not None:
            await head
        elif self._error is not None and not self.status:
            raise self._error

    async def _wait(self) -> None:
        if self._done or self._error is not None:
            return
        if self._conn is None:  # released by its owner before the end: nothing more can come
            self._error = ConnectionDropped("the response was released before its body was read")
            return
        w = self._waiter = self._loop.create_future()
        try:
            await w
        finally:
            self._waiter = None

    def _take_raw(self) -> bytes:
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self._conn is not None:
            self._paused = False
            self._conn.resume()
        return data

    def _decode(self, data: bytes) -> bytes:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
                if self._done:
                    data += self._decoder.flush()
            except zlib.error as e:
                raise InvalidResponse(f"the server's compressed body is corrupt: {e}") from None
        return data

    async def read(self) -> bytes:
        """The whole body (waits for its end)."""
        parts: list[bytes] = []
        while not self._done:
            if self._error is not None:
                raise self._error
            if self._chunks:  # taken as they come, so a body larger than the read-ahead limit flows
                parts.append(self._take_raw())
            await self._wait()
        if self._chunks or not parts:
            parts.append(self._take_raw())
        return self._decode(parts[0] if len(parts) == 1 else b"".join(parts))

    async def readany(self) -> bytes:
        """Whatever arrived since the last call (waits for something); b"" at the end of the body.

        Bytes that arrived before a failure are returned first; the failure is raised on the next call.
        """
        while not self._chunks:
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        return self._decode(self._take_raw())

    def release(self) -> None:
        """Done with this response: the connection goes back to the pool if its body was read whole."""
        conn, self._conn = self._conn, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if conn is None:
            return
        if self._done and self._keep_alive and not self._chunks:
            conn.finished()
            return
        conn.abort()
        if not self._done and self._error is None:  # a reader still waiting (another task) must not hang
            self._error = ConnectionDropped("the response was released before its body was read")
            self._wake()

    def release_after_end(self, limit_s: float = 1.0) -> None:
        """Done with this response although its body has not quite ended (an SSE stream after `[DONE]`,
        whose last bytes, the chunked terminator, may come in a later write): let it end in the background,
        for up to `limit_s`, then hand the connection back for reuse; else close it. Anything still to
        come is discarded."""
        if self._done or self._error is not None or self._conn is None:
            self.release()
            return
        self._draining = True
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._conn.resume()
        self._total_at = min(self._total_at, self._loop.time() + limit_s)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(self._total_at, self._on_timer)


class _Conn(asyncio.Protocol):
    """One keep-alive connection: feeds the bytes it receives to httptools, which calls back below."""

    # One per upstream connection, busy or idle in the pool: thousands at once under many streams.
    __slots__ = (
        "_counted",
        "_interim",
        "_spoiled",
        "client",
        "closed",
        "idle_since",
        "loop",
        "origin",
        "parser",
        "resp",
        "transport",
    )

    def __init__(self, client: HTTPClient, origin: Origin) -> None:
        self.loop = client._loop
        self.client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self._interim = False
        self._spoiled = False
        self._counted = True  # holds one of its origin's connection slots until it closes

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        r = self.resp
        if r is None or r._done:  # bytes nobody asked for: this connection cannot be trusted any more
            self.spoiled()
            return
        r._on_data(self.loop.time())
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if r._done:  # garbage after a complete answer: the answer stands, the connection does not
                self.spoiled()
            else:
                r._fail(InvalidResponse(f"the server's answer is not valid HTTP/1.1: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._uncount()
        if self.resp is not None:
            self.resp._on_lost(exc)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.client._slot_freed(self.origin)

    # httptools callbacks. Anything past the end of the answer (a second response in the same read) is
    # not ours: it spoils the connection but leaves the answer as it was.
    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.resp
        if r is not None and not r._done:
            r.headers[name.lower()] = value
        else:
            self.spoiled()

    def on_headers_complete(self) -> None:
        r = self.resp
        if r is not None and not r._done:
            self._interim = not r._on_head(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        r = self.resp
        if r is not None and not r._done:
            r._on_body(body)

    def on_message_complete(self) -> None:
        r = self.resp
        if self._interim:  # the end of a 1xx response: the real one follows
            self._interim = False
        elif r is not None and not r._done:
            r._on_complete(self.parser.should_keep_alive())

    # used by Response and the pool
    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def spoiled(self) -> None:
        """Bytes arrived that belong to no request: never reuse this connection."""
        self._spoiled = True
        if self.resp is None:
            self.abort()

    def finished(self) -> None:
        self.resp = None
        if self._spoiled:
            self.abort()
        else:
            self.client._put_idle(self)

    def abort(self) -> None:
        self.closed = True
        self.resp = None
        if self.transport is not None:
            self.transport.abort()
        self._uncount()


class HTTPClient:
    """Keep-alive connection pools, one per origin; create inside the event loop that will use it.

    `max_connections_per_origin` caps the connections open to one origin at once (None: no cap); a request
    that finds them all busy waits, in arrival order, for one to come back or close, within its deadline.
    """

    def __init__(
        self,
        *,
        keepalive_s: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        max_connections_per_origin: int | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.keepalive_s = keepalive_s
        self._ssl = ssl_context
        # Idle connections per origin, oldest first: the newest is reused (so the rest age), the oldest expire.
        self._idle: dict[Origin, deque[_Conn]] = {}
        self._closed = False
        self.max_per_origin = max_connections_per_origin
        self._open: dict[Origin, int] = {}  # connections open or opening, per origin
        # Requests waiting for a connection: given an idle one, or None when a slot freed up.
        self._waiters: dict[Origin, deque[asyncio.Future[_Conn | None]]] = {}

    def open_connections(self, origin: Origin) -> int:
        return self._open.get(origin, 0)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # the system's CAs (SSL_CERT_FILE/DIR respected)
        return self._ssl

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: bytes,
        body: bytes = b"",
        *,
        timeouts: Timeouts,
    ) -> Response:
        """Send one request and return once the response head is in.

        `headers` are ready-made header lines (b"Name: value\\r\\n" each), without Host and
        Content-Length, which are added here. A kept-alive connection that the server had already closed
        is replaced once, when not one byte of the answer came back on it, for idempotent methods only
        (as aiohttp does): a POST may have been read before the connection closed, and running a paid
        completion twice is worse than failing over to the next backend.
        """
        if method == "HEAD":
            raise ValueError("HEAD is not supported: this client always reads the body a response declares")
        if self._closed:
            raise ConnectError("the HTTP client is closed")
        loop = self._loop
        started = loop.time()
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
            f"Content-Length: {len(body)}\r\n".encode("latin-1")
            + headers
            + b"\r\n"
        )
        for retry in (False, True):
            conn = self._pop_idle(origin, started)
            reserved = False
            if conn is None and self.max_per_origin is not None and self._full(origin):
                conn = await self._wait_for_slot(origin, timeouts, started)
                reserved = conn is None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin, timeouts, started, reserved)
            resp = conn.resp = Response(conn, timeouts, started)
            assert conn.transport is not None
            if len(body) < 65536:  # one write, one syscall; a large body is not copied for it
                conn.transport.write(head + body)
            else:
                conn.transport.write(head)
                conn.transport.write(body)
            try:
                await resp._wait_head()
            except ConnectionDropped:
                if reused and not retry and not resp.got_bytes and method in _IDEMPOTENT:
                    continue  # the server closed this idle connection as we sent: try a fresh one
                raise
            except BaseException:
                resp.release()
                raise
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def _pop_idle(self, origin: Origin, now: float) -> _Conn | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.abort()
        return None

    def idle_connections(self, origin: Origin) -> int:
        return sum(1 for c in self._idle.get(origin, ()) if not c.closed)

    def _full(self, origin: Origin) -> bool:
        assert self.max_per_origin is not None
        return self._open.get(origin, 0) >= self.max_per_origin or bool(self._waiters.get(origin))

    async def _wait_for_slot(self, origin: Origin, timeouts: Timeouts, started: float) -> _Conn | None:
        """Wait for a connection to `origin` to be released (returned) or to close (None: connect anew)."""
        fut: asyncio.Future[_Conn | None] = self._loop.create_future()
        waiters = self._waiters.setdefault(origin, deque())
        waiters.append(fut)
        left = max(0.0, started + timeouts.total_s - self._loop.time())
        try:
            async with asyncio.timeout(left):
                return await fut
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection to {origin} free within {left:g}s "
                f"({self.max_per_origin} open, the most allowed)"
            ) from None
        except BaseException:
            if fut.done() and not fut.cancelled():  # handed over just as we gave up: pass it on
                conn = fut.result()
                if conn is not None:
                    self._put_idle(conn)
                else:
                    self._slot_freed(origin)
            raise
        finally:
            try:
                waiters.remove(fut)
            except ValueError:
                pass

    def _handoff(self, origin: Origin, conn: _Conn | None) -> bool:
        """Give a returned connection (or a freed slot) to the first waiter still waiting."""
        waiters = self._waiters.get(origin)
        while waiters:
            w = waiters.popleft()
            if not w.done():
                if conn is None:
                    self._open[origin] = self._open.get(origin, 0) + 1  # the slot goes to the waiter
                w.set_result(conn)
                return True
        return False

    def _slot_freed(self, origin: Origin) -> None:
        self._open[origin] = self._open.get(origin, 1) - 1
        if self._waiters.get(origin):
            self._handoff(origin, None)  # the waiter connects on the slot reserved for it

    def _put_idle(self, conn: _Conn) -> None:
        if self._closed or conn.closed:
            conn.abort()
            return
        if self._waiters.get(conn.origin) and self._handoff(conn.origin, conn):
            return
        # Every idle connection is kept until it has been idle keepalive_s: when a burst of streams ends
        # together, the next burst needs them again a moment later (closing all but a fixed number made
        # thousands of new connections a minute under load, queued at the busy upstream). What bounds
        # them is what bounds open connections: the per-origin cap, else the load just carried.
        now = self._loop.time()
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = deque()
        while idle and (idle[0].closed or now - idle[0].idle_since >= self.keepalive_s):
            idle.popleft().abort()
        conn.idle_since = now
        idle.append(conn)

    async def _connect(
        self, origin: Origin, timeouts: Timeouts, started: float, reserved: bool = False
    ) -> _Conn:
        """Open a connection; it holds one of the origin's slots (already `reserved` for a waiter, or taken)."""
        loop = self._loop
        tls = origin.scheme == "https"
        limit = min(timeouts.connect_s, max(0.0, started + timeouts.total_s - loop.time()))
        if not reserved:
            self._open[origin] = self._open.get(origin, 0) + 1
        connecting = loop.create_task(
            loop.create_connection(
                lambda: _Conn(self, origin),
                origin.host,
                origin.port,
                ssl=self._ssl_context() if tls else None,
                server_hostname=origin.host if tls else None,
            )
        )
        try:
            await asyncio.wait((connecting,), timeout=limit)
            # The deadline passed. A loop whose turns take longer than it (thousands of streams) fires the
            # timer before it has looked at a connection that is already up: let it run what is ready, a
            # few turns, before giving up. Without this, 2,000 clients arriving at once made hundreds of 503s
            # "connect timed out" against an upstream on loopback that had accepted every one.
            for _ in range(_LATE_TURNS):
                if connecting.done():
                    break
                await asyncio.sleep(0)
            if not connecting.done():
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
                raise TimeoutError
            _, conn = connecting.result()
        except BaseException as e:
            if not connecting.done():
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
            elif not connecting.cancelled() and connecting.exception() is None:
                connecting.result()[0].abort()  # connected just as we were cancelled: not ours to keep
            self._slot_freed(origin)
            if isinstance(e, TimeoutError):
                raise ConnectTimeout(f"connecting to {origin} took longer than {limit:g}s") from None
            if isinstance(e, ssl.SSLError):
                raise ConnectError(f"TLS handshake with {origin} failed: {e}") from None
            if isinstance(e, OSError):
                raise ConnectError(f"cannot connect to {origin}: {e.strerror or e}") from None
            raise
        return conn

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()


__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionDropped",
    "HTTPClient",
    "HTTPClientError",
    "InvalidResponse",
    "Origin",
    "ReadTimeout",
    "Response",
    "Timeouts",
    "TotalTimeout",
]
