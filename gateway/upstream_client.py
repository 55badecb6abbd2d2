"""A lean HTTP/1.1 client for the upstream hop: pooled keep-alive connections; answers in upstream_answer.py.

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

from multidict import CIMultiDict, CIMultiDictProxy

from .upstream_answer import UpstreamError, UpstreamResponse

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_NO_CONTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no length sent when they carry no body
_CHUNKED = "Transfer-Encoding: chunked"


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
