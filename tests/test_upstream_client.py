"""The upstream hop's HTTP/1.1 client against raw TCP servers scripted byte for byte.

Each server records what it read on every connection and how many it accepted, so framing, keep-alive reuse and
the pool are checked from the wire. Short timeouts only end hangs; nothing asserts on durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import pytest
from multidict import CIMultiDict

from gateway.forward.upstream import UpstreamClient, UpstreamError, UpstreamResponse, origin
from gateway.forward.upstream.answer import _HIGH_WATER, MAX_HEAD_BYTES, MAX_HEADERS
from gateway.forward.upstream.connection import request_head
from tests.support import free_port

SETTLE = 5.0  # the bound on waiting for something that must happen; only reached when a test fails


@dataclass
class Peer:
    """The server's side of one accepted connection."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)
    eof: asyncio.Event = field(default_factory=asyncio.Event)

    async def request(self) -> bytes | None:
        """The next request head, or None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError):
                self.received += exc.partial
            self.eof.set()
            return None
        self.received += head
        return head

    async def read_exactly(self, size: int) -> bytes:
        data = await self.reader.readexactly(size)
        self.received += data
        return data

    async def read_until(self, marker: bytes) -> bytes:
        data = await self.reader.readuntil(marker)
        self.received += data
        return data

    async def read_to_eof(self) -> bytes:
        try:
            data = await self.reader.read()
        except ConnectionError:
            data = b""
        self.received += data
        self.eof.set()
        return data

    async def send(self, *pieces: bytes) -> None:
        """Each piece in its own write, a moment apart, so the client reads them separately."""
        for number, piece in enumerate(pieces):
            if number:
                await asyncio.sleep(0.02)
            self.writer.write(piece)
            await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """asyncio.start_server on 127.0.0.1 with a free port; `handler` scripts each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def accepted(self) -> int:
        return len(self.peers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self.handler(peer)
            await peer.read_to_eof()  # the client closes: recorded in peer.eof
        except (ConnectionError, asyncio.IncompleteReadError):
            peer.eof.set()
        except asyncio.CancelledError:
            pass  # the server stopping: asyncio's start_server would log a cancelled handler as an error
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def stop_listening(self) -> None:
        """New connections are refused; accepted ones go on."""
        assert self._server is not None
        self._server.close()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


def answering(*answers: bytes | list[bytes]) -> Handler:
    """Each request, on whichever connection, gets the next answer (a list: written piece by piece); an answer
    ending in the marker CLOSE closes the connection after it."""
    script = list(answers)

    async def handler(peer: Peer) -> None:
        while script and await peer.request() is not None:
            answer = script.pop(0)
            pieces = answer if isinstance(answer, list) else [answer]
            close = pieces[-1] == CLOSE
            await peer.send(*[piece for piece in pieces if piece != CLOSE])
            if close:
                peer.close()
                return

    return handler


CLOSE = b"<close>"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient()
    yield upstream
    await upstream.close()


async def send(
    client: UpstreamClient,
    url: str,
    target: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: AsyncIterator[bytes] | None = None,
    connect_timeout: float = SETTLE,
    read_timeout: float = SETTLE,
) -> UpstreamResponse:
    return await client.send(
        url,
        method,
        target,
        CIMultiDict(headers or {}),
        body=body,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )


async def fetch(
    client: UpstreamClient,
    url: str,
    target: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: AsyncIterator[bytes] | None = None,
) -> tuple[int, bytes]:
    """Send, read the whole body, release: (status, body)."""
    response = await send(client, url, target, method=method, headers=headers, body=body)
    try:
        return response.status, await response.read()
    finally:
        response.release()


async def settle(condition: Callable[[], bool]) -> None:
    """Wait until `condition` holds (it must, soon): the loop runs the callbacks it depends on."""
    async with asyncio.timeout(SETTLE):
        while not condition():
            await asyncio.sleep(0.01)


async def pieces(*chunks: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for number, chunk in enumerate(chunks):
        if number == fail_after:
            break
        yield chunk
    if fail_after is not None:
        await asyncio.sleep(0.05)  # what was sent so far reaches the server first
        raise RuntimeError("the client's body broke off")


# -- 1. keep-alive reuse and what goes on the wire --------------------------------------------------------------


async def test_sequential_requests_share_one_connection_and_carry_only_given_headers(client: UpstreamClient) -> None:
    async with RawServer(answering(OK, OK, OK)) as server:
        target = "/a/b%2Fc?q=%2F&x=a+b&&y=%7e;z"
        for _ in range(3):
            assert await fetch(client, server.url + "/base/", target, headers={"X-One": "1", "accept": "*/*"}) == (
                200,
                b"ok",
            )
        assert server.accepted == 1
        expected = (
            f"GET /base{target} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-One: 1\r\naccept: */*\r\n\r\n"
        ).encode()
        assert bytes(server.peers[0].received) == expected * 3
        assert client.open_connections == 1


async def test_repeated_header_names_all_go_out(client: UpstreamClient) -> None:
    async with RawServer(answering(OK)) as server:
        headers: CIMultiDict[str] = CIMultiDict([("Cookie", "a=1"), ("Cookie", "b=2")])
        response = await client.send(
            server.url, "GET", "/", headers, body=None, connect_timeout=SETTLE, read_timeout=SETTLE
        )
        await response.read()
        response.release()
        assert server.peers[0].received.endswith(b"\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n")


async def test_answer_headers_and_reason_are_the_upstreams(client: UpstreamClient) -> None:
    answer = b"HTTP/1.1 201 Made It\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(answering([answer[:10], answer[10:]])) as server:
        response = await send(client, server.url)
        assert (response.status, response.reason) == (201, "Made It")
        assert response.headers.getall("set-cookie") == ["a=1", "b=2"]
        assert response.content_length == 0
        assert await response.read() == b""
        response.release()


# -- 2. answers that end the connection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_an_answer_without_keep_alive_is_not_reused(client: UpstreamClient, first: bytes) -> None:
    # The server keeps the connection open: only the answer says it must not be reused.
    async with RawServer(answering(first, OK)) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2
        await settle(lambda: server.peers[0].eof.is_set())


async def test_an_http_1_0_answer_is_never_reused(client: UpstreamClient) -> None:
    # HTTP/1.0's keep-alive is the loose extension that proxies of that age forwarded wrongly (RFC 9112 §C.2.2); the
    # reference of the differential test (h11) never reuses such a connection, and neither do we.
    answer = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(answering(answer, answer)) as server:
        for _ in range(2):
            assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2


async def test_a_line_break_before_an_answer_is_refused(client: UpstreamClient) -> None:
    async with RawServer(answering(b"\r\n" + OK)) as server:
        with pytest.raises(UpstreamError, match="before the answer"):
            await send(client, server.url)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n\n",
    ],
)
async def test_a_line_break_after_an_answer_spoils_the_connection(
    client: UpstreamClient, answer: bytes, split: bool
) -> None:
    """llhttp skips CR and LF between messages without a callback; they are still bytes after the answer."""
    writes = [answer[:-3], answer[-3:]] if split else [answer]  # split: the run of line breaks spans two reads
    async with RawServer(answering(writes, OK)) as server:
        response = await send(client, server.url)
        await response.read()
        response.release()
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2


# -- 3. chunked and eof-delimited bodies -------------------------------------------------------------------------


async def test_a_chunked_answer_split_across_writes_is_decoded(client: UpstreamClient) -> None:
    chunked = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n6\r\n world\r",
        b"\n0\r\nX-Trailer: t\r\n\r\n",
    ]
    async with RawServer(answering(chunked, OK)) as server:
        response = await send(client, server.url)
        assert response.content_length is None and not response.eof_delimited
        assert await response.read() == b"hello world"
        response.release()
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 1  # a complete chunked answer leaves the connection usable


async def test_an_answer_without_length_ends_where_the_connection_does(client: UpstreamClient) -> None:
    eof_delimited = [b"HTTP/1.1 200 OK\r\n\r\nfirst ", b"second", CLOSE]
    async with RawServer(answering(eof_delimited, OK)) as server:
        response = await send(client, server.url)
        assert response.eof_delimited
        assert await response.read() == b"first second"
        response.release()
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2


@pytest.mark.parametrize(
    "codings",
    [
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ],
)
async def test_a_transfer_coding_other_than_chunked_alone_is_refused(client: UpstreamClient, codings: bytes) -> None:
    """Framing by anything but one `chunked` is where llhttp and the next hop could disagree (issue 11, point 3)."""
    answer = [b"HTTP/1.1 200 OK\r\n" + codings + b"\r\n5\r\nabc", CLOSE]
    async with RawServer(answering(answer, OK)) as server:
        with pytest.raises(UpstreamError, match="Transfer-Encoding"):
            await send(client, server.url)
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_end_at_the_head(client: UpstreamClient, status: int) -> None:
    async with RawServer(answering(b"HTTP/1.1 %d X\r\n\r\n" % status, OK)) as server:
        response = await send(client, server.url)
        assert not response.eof_delimited
        assert await response.read() == b""
        response.release()
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 1


# -- 4. bodies cut short -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd", CLOSE],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", CLOSE],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", CLOSE],
    ],
    ids=["content-length", "chunked-between-chunks", "chunked-inside-a-chunk"],
)
async def test_a_body_cut_short_is_an_error(client: UpstreamClient, answer: list[bytes]) -> None:
    async with RawServer(answering(answer)) as server:
        response = await send(client, server.url)
        with pytest.raises(UpstreamError):
            await response.read()
        response.release()
        await settle(lambda: client.open_connections == 0)


async def test_a_head_cut_short_is_an_error(client: UpstreamClient) -> None:
    async with RawServer(answering([b"HTTP/1.1 200 OK\r\nContent-Le", CLOSE])) as server:
        with pytest.raises(UpstreamError):
            await send(client, server.url, method="POST")  # not retried: the answer had begun anyway
        assert server.accepted == 1


# -- 5. HEAD -----------------------------------------------------------------------------------------------------


async def test_head_answer_has_no_body_and_the_connection_is_reused(client: UpstreamClient) -> None:
    async with RawServer(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", OK)) as server:
        response = await send(client, server.url, method="HEAD")
        assert (response.status, response.content_length) == (200, 100)
        assert await response.read() == b""
        response.release()
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 1
        assert server.peers[0].received.startswith(b"HEAD / HTTP/1.1\r\n")


async def test_a_body_after_a_head_answer_closes_the_connection(client: UpstreamClient) -> None:
    async with RawServer(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", OK)) as server:
        response = await send(client, server.url, method="HEAD")
        assert await response.read() == b""
        response.release()
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2


# -- 6. interim answers ------------------------------------------------------------------------------------------


async def test_interim_answers_are_skipped(client: UpstreamClient) -> None:
    answer = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 Fine\r\nX-Real: yes\r\n",
        b"Content-Length: 2\r\n\r\nok",
    ]
    async with RawServer(answering(answer, OK)) as server:
        response = await send(client, server.url)
        assert (response.status, response.reason) == (200, "Fine")
        assert "Link" not in response.headers
        assert response.headers["X-Real"] == "yes"
        assert await response.read() == b"ok"
        response.release()
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 1


# -- 7. bytes nobody asked for -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stray", [OK, b"HTTP/1.1 2", b"junk", b"\x00"], ids=["second-answer", "partial-head", "junk", "nul"]
)
async def test_bytes_after_a_complete_answer_spoil_the_connection(client: UpstreamClient, stray: bytes) -> None:
    async with RawServer(answering(OK + stray, OK)) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2


async def test_bytes_on_an_idle_connection_drop_it(client: UpstreamClient) -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(OK)
            await asyncio.sleep(0.05)  # the client has pooled the connection by now, or soon will
            await peer.send(OK)  # unsolicited: an answer to nothing
            return
        await answering(OK)(peer)

    async with RawServer(handler) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        await settle(lambda: server.peers[0].eof.is_set())
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2


# -- 8. malformed and oversized answers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 abc\r\n\r\n",
        b"HTTPS/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ],
)
async def test_a_malformed_head_is_an_error(client: UpstreamClient, answer: bytes) -> None:
    async with RawServer(answering(answer)) as server:
        with pytest.raises(UpstreamError):
            await send(client, server.url)
        await settle(lambda: client.open_connections == 0)


@pytest.mark.parametrize("chunk", [b"zz\r\nab\r\n0\r\n\r\n", b"2\r\nabc\r\n0\r\n\r\n"], ids=["size", "overrun"])
async def test_a_malformed_chunk_is_an_error(client: UpstreamClient, chunk: bytes) -> None:
    answer = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunk]
    async with RawServer(answering(answer)) as server:
        response = await send(client, server.url)
        with pytest.raises(UpstreamError):
            await response.read()
        response.release()
        await settle(lambda: client.open_connections == 0)


async def test_a_head_larger_than_the_limit_is_an_error(client: UpstreamClient) -> None:
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(answering(big)) as server:
        with pytest.raises(UpstreamError):
            await send(client, server.url)


async def test_a_head_of_many_small_headers_over_the_byte_limit_is_an_error(client: UpstreamClient) -> None:
    line = b"X-H: " + b"v" * (MAX_HEAD_BYTES // (MAX_HEADERS - 10)) + b"\r\n"
    big = b"HTTP/1.1 200 OK\r\n" + line * (MAX_HEADERS - 10) + b"Content-Length: 0\r\n\r\n"
    async with RawServer(answering(big)) as server:
        with pytest.raises(UpstreamError):
            await send(client, server.url)


async def test_more_headers_than_the_limit_is_an_error(client: UpstreamClient) -> None:
    many = b"".join(b"X-%d: v\r\n" % number for number in range(MAX_HEADERS))
    async with RawServer(answering(b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n")) as server:
        with pytest.raises(UpstreamError):
            await send(client, server.url)


async def test_headers_up_to_the_limit_are_taken(client: UpstreamClient) -> None:
    many = b"".join(b"X-%d: v\r\n" % number for number in range(MAX_HEADERS - 1))
    async with RawServer(answering(b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n")) as server:
        response = await send(client, server.url)
        assert len(response.headers) == MAX_HEADERS
        response.release()


# -- 9. stale pooled connections ---------------------------------------------------------------------------------


async def test_a_connection_closed_after_its_answer_is_not_reused(client: UpstreamClient) -> None:
    async with RawServer(answering([OK, CLOSE], OK)) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        await settle(lambda: client.open_connections == 0)
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2


def closing_on_second_request(*, answer_later: bool) -> Handler:
    """Connection 0 answers once and closes when the next request arrives (the upstream's idle timeout racing the
    request); later connections answer (or also close at once)."""

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(OK)
            await peer.request()
            peer.close()
        elif answer_later:
            await answering(OK)(peer)
        else:
            await peer.request()
            peer.close()

    return handler


async def test_an_idempotent_request_on_a_stale_connection_is_sent_once_more(client: UpstreamClient) -> None:
    async with RawServer(closing_on_second_request(answer_later=True)) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        assert await fetch(client, server.url, "/again") == (200, b"ok")
        assert server.accepted == 2
        assert server.peers[1].received.startswith(b"GET /again HTTP/1.1\r\n")


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_request_with_a_body_or_not_idempotent_is_not_resent(client: UpstreamClient, method: str) -> None:
    async with RawServer(closing_on_second_request(answer_later=True)) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        with pytest.raises(UpstreamError):
            await send(client, server.url, method=method, headers={"Content-Length": "4"}, body=pieces(b"data"))
        assert server.accepted == 1


async def test_a_post_without_body_is_not_resent(client: UpstreamClient) -> None:
    async with RawServer(closing_on_second_request(answer_later=True)) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        with pytest.raises(UpstreamError):
            await send(client, server.url, method="POST")
        assert server.accepted == 1


async def test_a_get_with_a_body_is_not_resent(client: UpstreamClient) -> None:
    async with RawServer(closing_on_second_request(answer_later=True)) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        with pytest.raises(UpstreamError):
            await send(client, server.url, body=pieces(b"data"))
        assert server.accepted == 1


async def test_a_get_is_resent_only_once(client: UpstreamClient) -> None:
    async with RawServer(closing_on_second_request(answer_later=False)) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        with pytest.raises(UpstreamError):
            await send(client, server.url)
        assert server.accepted == 2


async def test_a_get_resent_to_a_refusing_upstream_fails(client: UpstreamClient) -> None:
    async with RawServer(closing_on_second_request(answer_later=True)) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        server.stop_listening()
        with pytest.raises(UpstreamError):
            await send(client, server.url)
        assert server.accepted == 1
        assert client.open_connections == 0


async def test_a_get_on_a_new_connection_closed_at_once_is_not_resent(client: UpstreamClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.close()

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamError):
            await send(client, server.url)
        assert server.accepted == 1


# -- 10. the request head ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-A", "a\r\nX-Injected: 1"),
        ("X-A", "a\nX-Injected: 1"),
        ("X-A", "a\rb"),
        ("X-A", "a\0b"),
        ("X-A\r\nX-Injected", "1"),
        ("X\0A", "1"),
    ],
)
async def test_a_line_break_or_nul_in_a_header_sends_nothing(client: UpstreamClient, name: str, value: str) -> None:
    with pytest.raises(UpstreamError):
        request_head("GET", "/", "h", {name: value}, None)
    async with RawServer(answering(OK)) as server:
        with pytest.raises(UpstreamError):
            await send(client, server.url, headers={name: value})
        await asyncio.sleep(0.05)  # a connection, had one been opened, would be accepted by now
        assert server.accepted == 0


@pytest.mark.parametrize("target", ["/a\r\nX-Injected: 1", "/a\0"])
def test_a_line_break_in_the_target_is_refused(target: str) -> None:
    with pytest.raises(UpstreamError):
        request_head("GET", target, "h", {}, None)


def test_request_head_layout() -> None:
    head = request_head("POST", "/p?q", "example.com", {"A": "1"}, "Transfer-Encoding: chunked")
    assert head == b"POST /p?q HTTP/1.1\r\nHost: example.com\r\nA: 1\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_non_ascii_values_go_out_as_their_original_bytes(client: UpstreamClient) -> None:
    raw = b"caf\xc3\xa9 \xff\xfe"  # UTF-8 and bytes that are not UTF-8
    decoded = raw.decode("utf-8", "surrogateescape")
    async with RawServer(answering(OK)) as server:
        assert await fetch(client, server.url, headers={"X-Name": decoded, "X-Text": "ünï"}) == (200, b"ok")
        assert b"\r\nX-Name: " + raw + b"\r\nX-Text: \xc3\xbcn\xc3\xaf\r\n\r\n" in server.peers[0].received


async def test_utf8_answer_values_come_back_as_their_bytes(client: UpstreamClient) -> None:
    raw = b"caf\xc3\xa9 \xe2\x9c\x93"
    head = b"HTTP/1.1 200 \xc3\x9cK\r\nX-V: " + raw + b"\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(answering(head)) as server:
        response = await send(client, server.url)
        assert response.headers["X-V"].encode() == raw
        assert response.reason.encode() == b"\xc3\x9cK"
        response.release()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 302 Found\r\nLocation: /\xff/evil.test/login\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-V: caf\xe9\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 \xffK\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_answer_bytes_that_are_not_utf8_are_refused(client: UpstreamClient, head: bytes) -> None:
    """aiohttp writes what it relays as UTF-8: any other byte would come out changed or not at all (issue 11,
    point 2), so the answer is refused instead."""
    async with RawServer(answering(head)) as server:
        with pytest.raises(UpstreamError, match="not UTF-8"):
            await send(client, server.url)


# -- 11. request bodies ------------------------------------------------------------------------------------------


def body_reader(*, chunked: bool) -> Handler:
    """Reads one request and its body (chunked up to the last chunk, else Content-Length), then answers."""

    async def handler(peer: Peer) -> None:
        head = await peer.request()
        assert head is not None
        if chunked:
            await peer.read_until(b"0\r\n\r\n")
        else:
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
            await peer.read_exactly(length)
        await peer.send(OK)

    return handler


async def test_a_body_of_unknown_length_is_sent_chunked(client: UpstreamClient) -> None:
    async with RawServer(body_reader(chunked=True)) as server:
        body = pieces(b"hello", b"", b" world" * 100)
        assert await fetch(client, server.url, method="POST", body=body) == (200, b"ok")
        head, _, sent = bytes(server.peers[0].received).partition(b"\r\n\r\n")
        assert head.endswith(b"\r\nTransfer-Encoding: chunked")
        assert b"Content-Length" not in head
        assert sent == b"5\r\nhello\r\n258\r\n" + b" world" * 100 + b"\r\n0\r\n\r\n"


async def test_a_body_of_known_length_is_sent_raw(client: UpstreamClient) -> None:
    async with RawServer(body_reader(chunked=False)) as server:
        body = pieces(b"hello", b" world")
        assert await fetch(client, server.url, method="PUT", headers={"content-length": "11"}, body=body) == (
            200,
            b"ok",
        )
        head, _, sent = bytes(server.peers[0].received).partition(b"\r\n\r\n")
        assert b"Transfer-Encoding" not in head
        assert sent == b"hello world"


async def test_an_empty_body_of_unknown_length_is_one_last_chunk(client: UpstreamClient) -> None:
    async with RawServer(body_reader(chunked=True)) as server:
        assert await fetch(client, server.url, method="POST", body=pieces()) == (200, b"ok")
        assert server.peers[0].received.endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")


@pytest.mark.parametrize("length", [None, "100"], ids=["chunked", "content-length"])
async def test_a_body_that_breaks_off_never_looks_complete(client: UpstreamClient, length: str | None) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.read_to_eof()

    async with RawServer(handler) as server:
        headers = {} if length is None else {"Content-Length": length}
        body = pieces(b"part", b"more", b"never", fail_after=2)
        with pytest.raises((UpstreamError, RuntimeError)):
            await send(client, server.url, method="POST", headers=headers, body=body)
        await settle(lambda: server.peers[0].eof.is_set())
        sent = bytes(server.peers[0].received).partition(b"\r\n\r\n")[2]
        if length is None:
            assert sent == b"4\r\npart\r\n4\r\nmore\r\n"  # never the last chunk
        else:
            assert sent == b"partmore"
        await settle(lambda: client.open_connections == 0)


@pytest.mark.parametrize(
    ("method", "framing"),
    [
        ("GET", b""),
        ("HEAD", b""),
        ("OPTIONS", b""),
        ("POST", b"Content-Length: 0\r\n"),
        ("PUT", b"Content-Length: 0\r\n"),
        ("PATCH", b"Content-Length: 0\r\n"),
        ("DELETE", b"Content-Length: 0\r\n"),
    ],
)
async def test_a_request_without_body_carries_a_zero_length_unless_it_is_a_read(
    client: UpstreamClient, method: str, framing: bytes
) -> None:
    answer = b"HTTP/1.1 204 No Content\r\n\r\n"
    async with RawServer(answering(answer)) as server:
        response = await send(client, server.url, "/x", method=method)
        response.release()
        expected = b"%s /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (method.encode(), server.port, framing)
        assert bytes(server.peers[0].received) == expected


async def test_a_given_content_length_is_not_repeated(client: UpstreamClient) -> None:
    async with RawServer(answering(OK)) as server:
        assert await fetch(client, server.url, method="POST", headers={"Content-Length": "0"}) == (200, b"ok")
        assert bytes(server.peers[0].received).lower().count(b"content-length") == 1


@pytest.mark.parametrize(
    ("length", "chunks", "sent"),
    [(4, (b"abc", b"defg"), b"abc"), (10, (b"abc",), b"abc")],
    ids=["longer", "shorter"],
)
async def test_a_body_that_does_not_match_its_content_length_is_cut(
    client: UpstreamClient, length: int, chunks: tuple[bytes, ...], sent: bytes
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.read_to_eof()

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamError):
            await send(client, server.url, method="POST", headers={"Content-Length": str(length)}, body=pieces(*chunks))
        await settle(lambda: server.peers[0].eof.is_set())
        assert bytes(server.peers[0].received).partition(b"\r\n\r\n")[2] == sent  # never a byte past the length
        await settle(lambda: client.open_connections == 0)


async def test_an_answer_before_the_whole_body_closes_the_connection(client: UpstreamClient) -> None:
    stall = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b"start"
        await stall.wait()  # never set: the body is still coming when the upstream answers
        yield b"never"

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(b"HTTP/1.1 413 Too Big\r\nContent-Length: 0\r\n\r\n")
            return
        await answering(OK)(peer)

    async with RawServer(handler) as server:
        response = await send(client, server.url, method="POST", body=endless())
        assert response.status == 413
        assert await response.read() == b""
        response.release()
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2


# -- 12. timeouts and unreachable upstreams ----------------------------------------------------------------------


async def test_an_upstream_that_never_answers_times_out(client: UpstreamClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()

    async with RawServer(handler) as server:
        with pytest.raises(TimeoutError):
            await send(client, server.url, read_timeout=0.2)
        await settle(lambda: server.peers[0].eof.is_set())  # the connection was closed, not pooled
        assert client.open_connections == 0


async def test_a_body_that_stalls_times_out(client: UpstreamClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    async with RawServer(handler) as server:
        response = await send(client, server.url, read_timeout=0.2)
        assert await response.read_chunk() == b"abc"
        with pytest.raises(TimeoutError):
            await response.read_chunk()
        response.release()
        await settle(lambda: server.peers[0].eof.is_set())
        assert client.open_connections == 0


async def test_an_upstream_that_stops_taking_the_body_times_out(client: UpstreamClient) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await asyncio.sleep(SETTLE)  # reads nothing more: the socket buffers fill up

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 1024 * 1024

    async with RawServer(handler) as server:
        with pytest.raises(TimeoutError):
            await send(client, server.url, method="POST", body=endless(), read_timeout=0.2)
        await settle(lambda: client.open_connections == 0)


async def test_a_closed_port_is_an_upstream_error(client: UpstreamClient) -> None:
    with pytest.raises(UpstreamError):
        await send(client, f"http://127.0.0.1:{free_port()}")
    assert client.open_connections == 0


# -- 13. the pool's limit ----------------------------------------------------------------------------------------


async def test_a_full_pool_makes_the_next_request_wait() -> None:
    client = UpstreamClient(limit=1)
    try:
        async with RawServer(answering(OK, OK, OK)) as server:
            held = await send(client, server.url)
            with pytest.raises(TimeoutError):
                await send(client, server.url, connect_timeout=0.2)
            assert client.open_connections == 1
            waiting = asyncio.create_task(fetch(client, server.url))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            assert await held.read() == b"ok"
            held.release()
            assert await waiting == (200, b"ok")
            assert server.accepted == 1  # the released connection served the waiting request
    finally:
        await client.close()


async def test_a_full_pool_frees_a_slot_when_a_connection_closes() -> None:
    client = UpstreamClient(limit=1)
    try:
        async with RawServer(
            answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", OK)
        ) as server:
            held = await send(client, server.url)
            waiting = asyncio.create_task(fetch(client, server.url))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            assert await held.read() == b"ok"
            held.release()
            assert await waiting == (200, b"ok")
            assert server.accepted == 2
    finally:
        await client.close()


async def test_an_idle_connection_to_another_upstream_gives_way_in_a_full_pool() -> None:
    client = UpstreamClient(limit=1)
    try:
        async with RawServer(answering(OK)) as first, RawServer(answering(OK)) as second:
            held = await send(client, first.url)
            waiting = asyncio.create_task(fetch(client, second.url))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            assert await held.read() == b"ok"
            held.release()  # pooled for `first`, but `second` needs the slot
            assert await waiting == (200, b"ok")
            await settle(lambda: first.peers[0].eof.is_set())
            assert client.open_connections == 1
    finally:
        await client.close()


async def test_closing_the_client_ends_a_wait_for_a_slot() -> None:
    client = UpstreamClient(limit=1)
    async with RawServer(answering(OK)) as server:
        held = await send(client, server.url)
        waiting = asyncio.create_task(fetch(client, server.url))
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(UpstreamError):
            await waiting
        await held.read()
        held.release()  # not pooled: the client is closed
        await settle(lambda: server.peers[0].eof.is_set())
        assert client.open_connections == 0


async def test_a_request_cancelled_while_connecting_frees_its_slot_once(client: UpstreamClient) -> None:
    async with RawServer(answering(OK)) as server:
        # Cancelled after 0, 1, 2... turns of the loop: one of them lands between the connection being made and
        # create_connection returning (what a connect timeout firing then does), where the slot was freed twice.
        for turns in range(12):
            sending = asyncio.create_task(send(client, server.url))
            for _ in range(turns):
                await asyncio.sleep(0)
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                (await sending).release()
            await settle(lambda: client.open_connections <= 0)
        await settle(lambda: all(peer.eof.is_set() for peer in server.peers))
        assert client.open_connections == 0


async def test_open_connections_counts_down_as_connections_close(client: UpstreamClient) -> None:
    async with RawServer(answering(OK, OK)) as server:
        first = await send(client, server.url)
        second = await send(client, server.url)
        assert client.open_connections == 2
        for response in (first, second):
            await response.read()
            response.release()
        assert client.open_connections == 2  # both idle in the pool
    await settle(lambda: client.open_connections == 0)  # the server has gone: both closed


async def test_a_closed_client_refuses_requests_and_closes_idle_connections() -> None:
    client = UpstreamClient()
    async with RawServer(answering(OK, OK)) as server:
        assert await fetch(client, server.url) == (200, b"ok")
        await client.close()
        await settle(lambda: server.peers[0].eof.is_set())
        with pytest.raises(UpstreamError):
            await send(client, server.url)
        assert server.accepted == 1


# -- 14. idle connections expire ---------------------------------------------------------------------------------


async def test_idle_connections_close_after_keepalive() -> None:
    client = UpstreamClient(keepalive=0.2)
    try:
        async with RawServer(answering(OK, OK, OK)) as server:
            assert await fetch(client, server.url) == (200, b"ok")
            await settle(lambda: server.peers[0].eof.is_set())
            assert client.open_connections == 0
            assert await fetch(client, server.url) == (200, b"ok")  # a new one; the sweeper runs again
            await settle(lambda: server.accepted == 2 and server.peers[1].eof.is_set())
            assert client.open_connections == 0
    finally:
        await client.close()


# -- 15. origin() ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "host_header", "base_path"),
    [
        ("http://example.com", "example.com", 80, False, "example.com", ""),
        ("http://example.com:80/", "example.com", 80, False, "example.com", ""),
        ("https://example.com/", "example.com", 443, True, "example.com", ""),
        ("https://example.com:443/api/", "example.com", 443, True, "example.com", "/api"),
        ("http://example.com:443", "example.com", 443, False, "example.com:443", ""),
        ("https://example.com:80", "example.com", 80, True, "example.com:80", ""),
        ("http://127.0.0.1:8080/base/v1/", "127.0.0.1", 8080, False, "127.0.0.1:8080", "/base/v1"),
        ("http://[::1]:8080/x", "::1", 8080, False, "[::1]:8080", "/x"),
        ("https://[2001:db8::1]/", "2001:db8::1", 443, True, "[2001:db8::1]", ""),
        ("http://bücher.example:8080", "xn--bcher-kva.example", 8080, False, "xn--bcher-kva.example:8080", ""),
    ],
)
def test_origin(url: str, host: str, port: int, tls: bool, host_header: str, base_path: str) -> None:
    parsed = origin(url)
    assert (parsed.host, parsed.port, parsed.tls, parsed.host_header, parsed.base_path) == (
        host,
        port,
        tls,
        host_header,
        base_path,
    )


# -- 16. flow control --------------------------------------------------------------------------------------------


async def test_a_large_answer_read_slowly_arrives_whole(client: UpstreamClient) -> None:
    size = 8 * 1024 * 1024
    payload = b"".join(number.to_bytes(4, "big") for number in range(size // 4))  # no two pieces alike

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for start in range(0, size, 64 * 1024):
            peer.writer.write(payload[start : start + 64 * 1024])
            await peer.writer.drain()
        await answering(OK)(peer)

    async with RawServer(handler) as server:
        response = await send(client, server.url)
        await asyncio.sleep(0.2)  # not reading: the server pushes what it can
        # Held back: at most the high-water mark plus one read of the socket (256 KiB), not the megabytes sent.
        assert response._buffered <= 2 * _HIGH_WATER
        received = bytearray()
        reads = 0
        while chunk := await response.read_chunk():
            received += chunk
            reads += 1
            if reads % 4 == 0:
                await asyncio.sleep(0.005)  # slower than the server writes: the client must stop reading
        response.release()
        assert len(received) == size
        assert received == payload
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 1


# -- 17. releasing early -----------------------------------------------------------------------------------------


async def test_releasing_an_unread_body_closes_the_connection(client: UpstreamClient) -> None:
    async with RawServer(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", OK)) as server:
        response = await send(client, server.url)
        response.release()
        response.release()  # twice is harmless
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2


async def test_releasing_a_half_read_body_closes_the_connection(client: UpstreamClient) -> None:
    answer = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", b"world"]
    async with RawServer(answering(answer, OK)) as server:
        response = await send(client, server.url)
        assert await response.read_chunk() == b"hello"
        response.release()
        assert await fetch(client, server.url) == (200, b"ok")
        assert server.accepted == 2
        await settle(lambda: server.peers[0].eof.is_set())


# -- 18. memory --------------------------------------------------------------------------------------------------


async def test_an_answer_leaves_no_reference_cycle_behind(client: UpstreamClient) -> None:
    """An answer and its parser (which holds the answer's callbacks) are freed by reference counting once
    released; left to the cyclic collector, a dozen objects per request made its collections cost CPU."""
    async with RawServer(answering(*[OK] * 21)) as server:
        assert await fetch(client, server.url) == (200, b"ok")  # the pooled connection exists from here on
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                assert await fetch(client, server.url) == (200, b"ok")
            left_to_the_collector = gc.collect()
        finally:
            gc.enable()
    assert left_to_the_collector < 20  # at least 11 per request with the cycle
