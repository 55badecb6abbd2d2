"""One answer from an upstream, as its connection receives it: its head at once, its body as it arrives.

The bytes are parsed by llhttp (httptools); what is ours is what an answer may be (a bounded head, no content in
an interim answer, nothing after its end) and how its body waits for the client (high and low water marks).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.forward.upstream.errors import UpstreamError
from gateway.forward.upstream.framing import check_interims, check_reason, crlf_run

_HIGH_WATER = 256 * 1024  # stop reading the upstream socket while this much of an answer waits for the client
_LOW_WATER = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024  # an upstream's answer head larger than this is a broken answer (aiohttp: 8 KiB a line)
MAX_HEADERS = 256
MAX_INTERIM = 16  # 1xx answers before the final one


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class Link(Protocol):
    """What an answer needs of the connection it arrives on (connection.py's Connection): no import back."""

    exchange: UpstreamResponse | None

    def close(self) -> None: ...
    def unsent(self) -> int:
        """Bytes written but still waiting in our send buffer."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def recycle(self) -> None:
        """Back to the pool: its framing is in step."""


class UpstreamResponse:
    """One answer: its head at once, its body as it arrives. `release()` it when done, whatever happened."""

    __slots__ = (
        "_before",
        "_buffered",
        "_chunks",
        "_complete",
        "_connection",
        "_early",
        "_error",
        "_head",
        "_head_bytes",
        "_head_only",
        "_head_timer",
        "_interim",
        "_interims",
        "_keep_alive",
        "_parser",
        "_pending",
        "_progress",
        "_raw_headers",
        "_read_timeout",
        "_reason",
        "_received",
        "_reuse",
        "_run",
        "_tail",
        "_waiter",
        "_writer",
        "content_length",
        "eof_delimited",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, connection: Link, *, head_only: bool, read_timeout: float) -> None:
        self._connection = connection
        self._head_only = head_only
        self._read_timeout = read_timeout
        # The parser holds this answer's callbacks, a reference cycle that release() breaks: left to the cyclic
        # garbage collector, a dozen objects per request made its collections a measurable part of the CPU.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._head_timer: asyncio.TimerHandle | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._head_bytes = 0
        self._pending = 0
        self._progress = False
        self._received = False
        self._interim = False
        self._interims = 0
        self._before: list[bytes] | None = []  # the reads before the final head: to check what sits between 1xx
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._keep_alive = False
        self._error: UpstreamError | None = None
        self._writer: asyncio.Task[None] | None = None
        self._reuse = True
        self._run = 0
        self._tail = 0
        self._early = False
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.content_length: int | None = None
        self.eof_delimited = False

    @property
    def received(self) -> bool:
        """Whether any byte of an answer arrived (a pooled connection closed as we sent may be retried if not)."""
        return self._received

    def send_body(self, writer: asyncio.Task[None], *, reuse: bool) -> None:
        """The task that writes the request body: the head waits on it, and release() judges the exchange by it.
        `reuse`: whether the connection may go back to the pool after this exchange (an upstream's
        reuse_after_body)."""
        self._writer = writer
        self._reuse = reuse

    # -- fed by the connection ----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._complete:  # bytes after the answer, even the CR and LF that llhttp skips without a word
            self._spoil()
            return
        if not self._received and data[:1] in (b"\r", b"\n"):
            # llhttp skips line breaks before a status line; they are bytes that no answer of ours accounts for.
            self.fail(UpstreamError("bytes before the answer's status line"))
            self._spoil()
            return
        self._received = True
        self._progress = False
        if self._before is not None:
            self._before.append(data)
        # The run of CR and LF that the bytes so far end with: after the answer's end, llhttp skips those in
        # silence, so a run longer than the answer's own (_tail) means bytes after it.
        last = data[-1] if data else 0
        if last == 10 or last == 13:
            run = crlf_run(data)
            self._run = self._run + run if run == len(data) else run
        else:
            self._run = 0
        try:
            self._live_parser().feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._keep_alive = False
            # An error raised by a callback of ours comes back as the parser's, with ours as its context. Bytes
            # after a complete answer (_AfterTheEnd) stop the parse there: llhttp would go on with this answer's
            # callbacks, and nothing after its end may change it.
            cause = exc.__context__
            if isinstance(cause, _AfterTheEnd):
                self._keep_alive = False
            elif isinstance(cause, UpstreamError):
                self.fail(cause)
            else:
                self.fail(UpstreamError(f"malformed answer: {exc}"))  # llhttp's reason, one of its fixed texts
            self._connection.close()
            return
        if self._complete and self._run > self._tail:
            self._spoil()
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

    def _spoil(self) -> None:
        self._keep_alive = False
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
        if self._complete:
            raise _AfterTheEnd

    def on_status(self, reason: bytes) -> None:
        self._head_bytes += len(reason)
        self._reason += reason  # in pieces when the status line is split across reads

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
        if status == 101:  # nobody asked for an upgrade: the bytes that follow are not HTTP
            raise UpstreamError("101 Switching Protocols to a request that asked for no upgrade")
        if status < 200:  # 100 Continue, 103 Early Hints: the real answer follows on the same connection
            check_reason(self._reason)  # not relayed, but a reference parser refuses the whole stream for it
            self._interim = True
            self._interims += 1
            if self._interims > MAX_INTERIM:
                raise UpstreamError("too many interim answers")
            self._raw_headers.clear()
            self._reason = b""
            return
        if self._writer is not None and (not self._writer.done() or self._connection.unsent()):
            self._early = True  # answered before it can have read the whole request body
        if self._interims:
            check_interims(self._before, self._interims)
        self._before = None
        headers: CIMultiDict[str] = CIMultiDict()
        try:
            # Relayed byte for byte or not at all: aiohttp writes str as UTF-8, so only UTF-8 comes back out
            # unchanged; anything else is refused (502) rather than reshaped (docs/security.md).
            self.reason = check_reason(self._reason)
            for name, value in self._raw_headers:
                headers.add(name.decode(), value.decode().rstrip(" \t"))  # llhttp keeps the OWS after a value
        except UnicodeDecodeError:
            raise UpstreamError("a header of the answer is not UTF-8") from None
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        self._tail = 4  # the head ends with an empty line after a line that is not empty; so does a chunked body
        # Framed by every Transfer-Encoding line, not the first: llhttp frames by them all. Only "chunked" alone is
        # unambiguous (as nginx requires of an upstream); any other coding or list is a 502.
        codings = headers.getall("Transfer-Encoding", ())
        chunked = bool(codings)
        if chunked and (len(codings) != 1 or codings[0].strip().lower() != "chunked"):
            raise UpstreamError("an ambiguous Transfer-Encoding")
        length = headers.get("Content-Length")
        if not chunked and length is not None:
            self.content_length = int(length)  # llhttp has checked it is one decimal number
        no_body = self._head_only or status in (204, 304)
        self.eof_delimited = not no_body and not chunked and self.content_length is None
        self._head_settled()
        self._head.set_result(None)
        if self._head_only:
            self._finish(keep_alive=self._reusable())

    def on_body(self, body: bytes) -> None:
        if self._interim:
            # A 1xx has no content (RFC 9110 §15.2), but llhttp reads one for 1xx codes other than 100-103: taking
            # it as the final answer's would relay bytes past that answer's Content-Length to the client.
            raise UpstreamError("content in an interim answer")
        if self._complete:  # a body after an answer to HEAD
            raise _AfterTheEnd
        self._progress = True
        if self.content_length is not None:  # where the answer ends, with the last byte of its body
            last = body[-1]
            if last == 10 or last == 13:
                run = crlf_run(body)
                self._tail = self._tail + run if run == len(body) else run
            else:
                self._tail = 0
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
            self._finish(keep_alive=self._reusable())

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
        if self._early or not self._reuse:
            clean = False
        if clean:
            connection.recycle()
        else:
            connection.close()

    def _reusable(self) -> bool:
        """Keep-alive as llhttp judges it, and HTTP/1.1: an HTTP/1.0 answer's keep-alive is the old, loose one."""
        parser = self._live_parser()
        return parser.should_keep_alive() and parser.get_http_version() == "1.1"

    def _finish(self, *, keep_alive: bool) -> None:
        self._complete = True
        self._keep_alive = keep_alive
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _AfterTheEnd(Exception):
    """Raised by the parser's callback when a second message starts: it stops the parse there."""


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the upstream did not answer within its read timeout"))
