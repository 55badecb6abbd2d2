"""A lean HTTP/1.1 client for the upstream hop: pooled keep-alive connections, answers parsed by llhttp.

Why not aiohttp's ClientSession: it was about 40 % of the gateway's CPU per request (docs/benchmarks.md), for
features the hop never uses (cookies, redirects, decompression, proxies, auth, tracing). Parsing is not ours: the
answer goes through llhttp (httptools), the parser of Node.js and of aiohttp's own C extension. What is ours is the
framing of what we send (a request head and, for a body of unknown length, chunks) and the pool.

Rules that keep framing in step (RFC 9112): a connection goes back to the pool only after a complete answer to a
request sent whole, with no stray byte before or after; anything else closes it. An idempotent request without a
body that meets a pooled connection the upstream had just closed is sent once more on a new one (RFC 9112 §9.3.1).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_NO_CONTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no length sent when they carry no body
_CHUNKED = "Transfer-Encoding: chunked"
_HIGH_WATER = 256 * 1024  # stop reading the upstream socket while this much of an answer waits for the client
_LOW_WATER = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024  # an upstream's answer head larger than this is a broken answer (aiohttp: 8 KiB a line)
MAX_HEADERS = 256


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class UpstreamError(Exception):
    """No usable answer: refused or lost connection, a malformed answer, or an answer cut short."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream URL points: the connection's key and what its requests carry."""

    host: str
    port: int
    tls: bool
    host_header: str  # host[:port], the port only when it is not the scheme's default
    base_path: str  # prefixed to every forwarded path, without a trailing slash


@functools.cache
def origin(url: str) -> Origin:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    default = 443 if tls else 80
    host = parts.hostname or ""
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # an internationalised name, as DNS and Host carry it
    port = parts.port or default
    shown = f"[{host}]" if ":" in host else host
    return Origin(
        host=host,
        port=port,
        tls=tls,
        host_header=shown if port == default else f"{shown}:{port}",
        base_path=parts.path.rstrip("/"),
    )


_HEADER_LINE: Final = ": ".join  # (name, value) -> "name: value", without a Python-level loop


def request_head(method: str, target: str, host: str, headers: Mapping[str, str], framing: str | None) -> bytes:
    """The request line and headers. `framing`: a header line of ours (Transfer-Encoding or Content-Length), or None.

    Every value has passed a parser already (the client's, by aiohttp's server) or been encoded by us; a line break
    in one would still split the head, so the result is checked rather than trusted.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *map(_HEADER_LINE, headers.items())]
    if framing is not None:
        lines.append(framing)
    breaks = len(lines) + 1
    lines += ("", "")  # the head ends with an empty line
    text = "\r\n".join(lines)
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        raise UpstreamError("a request header carries a line break")
    # Values arrive decoded as aiohttp decodes them (UTF-8, undecodable bytes escaped): this restores the bytes.
    return text.encode("utf-8", "surrogateescape")


class UpstreamResponse:
    """One answer: its head at once, its body as it arrives. `release()` it when done, whatever happened."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_connection",
        "_error",
        "_head",
        "_head_bytes",
        "_head_only",
        "_head_timer",
        "_interim",
        "_keep_alive",
        "_parser",
        "_pending",
        "_progress",
        "_raw_headers",
        "_read_timeout",
        "_received",
        "_waiter",
        "_writer",
        "content_length",
        "eof_delimited",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, connection: _Connection, *, head_only: bool, read_timeout: float) -> None:
        self._connection = connection
        self._head_only = head_only
        self._read_timeout = read_timeout
        # The parser holds this answer's callbacks, a reference cycle that release() breaks: left to the cyclic
        # garbage collector, a dozen objects per request made its collections a measurable part of the CPU.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._head_timer: asyncio.TimerHandle | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._pending = 0
        self._progress = False
        self._received = False
        self._interim = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._keep_alive = False
        self._error: UpstreamError | None = None
        self._writer: asyncio.Task[None] | None = None
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.content_length: int | None = None
        self.eof_delimited = False

    # -- fed by the connection ----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._received = True
        self._progress = False
        try:
            self._live_parser().feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(UpstreamError(f"malformed answer: {type(exc).__name__}"))
            self._connection.close()
            return
        # httptools keeps a header line (we keep the reason) until it ends: bytes that complete nothing are bounded,
        # or one endless line would be taken in, and copied at every read, for the whole read timeout.
        if self._progress:
            self._pending = 0
            return
        self._pending += len(data)
        if self._pending > MAX_HEAD_BYTES:
            self.fail(UpstreamError("a line of the answer's head is too long"))
            self._connection.close()

    def lost(self, exc: Exception | None) -> None:
        if exc is None and self._head.done() and not self._complete and self.eof_delimited:
            # A body without length ends where the connection does, when the upstream closes it; a reset (or our
            # own close, which fails the exchange first) cuts it short.
            self._finish(keep_alive=False)
        else:
            self.fail(UpstreamError("the upstream closed the connection"))

    def fail(self, error: UpstreamError) -> None:
        if self._complete or self._error is not None:
            return
        self._error = error
        if not self._head.done():
            self._head_settled()
            self._head.set_exception(error)
            self._head.exception()  # retrieved: a caller that stopped waiting must not leave a warning behind
        self._wake()

    # -- llhttp callbacks ---------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # bytes after a complete answer: the connection's framing is not ours any more
            self._keep_alive = False
            self._connection.close()

    def on_status(self, reason: bytes) -> None:
        self._head_bytes += len(reason)
        self.reason += reason.decode("latin-1")  # in pieces when the status line is split across reads

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES or len(self._raw_headers) >= MAX_HEADERS:
            raise UpstreamError("the answer's head is too large")
        self._raw_headers.append((name, value))
        self._progress = True

    def on_headers_complete(self) -> None:
        self._progress = True
        status = self._live_parser().get_status_code()
        if status < 100:
            raise UpstreamError("a status code below 100")
        if status < 200:  # 100 Continue, 103 Early Hints: the real answer follows on the same connection
            self._interim = True
            self._raw_headers.clear()
            self.reason = ""
            return
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in self._raw_headers:
            headers.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        te = headers.get("Transfer-Encoding")
        chunked = te is not None and te.rsplit(",", 1)[-1].strip().lower() == "chunked"
        length = headers.get("Content-Length")
        if te is None and length is not None:
            self.content_length = int(length)  # llhttp has checked it is one decimal number
        no_body = self._head_only or status in (204, 304)
        self.eof_delimited = not no_body and not chunked and self.content_length is None
        self._head_settled()
        self._head.set_result(None)
        if self._head_only:
            self._finish(keep_alive=self._live_parser().should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self._interim:
            # A 1xx has no content (RFC 9110 §15.2), but llhttp reads one for 1xx codes other than 100-103: taking
            # it as the final answer's would relay bytes past that answer's Content-Length to the client.
            raise UpstreamError("content in an interim answer")
        if self._complete:  # a body after an answer to HEAD
            self._keep_alive = False
            self._connection.close()
            return
        self._progress = True
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._progress = True
        if self._interim:
            self._interim = False
            return
        if not self._complete:
            self._finish(keep_alive=self._live_parser().should_keep_alive())

    # -- for the caller -----------------------------------------------------------------------------------------

    async def wait_head(self) -> None:
        """The read timeout starts once the request is sent whole: an upload may take longer than it (the client's
        pace is bounded by the body timeout, the upstream's by the read timeout on each write)."""
        writer = self._writer
        if writer is not None and not self._head.done():
            await asyncio.wait((self._head, writer), return_when=asyncio.FIRST_COMPLETED)
            # A writer that fails closes the connection, which fails the head too: its own error says more.
            answered = self._head.done() and self._head.exception() is None
            if not answered and writer.done():
                error = None if writer.cancelled() else writer.exception()
                if isinstance(error, TimeoutError):
                    raise TimeoutError("the upstream stopped taking the request body")
                if error is not None:
                    raise UpstreamError("the request body could not be sent") from error
        await self.head_received()

    def head_received(self) -> asyncio.Future[None]:
        """The head's future, bounded by the read timeout: a timer that whatever settles the head cancels (cheaper
        per request than asyncio.timeout() or a coroutine of its own)."""
        head = self._head
        if not head.done() and self._head_timer is None:
            self._head_timer = asyncio.get_running_loop().call_later(self._read_timeout, _time_out, head)
        return head

    def _head_settled(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    async def read_chunk(self) -> bytes:
        """The next piece of the body; b"" at its end. UpstreamError if it was cut short, TimeoutError if the
        upstream went quiet for longer than the read timeout."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(self._read_timeout, _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < _LOW_WATER:
            self._connection.resume_reading()
        return chunk

    def body_if_complete(self) -> bytes | None:
        """The whole body when it has arrived already (a small answer usually comes with its head), else None."""
        if not self._complete or self._error is not None:
            return None
        chunks = self._chunks
        body = b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    async def read(self) -> bytes:
        pieces = []
        while chunk := await self.read_chunk():
            pieces.append(chunk)
        return b"".join(pieces)

    def _live_parser(self) -> httptools.HttpResponseParser:
        if self._parser is None:
            raise UpstreamError("the answer was released")  # its connection feeds it nothing more
        return self._parser

    def release(self) -> None:
        """Back to the pool if the exchange ended cleanly and was read to the end; closed otherwise."""
        self._head_settled()  # a caller cancelled while it waited for the head
        self._parser = None
        connection = self._connection
        if connection.exchange is not self:
            return
        connection.exchange = None
        writer = self._writer
        clean = self._complete and self._keep_alive and not self._chunks and self._error is None
        if writer is not None:
            if not writer.done():
                writer.cancel()  # the upstream answered before taking the whole body
                clean = False
            elif writer.cancelled() or writer.exception() is not None:
                clean = False
        if clean:
            connection.pool.put(connection)
        else:
            connection.close()

    def _finish(self, *, keep_alive: bool) -> None:
        self._complete = True
        self._keep_alive = keep_alive
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_drain",
        "_paused",
        "exchange",
        "holds_slot",
        "idle_since",
        "key",
        "lost",
        "pool",
        "reading",
        "transport",
    )

    def __init__(self, pool: UpstreamClient, key: Origin) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.exchange: UpstreamResponse | None = None
        self.lost = False
        self.holds_slot = False  # set once _acquire has it: until then, its slot is _acquire's to free
        self.reading = True
        self.idle_since = 0.0
        self._paused = False
        self._drain: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, hence no isinstance check).
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # nobody asked: an idle connection's framing can no longer be trusted
            self.close()
            return
        exchange.feed(data)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost ends the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.exchange is not None:
            self.exchange.lost(exc)
        self._wake_drain()
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    async def drain(self) -> None:
        if self.lost:
            raise UpstreamError("the upstream closed the connection")
        if self._paused:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
            if self.lost:
                raise UpstreamError("the upstream closed the connection")

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_reading(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.reading and self.transport is not None and not self.lost:
            self.reading = True
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.exchange is not None:
            self.exchange.fail(UpstreamError("the exchange was cut short"))
        if self.transport is not None and not self.lost:
            self.transport.abort()  # nothing in flight is worth flushing on a connection whose framing is off


class UpstreamClient:
    """Keep-alive connections to every upstream, at most `limit` in all; idle ones close after `keepalive`."""

    def __init__(self, *, limit: int = 1024, keepalive: float = 30.0) -> None:
        self._limit = limit
        self._keepalive = keepalive
        self._idle: dict[Origin, collections.deque[_Connection]] = {}
        self._open = 0
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._tls: ssl.SSLContext | None = None

    @property
    def open_connections(self) -> int:
        return self._open

    async def send(
        self,
        url: str,
        method: str,
        target: str,
        headers: Mapping[str, str],
        *,
        body: AsyncIterator[bytes] | None,
        connect_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send a request and wait for the head of its answer. `url`: the upstream's base URL; `target`: path and
        query, as forwarded. TimeoutError when the upstream cannot be reached or does not answer in time."""
        if not isinstance(headers, CIMultiDict | CIMultiDictProxy):
            headers = CIMultiDict(headers)  # framing looks up Content-Length, in whatever case it was given
        key = origin(url)
        full_target = key.base_path + target
        framing = None
        if "Content-Length" not in headers:
            if body is not None:
                framing = _CHUNKED
            elif method not in _NO_CONTENT_METHODS:
                framing = "Content-Length: 0"  # as aiohttp's client sent: some servers refuse a POST without (411)
        # The client's Content-Length frames the body we send, so it must be the length of what we send: bytes past
        # it would be read as a second request. (The server is told not to inflate bodies; this holds regardless.)
        length = None if framing is not None or body is None else int(headers["Content-Length"])
        head = request_head(method, full_target, key.host_header, headers, framing)
        retry = body is None and method in _IDEMPOTENT
        while True:
            # A pooled connection is taken without a coroutine of its own: the common case, once per request.
            connection = self._pooled(key)
            reused = connection is not None
            if connection is None:
                connection, reused = await self._acquire(key, connect_timeout)
            response = UpstreamResponse(connection, head_only=method == "HEAD", read_timeout=read_timeout)
            connection.exchange = response
            connection.write(head)
            if body is not None:
                response._writer = asyncio.create_task(
                    _send_body(connection, body, length=length, read_timeout=read_timeout)
                )
            try:
                if body is None:
                    await response.head_received()
                else:
                    await response.wait_head()
            except UpstreamError:
                response.release()
                if retry and reused and not response._received:
                    retry = False  # a pooled connection the upstream closed as we sent: once more, on a new one
                    continue
                raise
            except BaseException:
                response.release()
                raise
            return response

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamError("the client is closed"))

    # -- the pool ------------------------------------------------------------------------------------------------

    async def _acquire(self, key: Origin, connect_timeout: float) -> tuple[_Connection, bool]:
        connection = self._pooled(key)
        if connection is not None:
            return connection, True
        async with asyncio.timeout(connect_timeout):  # the wait for a free slot counts, so a full pool is a 504
            while self._open >= self._limit:
                if self._closed:
                    raise UpstreamError("the client is closed")
                self._close_oldest_idle()  # its slot comes back when it is gone, to the first waiter
                await self._wait_for_slot()
                connection = self._pooled(key)  # woken by a connection going back to the pool, perhaps ours
                if connection is not None:
                    return connection, True
            if self._closed:
                raise UpstreamError("the client is closed")
            self._open += 1
            try:
                connection = await self._connect(key)
            except BaseException:
                self._release_slot()
                raise
            connection.holds_slot = True
            return connection, False

    def _pooled(self, key: Origin) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have been closed
            if not connection.lost:
                return connection
        return None

    async def _wait_for_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake_one()  # woken, then cancelled before it ran: the wake-up goes to the next in line
            raise
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)

    def _close_oldest_idle(self) -> None:
        """Idle connections hold slots too (aiohttp's limit counted only those in use): at the limit, one that
        waits for a request of its upstream must not keep another upstream's request waiting."""
        oldest = min((idle for idle in self._idle.values() if idle), key=lambda idle: idle[0].idle_since, default=None)
        if oldest is not None:
            oldest.popleft().close()

    def _release_slot(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, key: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if key.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self, key),
                key.host,
                key.port,
                ssl=tls,
                server_hostname=key.host if tls is not None else None,
            )
        except OSError as exc:  # refused, unreachable, DNS, TLS: no answer is coming
            raise UpstreamError(f"cannot connect: {type(exc).__name__}") from exc
        return connection

    def put(self, connection: _Connection) -> None:
        if self._closed or connection.lost:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.key, collections.deque()).append(connection)
        self._wake_one()  # a request waiting at the limit takes it (or closes it, if it is for another upstream)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive, self._sweep)

    def forget(self, connection: _Connection) -> None:
        """Called once per connection, when it is gone: frees its slot and drops it from the idle list. A connection
        made as its connect was cancelled never held one: _acquire freed that slot."""
        idle = self._idle.get(connection.key)
        if idle is not None and connection in idle:
            idle.remove(connection)
        if connection.holds_slot:
            self._release_slot()

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = time.monotonic() - self._keepalive
        remaining = False
        for idle in self._idle.values():
            # Oldest first: each deque is ordered by when its connections went idle.
            while idle and idle[0].idle_since <= cutoff:
                idle.popleft().close()
            remaining = remaining or bool(idle)
        if remaining and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive / 2, self._sweep)


async def _send_body(
    connection: _Connection, body: AsyncIterator[bytes], *, length: int | None, read_timeout: float
) -> None:
    """Write the body as it comes: `length` bytes exactly, or in chunks when it is None. Any failure (the client's
    413 or 408 included) closes the connection: a body cut short must never be taken by the upstream for a complete
    one, and bytes past `length` would be read as another request."""
    left = length
    try:
        async for piece in body:
            if not piece:
                continue
            if left is None:
                connection.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            elif len(piece) > left:
                raise UpstreamError("the request body is longer than its Content-Length")
            else:
                left -= len(piece)
                connection.write(piece)
            async with asyncio.timeout(read_timeout):  # an upstream that stops reading is a stalled upstream
                await connection.drain()
        if left is None:
            connection.write(_LAST_CHUNK)
        elif left:
            raise UpstreamError("the request body is shorter than its Content-Length")
    except BaseException:
        connection.close()
        raise


_LAST_CHUNK: Final = b"0\r\n\r\n"


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the upstream did not answer within its read timeout"))
