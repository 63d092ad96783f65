"""The upstream HTTP client (hybridgate.transport) against real loopback servers writing exact bytes."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from hybridgate.transport import (
    ConnectError,
    ConnectionDropped,
    ConnectTimeout,
    HTTPClient,
    InvalidResponse,
    Origin,
    ReadTimeout,
    Timeouts,
    TotalTimeout,
)

FAST = Timeouts(connect_s=0.5, read_s=0.5, total_s=1.5)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Request:
    """One request as the server read it off the wire."""

    raw: bytes
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class Peer:
    """The server's side of one accepted connection."""

    def __init__(
        self, server: Server, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ):
        self.server = server
        self.index = index
        self.reader = reader
        self.writer = writer
        self.requests: list[Request] = []
        self.saw_eof = False

    async def request(self) -> Request | None:
        """The next request, or None once the client has closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.saw_eof = True
            return None
        req = Request(head + body, method, target, headers, body)
        self.requests.append(req)
        self.server.requests.append(req)
        return req

    async def send(self, *parts: bytes, pause: float = 0.0) -> None:
        """Write each part (flushed), sleeping `pause` between them."""
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            self.writer.write(part)
            await self.writer.drain()

    async def wait_eof(self) -> None:
        """Wait until the client closes the connection (nothing more is expected from it)."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.saw_eof = True

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Peer], Awaitable[None]]


class Server:
    """A raw asyncio server on 127.0.0.1: counts the connections it accepts and records every request."""

    def __init__(self, handler: Handler, scheme: str) -> None:
        self.handler = handler
        self.scheme = scheme
        self.peers: list[Peer] = []
        self.requests: list[Request] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def connections(self) -> int:
        return len(self.peers)

    @property
    def origin(self) -> Origin:
        return Origin(self.scheme, "127.0.0.1", self.port)

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        peer = Peer(self, len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            writer.close()
            self.tasks.discard(task)


@asynccontextmanager
async def serve(handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(handler, "https" if ssl_context else "http")
    listener = await asyncio.start_server(server.on_connect, "127.0.0.1", 0, ssl=ssl_context)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for task in list(server.tasks):
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)
        await listener.wait_closed()


def keep_answering(response: bytes) -> Handler:
    """Answer every request on a connection with the same bytes, until the client closes it."""

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(response)

    return handler


async def fetch(client: HTTPClient, origin: Origin, target: str = "/") -> tuple[int, bytes]:
    """One GET, read whole and released: (status, body)."""
    resp = await client.request(origin, "GET", target, b"", timeouts=FAST)
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


async def until(predicate: Callable[[], bool], within: float = 1.0) -> None:
    """Wait (polling) until `predicate()` holds; fail the test if it does not `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def chunk(piece: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(piece), piece)


def chunked(*pieces: bytes) -> bytes:
    """A whole chunked body: the pieces, then the last chunk."""
    return b"".join(map(chunk, pieces)) + b"0\r\n\r\n"


def encoded(encoding: bytes, body: bytes) -> bytes:
    """A whole Content-Length answer whose body is sent with `encoding`."""
    return b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        encoding,
        len(body),
        body,
    )


@pytest.fixture
async def client() -> AsyncIterator[HTTPClient]:
    c = HTTPClient()
    yield c
    await c.close()


# --- the request and a Content-Length answer --------------------------------------------------------------


async def test_read_returns_the_exact_content_length_body_with_status_and_lower_case_headers(
    client: HTTPClient,
) -> None:
    body = bytes(range(256)) * 4
    answer = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Request-ID: abc\r\n"
    answer += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    async with serve(keep_answering(answer)) as server:
        resp = await client.request(server.origin, "POST", "/v1/x", b"", b"{}", timeouts=FAST)
        assert resp.status == 201
        assert resp.headers == {
            b"content-type": b"application/json",
            b"x-request-id": b"abc",
            b"content-length": str(len(body)).encode(),
        }
        assert await resp.read() == body
        resp.release()


async def test_sends_request_line_host_with_port_content_length_header_lines_and_body(
    client: HTTPClient,
) -> None:
    async with serve(keep_answering(OK)) as server:
        headers = b"Content-Type: application/json\r\nAuthorization: Bearer k\r\n"
        resp = await client.request(server.origin, "POST", "/v1/chat?x=1", headers, b'{"a":1}', timeouts=FAST)
        assert await resp.read() == b"ok"
        resp.release()
        (req,) = server.requests
        assert req.raw == (
            b"POST /v1/chat?x=1 HTTP/1.1\r\n"
            b"Host: 127.0.0.1:%d\r\n"
            b"Content-Length: 7\r\n"
            b"Content-Type: application/json\r\n"
            b"Authorization: Bearer k\r\n"
            b"\r\n"
            b'{"a":1}' % server.port
        )
        assert (req.method, req.target, req.body) == ("POST", "/v1/chat?x=1", b'{"a":1}')
        assert req.headers["host"] == f"127.0.0.1:{server.port}"


async def test_a_call_without_a_body_sends_content_length_zero(client: HTTPClient) -> None:
    async with serve(keep_answering(OK)) as server:
        assert await fetch(client, server.origin, "/health") == (200, b"ok")
        (req,) = server.requests
        assert (req.method, req.target, req.headers["content-length"], req.body) == (
            "GET",
            "/health",
            "0",
            b"",
        )


async def test_sends_a_large_request_body_whole(client: HTTPClient) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: past the size sent in the same write as the head
    async with serve(keep_answering(OK)) as server:
        resp = await client.request(server.origin, "POST", "/big", b"", body, timeouts=FAST)
        assert await resp.read() == b"ok"
        resp.release()
        (req,) = server.requests
        assert req.headers["content-length"] == str(len(body))
        assert req.body == body


# --- keep-alive -----------------------------------------------------------------------------------------


async def test_reuses_a_kept_alive_connection_for_the_next_call(client: HTTPClient) -> None:
    async with serve(keep_answering(OK)) as server:
        for _ in range(3):
            assert await fetch(client, server.origin) == (200, b"ok")
        assert server.connections == 1
        assert len(server.peers[0].requests) == 3


async def test_concurrent_calls_use_separate_connections_that_are_then_both_reused(
    client: HTTPClient,
) -> None:
    async def slow_ok(peer: Peer) -> None:
        while await peer.request() is not None:
            await asyncio.sleep(0.05)
            await peer.send(OK)

    async with serve(slow_ok) as server:
        results = await asyncio.gather(*(fetch(client, server.origin) for _ in range(2)))
        assert results == [(200, b"ok")] * 2
        assert server.connections == 2
        results = await asyncio.gather(*(fetch(client, server.origin) for _ in range(2)))
        assert results == [(200, b"ok")] * 2
        assert server.connections == 2
        assert [len(p.requests) for p in server.peers] == [2, 2]


async def test_a_response_released_before_its_end_closes_the_connection(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await peer.wait_eof()
        else:
            await keep_answering(OK)(peer)

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        assert await resp.readany() == b"abc"
        resp.release()
        await until(lambda: server.peers[0].saw_eof)
        assert await fetch(client, server.origin) == (200, b"ok")
        assert server.connections == 2


async def test_a_whole_body_left_unread_closes_the_connection_on_release(client: HTTPClient) -> None:
    async with serve(keep_answering(OK)) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        await asyncio.sleep(0.02)  # the body is in, but never read
        resp.release()
        await until(lambda: server.peers[0].saw_eof)
        assert await fetch(client, server.origin) == (200, b"ok")
        assert server.connections == 2


async def test_reading_after_an_early_release_raises_connection_dropped(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await peer.wait_eof()

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        resp.release()
        with pytest.raises(ConnectionDropped, match="released"):
            await resp.read()


async def test_connection_close_in_the_response_makes_the_next_call_open_a_new_connection(
    client: HTTPClient,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await peer.wait_eof()  # the client, not the server, closes it

    async with serve(handler) as server:
        assert await fetch(client, server.origin) == (200, b"ok")
        await until(lambda: server.peers[0].saw_eof)
        assert await fetch(client, server.origin) == (200, b"ok")
        assert server.connections == 2


async def test_an_idle_connection_older_than_keepalive_s_is_not_reused() -> None:
    client = HTTPClient(keepalive_s=0.05)
    try:
        async with serve(keep_answering(OK)) as server:
            assert await fetch(client, server.origin) == (200, b"ok")
            await asyncio.sleep(0.1)
            assert await fetch(client, server.origin) == (200, b"ok")
            assert server.connections == 2
            await until(lambda: server.peers[0].saw_eof)
    finally:
        await client.close()


# --- body framings ------------------------------------------------------------------------------------


async def test_read_returns_a_whole_chunked_body(client: HTTPClient) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
        b"hello ", b"chunked ", b"world"
    )
    async with serve(keep_answering(answer)) as server:
        assert await fetch(client, server.origin) == (200, b"hello chunked world")
        assert await fetch(client, server.origin) == (200, b"hello chunked world")
        assert server.connections == 1


async def test_readany_returns_pieces_as_the_server_sends_them_then_empty_at_the_end(
    client: HTTPClient,
) -> None:
    next_piece = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await next_piece.wait()
        await asyncio.sleep(0.02)
        await peer.send(b"6\r\nsecond\r\n")
        await asyncio.sleep(0.02)
        await peer.send(b"0\r\n\r\n")
        await keep_answering(OK)(peer)

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/stream", b"", timeouts=FAST)
        assert resp.headers[b"transfer-encoding"] == b"chunked"
        pieces = [await resp.readany()]
        next_piece.set()
        while piece := await resp.readany():
            pieces.append(piece)
        assert pieces == [b"first", b"second"]
        assert await resp.readany() == b""
        resp.release()
        assert await fetch(client, server.origin) == (200, b"ok")
        assert server.connections == 1  # a body read to its end hands the connection back


async def test_read_returns_a_body_delimited_by_the_connection_closing(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"part one, ", b"part two", pause=0.02
        )
        peer.writer.close()

    async with serve(handler) as server:
        assert await fetch(client, server.origin) == (200, b"part one, part two")
        assert await fetch(client, server.origin) == (200, b"part one, part two")
        assert server.connections == 2


async def test_a_content_length_body_cut_short_raises_connection_dropped(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        peer.writer.close()

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        with pytest.raises(ConnectionDropped, match="before the body was complete"):
            await resp.read()
        resp.release()


async def test_a_chunked_body_cut_short_returns_what_came_then_raises_connection_dropped(
    client: HTTPClient,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await asyncio.sleep(0.02)
        peer.writer.close()

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        assert await resp.readany() == b"abc"
        with pytest.raises(ConnectionDropped, match="before the body was complete"):
            await resp.readany()
        resp.release()


# --- stale kept-alive connections ---------------------------------------------------------------------


async def test_a_kept_alive_connection_the_server_closed_while_idle_is_replaced(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        if peer.index == 0:
            peer.writer.close()  # the server's idle timeout, right after answering
        else:
            await keep_answering(OK)(peer)

    async with serve(handler) as server:
        assert await fetch(client, server.origin) == (200, b"ok")
        await asyncio.sleep(0.02)
        assert await fetch(client, server.origin) == (200, b"ok")
        assert server.connections == 2


async def test_a_reused_connection_that_drops_before_answering_is_retried_once_on_a_fresh_one(
    client: HTTPClient,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        if peer.index == 0:
            await peer.request()  # the next call arrives as the server closes the idle connection
            peer.writer.close()
        else:
            await keep_answering(OK)(peer)

    async with serve(handler) as server:
        assert await fetch(client, server.origin) == (200, b"ok")
        assert await fetch(client, server.origin, "/second") == (200, b"ok")
        assert server.connections == 2
        assert [r.target for r in server.requests] == ["/", "/second", "/second"]


async def test_a_post_on_a_reused_connection_that_drops_before_answering_is_not_sent_twice(
    client: HTTPClient,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()  # read, then the connection closes: the server may have acted on it
        peer.writer.close()

    async with serve(handler) as server:
        assert await fetch(client, server.origin) == (200, b"ok")
        with pytest.raises(ConnectionDropped, match="before the response head"):
            resp = await client.request(server.origin, "POST", "/paid", b"", b"{}", timeouts=FAST)
            resp.release()
        await asyncio.sleep(0.05)
        assert [r.target for r in server.requests] == ["/", "/paid"]
        assert server.connections == 1


async def test_a_reused_connection_is_retried_only_once(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(OK)
        await peer.request()
        peer.writer.close()  # every other request is dropped unanswered

    async with serve(handler) as server:
        assert await fetch(client, server.origin) == (200, b"ok")
        with pytest.raises(ConnectionDropped, match="before the response head"):
            await fetch(client, server.origin)
        assert server.connections == 2


async def test_a_fresh_connection_that_drops_before_answering_raises_connection_dropped_without_retry(
    client: HTTPClient,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.writer.close()

    async with serve(handler) as server:
        with pytest.raises(ConnectionDropped, match="before the response head"):
            await fetch(client, server.origin)
        await asyncio.sleep(0.05)
        assert server.connections == 1


async def test_a_reused_connection_that_drops_after_part_of_the_head_is_not_retried(
    client: HTTPClient,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-")
        peer.writer.close()

    async with serve(handler) as server:
        assert await fetch(client, server.origin) == (200, b"ok")
        with pytest.raises(ConnectionDropped, match="before the response head"):
            await fetch(client, server.origin)
        await asyncio.sleep(0.05)
        assert server.connections == 1


# --- content encodings --------------------------------------------------------------------------------


async def test_read_decodes_a_gzip_body(client: HTTPClient) -> None:
    text = b"a gzip-encoded answer " * 200
    async with serve(keep_answering(encoded(b"gzip", gzip.compress(text)))) as server:
        assert await fetch(client, server.origin) == (200, text)
        assert await fetch(client, server.origin) == (200, text)
        assert server.connections == 1


async def test_read_decodes_a_zlib_wrapped_deflate_body(client: HTTPClient) -> None:
    text = b"a deflate-encoded answer " * 200
    async with serve(keep_answering(encoded(b"deflate", zlib.compress(text)))) as server:
        assert await fetch(client, server.origin) == (200, text)


async def test_readany_decodes_a_chunked_gzip_body_piece_by_piece(client: HTTPClient) -> None:
    text = b"".join(b"event %d\n" % i for i in range(500))
    packed = gzip.compress(text)
    third = len(packed) // 3
    pieces = [packed[:third], packed[third : 2 * third], packed[2 * third :]]

    async def handler(peer: Peer) -> None:
        await peer.request()
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        await peer.send(head, *map(chunk, pieces), b"0\r\n\r\n", pause=0.01)
        await peer.wait_eof()

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        out = []
        while piece := await resp.readany():
            out.append(piece)
        resp.release()
        assert b"".join(out) == text
        assert len(out) > 1


async def test_a_corrupt_gzip_body_raises_invalid_response(client: HTTPClient) -> None:
    async with serve(keep_answering(encoded(b"gzip", b"\x1f\x8b\x08\x00 not really gzip"))) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        with pytest.raises(InvalidResponse, match="corrupt"):
            await resp.read()
        resp.release()


async def test_an_unsupported_content_encoding_raises_invalid_response_and_closes_the_connection(
    client: HTTPClient,
) -> None:
    async with serve(keep_answering(encoded(b"br", b"\x0b\x02\x80hi\x03"))) as server:
        with pytest.raises(InvalidResponse, match="'br'"):
            await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        await until(lambda: server.peers[0].saw_eof)


# --- timeouts -----------------------------------------------------------------------------------------


async def test_a_server_that_never_answers_raises_read_timeout_for_the_first_byte_after_read_s(
    client: HTTPClient,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.wait_eof()

    async with serve(handler) as server:
        started = time.monotonic()
        with pytest.raises(ReadTimeout) as caught:
            await client.request(server.origin, "GET", "/", b"", timeouts=Timeouts(1.0, 0.2, 2.0))
        assert 0.18 <= time.monotonic() - started < 0.6
        assert caught.value.first_byte is True
        assert "no first byte for 0.2s" in caught.value.message
        await until(lambda: server.peers[0].saw_eof)  # the connection is closed, not pooled


async def test_a_body_that_stalls_returns_what_came_then_raises_read_timeout_after_read_s(
    client: HTTPClient,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await peer.wait_eof()

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=Timeouts(1.0, 0.2, 2.0))
        started = time.monotonic()
        assert await resp.readany() == b"abc"
        with pytest.raises(ReadTimeout) as caught:
            await resp.readany()
        assert 0.15 <= time.monotonic() - started < 0.6
        assert caught.value.first_byte is False
        resp.release()
        await until(lambda: server.peers[0].saw_eof)


async def test_a_server_trickling_bytes_past_total_s_raises_total_timeout(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(40):
            await asyncio.sleep(0.05)
            await peer.send(b"x")

    async with serve(handler) as server:
        started = time.monotonic()
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=Timeouts(1.0, 0.2, 0.4))
        with pytest.raises(TotalTimeout, match=r"total timeout of 0\.4s"):
            await resp.read()
        assert 0.38 <= time.monotonic() - started < 0.8
        resp.release()


async def test_a_head_trickling_past_total_s_raises_total_timeout_from_the_call(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n":
            await asyncio.sleep(0.05)
            await peer.send(bytes([byte]))

    async with serve(handler) as server:
        started = time.monotonic()
        with pytest.raises(TotalTimeout):
            await client.request(server.origin, "GET", "/", b"", timeouts=Timeouts(1.0, 0.2, 0.4))
        assert 0.38 <= time.monotonic() - started < 0.8


async def test_a_tls_handshake_that_never_completes_raises_connect_timeout_after_connect_s() -> None:
    async def silent(peer: Peer) -> None:
        await peer.wait_eof()

    client = HTTPClient(ssl_context=ssl.create_default_context())
    try:
        async with serve(silent) as server:
            origin = Origin("https", "127.0.0.1", server.port)
            started = time.monotonic()
            with pytest.raises(ConnectTimeout):
                await client.request(origin, "GET", "/", b"", timeouts=Timeouts(0.2, 1.0, 2.0))
            assert 0.18 <= time.monotonic() - started < 0.6
    finally:
        await client.close()


async def test_a_consumer_slower_than_read_s_pauses_the_server_without_timing_out(client: HTTPClient) -> None:
    size = 24 * 1024 * 1024
    sent_all = asyncio.Event()

    async def handler(peer: Peer) -> None:
        peer.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size, b"z" * size)
        sent_all.set()
        await keep_answering(OK)(peer)

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=Timeouts(1.0, 0.15, 5.0))
        await asyncio.sleep(0.5)  # over three times read_s, reading nothing
        assert not sent_all.is_set()  # the client stopped reading, so the server is held back
        pieces = []
        while piece := await resp.readany():
            pieces.append(piece)
        resp.release()
        body = b"".join(pieces)
        assert len(body) == size
        assert body.count(b"z") == size
        assert sent_all.is_set()
        assert await fetch(client, server.origin) == (200, b"ok")
        assert server.connections == 1


# --- failures to connect or to speak HTTP -------------------------------------------------------------


async def test_connection_refused_raises_connect_error_naming_the_origin(client: HTTPClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound but not listening: connecting is refused
        origin = Origin("http", "127.0.0.1", sock.getsockname()[1])
        with pytest.raises(ConnectError) as caught:
            await client.request(origin, "GET", "/", b"", timeouts=FAST)
    assert f"cannot connect to http://127.0.0.1:{origin.port}" in caught.value.message


async def test_garbage_instead_of_http_raises_invalid_response(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"hello\r\n\r\n")
        await peer.wait_eof()

    async with serve(handler) as server:
        with pytest.raises(InvalidResponse, match=r"not valid HTTP/1\.1"):
            await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        await until(lambda: server.peers[0].saw_eof)


# --- cancellation and closing -------------------------------------------------------------------------


async def test_cancelling_a_call_waiting_for_the_head_closes_its_connection(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.wait_eof()
        else:
            await keep_answering(OK)(peer)

    async with serve(handler) as server:
        slow = Timeouts(connect_s=1.0, read_s=1.0, total_s=2.0)  # no deadline closes it in this test
        call = asyncio.create_task(client.request(server.origin, "GET", "/", b"", timeouts=slow))
        await until(lambda: len(server.requests) == 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await until(lambda: server.peers[0].saw_eof, within=0.3)
        assert await fetch(client, server.origin) == (200, b"ok")
        assert server.connections == 2


async def test_close_closes_idle_connections_and_refuses_new_calls(client: HTTPClient) -> None:
    async with serve(keep_answering(OK)) as server:
        assert await fetch(client, server.origin) == (200, b"ok")
        await client.close()
        await until(lambda: server.peers[0].saw_eof)
        with pytest.raises(ConnectError, match="closed"):
            await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        assert server.connections == 1


async def test_a_connection_in_use_during_close_is_closed_when_released(client: HTTPClient) -> None:
    async with serve(keep_answering(OK)) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        await client.close()
        assert await resp.read() == b"ok"
        resp.release()
        await until(lambda: server.peers[0].saw_eof)


# --- Origin -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin", "target", "host_header"),
    [
        ("http://example.com", Origin("http", "example.com", 80), "/", "example.com"),
        ("https://api.example.com/v1", Origin("https", "api.example.com", 443), "/v1", "api.example.com"),
        ("http://127.0.0.1:8000/v1/chat", Origin("http", "127.0.0.1", 8000), "/v1/chat", "127.0.0.1:8000"),
        ("https://h:8443/a?b=1&c=2", Origin("https", "h", 8443), "/a?b=1&c=2", "h:8443"),
        ("http://h:443/", Origin("http", "h", 443), "/", "h:443"),
        ("https://h:80/", Origin("https", "h", 80), "/", "h:80"),
        ("http://h?q=1#frag", Origin("http", "h", 80), "/?q=1", "h"),
        ("http://[::1]:8080/health", Origin("http", "::1", 8080), "/health", "[::1]:8080"),
        ("https://[::1]/", Origin("https", "::1", 443), "/", "[::1]"),
    ],
)
def test_origin_split_gives_origin_target_and_host_header(
    url: str, origin: Origin, target: str, host_header: str
) -> None:
    assert Origin.split(url) == (origin, target)
    assert origin.host_header == host_header
    assert str(origin) == f"{origin.scheme}://{host_header}"


@pytest.mark.parametrize("url", ["ftp://h/x", "/v1/chat", "localhost:8000", "http:///path", "h/v1"])
def test_origin_split_rejects_what_is_not_an_absolute_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="not an absolute http"):
        Origin.split(url)


# --- TLS ----------------------------------------------------------------------------------------------


@pytest.fixture
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a cert for 127.0.0.1, client context trusting its CA)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def test_https_call_with_a_context_trusting_the_ca_succeeds_and_reuses_its_connection(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    client = HTTPClient(ssl_context=client_ctx)
    try:
        async with serve(keep_answering(OK), ssl_context=server_ctx) as server:
            assert server.origin.scheme == "https"
            assert await fetch(client, server.origin) == (200, b"ok")
            assert await fetch(client, server.origin) == (200, b"ok")
            assert server.connections == 1
            assert server.requests[0].headers["host"] == f"127.0.0.1:{server.port}"
    finally:
        await client.close()


async def test_https_call_with_the_default_context_fails_the_tls_handshake(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, _ = tls
    client = HTTPClient()
    try:
        async with serve(keep_answering(OK), ssl_context=server_ctx) as server:
            with pytest.raises(ConnectError) as caught:
                await fetch(client, server.origin)
            assert f"TLS handshake with https://127.0.0.1:{server.port} failed" in caught.value.message
            assert server.requests == []
    finally:
        await client.close()


# --- found by these tests, and fixed --------------------------------------------------------------------


async def test_read_returns_a_body_larger_than_the_read_ahead_limit(client: HTTPClient) -> None:
    body = b"y" * (1024 * 1024)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    async with serve(keep_answering(answer)) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=Timeouts(1.0, 0.3, 0.5))
        try:
            assert await resp.read() == body
        finally:
            resp.release()


async def test_bytes_past_the_end_of_a_response_do_not_break_the_next_call(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK + b"GARBAGE")  # a server that writes more than its Content-Length
        await keep_answering(OK)(peer)

    async with serve(handler) as server:
        assert await fetch(client, server.origin) == (200, b"ok")
        assert await fetch(client, server.origin) == (200, b"ok")


async def test_bytes_past_the_end_of_a_response_do_not_change_its_status(client: HTTPClient) -> None:
    extra = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
    async with serve(keep_answering(OK + extra)) as server:
        assert await fetch(client, server.origin) == (200, b"ok")


async def test_an_interim_1xx_response_is_skipped_for_the_final_one(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", OK, pause=0.05)
        await keep_answering(OK)(peer)

    async with serve(handler) as server:
        assert await fetch(client, server.origin) == (200, b"ok")


async def test_head_is_refused_since_the_parser_would_wait_for_the_declared_body(client: HTTPClient) -> None:
    with pytest.raises(ValueError, match="HEAD"):
        await client.request(Origin("http", "127.0.0.1", 9), "HEAD", "/", b"", timeouts=FAST)


async def test_a_reset_during_a_close_delimited_body_is_not_a_complete_body(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one")
        await asyncio.sleep(0.05)
        peer.reset()

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        try:
            with pytest.raises(ConnectionDropped):
                await resp.read()
        finally:
            resp.release()


async def test_release_from_another_task_ends_a_pending_read(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await peer.wait_eof()

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        reader = asyncio.create_task(resp.readany())
        await asyncio.sleep(0.01)
        resp.release()
        with pytest.raises(ConnectionDropped):
            await asyncio.wait_for(reader, 0.3)


async def test_release_after_end_hands_the_connection_back_once_a_late_terminator_arrives(
    client: HTTPClient,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        event = b"data: [DONE]\n\n"
        await peer.send(head + b"%x\r\n" % len(event) + event + b"\r\n")
        await asyncio.sleep(0.05)  # the chunked terminator comes in a later write, as from many servers
        await peer.send(b"0\r\n\r\n")
        await keep_answering(OK)(peer)

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/stream", b"", timeouts=FAST)
        assert await resp.readany() == b"data: [DONE]\n\n"
        resp.release_after_end()
        await asyncio.sleep(0.15)
        assert await fetch(client, server.origin) == (200, b"ok")
        assert server.connections == 1


async def test_release_after_end_closes_the_connection_when_the_end_never_comes(client: HTTPClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        await peer.wait_eof()

    async with serve(handler) as server:
        resp = await client.request(server.origin, "GET", "/", b"", timeouts=FAST)
        assert await resp.readany() == b"part"
        started = time.monotonic()
        resp.release_after_end(limit_s=0.1)
        await until(lambda: server.peers[0].saw_eof, within=1.0)
        assert time.monotonic() - started < 1.0


# --- the idle pool under bursts -------------------------------------------------------------------------


def _held_streams(arrived: list[int], release: asyncio.Event) -> Handler:
    """A chunked answer per request, whose end waits until `release` is set (a burst ending together)."""

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"data: 1\n\n"))
            arrived.append(peer.index)
            await release.wait()
            await peer.send(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    return handler


async def _burst(
    client: HTTPClient, origin: Origin, n: int, arrived: list[int], release: asyncio.Event
) -> None:
    """n streams at once, all open before any ends; they then end together."""

    async def one() -> None:
        resp = await client.request(origin, "POST", "/v1/chat/completions", b"", b"{}", timeouts=SLOW)
        try:
            await resp.read()
        finally:
            resp.release()

    release.clear()
    arrived.clear()
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await until(lambda: len(arrived) == n or any(t.done() for t in tasks), within=10)
    release.set()
    await asyncio.gather(*tasks)


SLOW = Timeouts(connect_s=5, read_s=10, total_s=20)


async def test_connections_are_reused_across_bursts_of_streams_that_end_together() -> None:
    # 300 streams end at once, then 300 start again: every connection of the first burst is reused (the old
    # pool kept 256 idle and closed the rest, which the next burst opened anew).
    client = HTTPClient()
    arrived: list[int] = []
    release = asyncio.Event()
    try:
        async with serve(_held_streams(arrived, release)) as server:
            for _ in range(3):
                await _burst(client, server.origin, 300, arrived, release)
            assert server.connections == 300
            assert client.idle_connections(server.origin) == 300
    finally:
        await client.close()


async def test_the_per_origin_cap_still_bounds_connections_in_a_burst() -> None:
    client = HTTPClient(max_connections_per_origin=20)
    arrived: list[int] = []
    release = asyncio.Event()
    try:
        async with serve(_held_streams(arrived, release)) as server:
            for _ in range(2):
                await _burst(client, server.origin, 20, arrived, release)
            assert server.connections == 20
            assert client.open_connections(server.origin) == 20
            # 60 at once against a cap of 20: they queue, none opens a 21st connection.
            arrived.clear()
            release.set()
            tasks = [asyncio.create_task(fetch_stream(client, server.origin)) for _ in range(60)]
            await asyncio.gather(*tasks)
            assert server.connections == 20
    finally:
        await client.close()


async def fetch_stream(client: HTTPClient, origin: Origin) -> bytes:
    resp = await client.request(origin, "POST", "/", b"", b"{}", timeouts=SLOW)
    try:
        return await resp.read()
    finally:
        resp.release()


async def test_idle_connections_past_keepalive_are_closed_when_others_are_returned() -> None:
    client = HTTPClient(keepalive_s=0.2)
    arrived: list[int] = []
    release = asyncio.Event()
    try:
        async with serve(_held_streams(arrived, release)) as server:
            await _burst(client, server.origin, 5, arrived, release)
            assert client.idle_connections(server.origin) == 5
            await asyncio.sleep(0.3)
            await _burst(client, server.origin, 1, arrived, release)  # reuses the newest, finds it too old
            assert client.idle_connections(server.origin) == 1  # the aged ones were closed, not kept
            await until(lambda: sum(p.saw_eof for p in server.peers) == 5)
    finally:
        await client.close()


def test_a_connect_that_completed_while_the_loop_was_busy_is_not_a_timeout() -> None:
    # Under thousands of streams a loop turn can outlast connect_s: the timer then fires before the loop has
    # looked at a connection the kernel completed long ago. On uvloop (timers run before I/O in a turn) that
    # was a ConnectTimeout, and under load hundreds of 503s against an upstream that had accepted them all.
    from hybridgate._loop import new_event_loop

    async def main() -> tuple[int, bytes]:
        client = HTTPClient()
        try:
            async with serve(keep_answering(OK)) as server:
                t = Timeouts(connect_s=0.05, read_s=2, total_s=3)

                async def get() -> tuple[int, bytes]:
                    resp = await client.request(server.origin, "GET", "/", b"", timeouts=t)
                    try:
                        return resp.status, await resp.read()
                    finally:
                        resp.release()

                task = asyncio.create_task(get())
                for _ in range(2):  # the request is connecting
                    await asyncio.sleep(0)
                time.sleep(0.3)  # noqa: ASYNC251 - one loop turn six times longer than connect_s
                return await task
        finally:
            await client.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        assert runner.run(main()) == (200, b"ok")
