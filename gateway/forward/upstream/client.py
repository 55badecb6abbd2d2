"""A lean HTTP/1.1 client for the upstream hop: pooled keep-alive connections; connection.py writes, answer.py reads.

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
import ssl
import time
from collections.abc import AsyncIterator, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.forward.upstream.answer import UpstreamResponse
from gateway.forward.upstream.connection import Connection, request_head, send_body
from gateway.forward.upstream.errors import UpstreamError
from gateway.forward.upstream.origin import Origin, origin

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_NO_CONTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no length sent when they carry no body
_CHUNKED = "Transfer-Encoding: chunked"


class UpstreamClient:
    """Keep-alive connections to every upstream, at most `limit` in all; idle ones close after `keepalive`."""

    def __init__(self, *, limit: int = 1024, keepalive: float = 30.0) -> None:
        self._limit = limit
        self._keepalive = keepalive
        self._idle: dict[Origin, collections.deque[Connection]] = {}
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
        reuse_after_body: bool = False,
    ) -> UpstreamResponse:
        """Send a request and wait for the head of its answer. `url`: the upstream's base URL; `target`: path and
        query, as forwarded. TimeoutError when the upstream cannot be reached or does not answer in time.
        `reuse_after_body`: whether the connection may serve another request after one with a body (a connection
        whose answer came before the body was written whole is closed regardless)."""
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
                response.send_body(
                    asyncio.create_task(send_body(connection, body, length=length, read_timeout=read_timeout)),
                    reuse=reuse_after_body,
                )
            try:
                if body is None:
                    await response.head_received()
                else:
                    await response.wait_head()
            except UpstreamError:
                response.release()
                if retry and reused and not response.received:
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

    async def _acquire(self, key: Origin, connect_timeout: float) -> tuple[Connection, bool]:
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

    def _pooled(self, key: Origin) -> Connection | None:
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

    async def _connect(self, key: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if key.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            _, connection = await loop.create_connection(
                lambda: Connection(self, key),
                key.host,
                key.port,
                ssl=tls,
                server_hostname=key.host if tls is not None else None,
            )
        except OSError as exc:  # refused, unreachable, DNS, TLS: no answer is coming
            raise UpstreamError(f"cannot connect: {type(exc).__name__}") from exc
        return connection

    def put(self, connection: Connection) -> None:
        if self._closed or connection.lost:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.key, collections.deque()).append(connection)
        self._wake_one()  # a request waiting at the limit takes it (or closes it, if it is for another upstream)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive, self._sweep)

    def forget(self, connection: Connection) -> None:
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
