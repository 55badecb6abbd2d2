"""The request head bounded in total (`limits.max_head_bytes`), counted as bytes arrive, before the parser keeps them.

aiohttp's parser bounds each line and the number of lines, not their sum: 98 lines of 16 KiB each are accepted and
held while the head is incomplete, per connection. Here a connection's bytes are counted from the start of a head
until the parser has it whole; past the bound the client gets 431 and the connection is closed, and the bytes
that crossed it never reach the parser.

Body bytes are not head bytes: a read is counted up to the end of the head it completes, and nothing is counted
while a body arrives. When a read ends one request and starts the next, the next head's bytes are those after the
last blank line if the request had no body (checked once the parser has them, so one read, at most 256 KiB, may be
spent before the refusal); after a body they cannot be told from it without a second parser and are not counted,
so a head may exceed the bound by at most one read, once per request with a body.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

_BODY = (
    b'{"error":"request_header_fields_too_large",'
    b'"error_description":"the request head is larger than the gateway accepts"}'
)
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
    b"X-Content-Type-Options: nosniff\r\nConnection: close\r\n" + b"Content-Length: %d\r\n\r\n" % len(_BODY) + _BODY
)


_NOT_HTTP_BODY = b'{"error":"invalid_request","error_description":"only HTTP/1.0 and HTTP/1.1 requests are served"}'
# llhttp reads `GET / RTSP/1.0` as HTTP/1.0 and reports only the numbers; the protocol name is seen here, in the
# raw request line, or nowhere.
NOT_HTTP = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
    b"X-Content-Type-Options: nosniff\r\nConnection: close\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(_NOT_HTTP_BODY)
    + _NOT_HTTP_BODY
)
# A request line of another protocol anywhere in a read in which a head completed (pipelining, after a body).
_FOREIGN_LINE = re.compile(rb"(?m)^[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ \r\n]+ (?!HTTP/)[A-Za-z]+/\d")
_MAX_LINE_SEEN = 65536  # past this the parser's own line bound has refused the request

_LINGER = 1.0  # seconds


def head_end(seen: bytes) -> int | None:
    """Where the first head terminator (CRLF CRLF, or LF LF) in `seen` ends, or None if it has none."""
    ends = [at + size for at, size in ((seen.find(b"\n\r\n"), 3), (seen.find(b"\n\n"), 2)) if at >= 0]
    return min(ends) if ends else None


def bytes_after_head(seen: bytes) -> int | None:
    """How many bytes of `seen` follow its last head terminator, or None if it has none."""
    end = max(seen.rfind(b"\n\r\n") + 3, seen.rfind(b"\n\n") + 2)
    return len(seen) - end if end > 2 else None


class BoundedRequestHandler(RequestHandler):
    """aiohttp's connection handler with the whole request head bounded."""

    __slots__ = ("_body", "_head", "_line", "_max_head", "_refused", "_tail")

    def __init__(self, manager: web.Server, *, max_head_bytes: int, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._max_head = max_head_bytes
        self._head = 0  # bytes of the head now arriving
        self._body: StreamReader | None = None  # the body now arriving, whose bytes are not counted
        self._tail = b""  # the last bytes of the previous read: a terminator may straddle two reads
        self._line: bytearray | None = bytearray()  # the request line so far; None once it was checked
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the connection closes
        if self._upgraded:
            super().data_received(data)  # WebSocket frames (or an upgrade's unread tail): no head any more
            return
        if self._body is not None and self._body.is_eof():
            self._start_head()
        if self._body is None and data and self._line is not None:
            self._line += data[:_MAX_LINE_SEEN]
            if self._not_http():
                return
        if self._body is None and data:
            # Counted up to the end of this head only: what follows it in the same read is a body, or more requests.
            end = head_end(self._tail + data)
            self._head += len(data) if end is None else max(0, end - len(self._tail))
            if self._head > self._max_head:
                self._refuse()
                return
        before = self._request_count
        super().data_received(data)
        if self._request_count != before and _FOREIGN_LINE.search(data):
            # A head completed in this read, and a request line of another protocol is in it: one pipelined behind
            # another, or right after a body. Nothing on this connection is served any more (on the safe side: a
            # body line that looks like one closes it too).
            self._refused = True
            self.force_close()
            return
        if self._request_count != before:  # the parser completed a head (or refused one) in this read
            payload = self._messages[-1][1]
            if not payload.is_eof():
                self._start_head(body=payload)
            elif payload.total_bytes:
                self._start_head()  # where its body ended in this read is not known: the rest is not counted
            else:
                # No body: everything after the last blank line is the next head, already with the parser.
                after = bytes_after_head(self._tail + data)
                after = len(data) if after is None else min(after, len(data))
                self._start_head(data[len(data) - after :])
                if self._head > self._max_head:
                    self._refuse()
                elif self._not_http():
                    return
        elif self._body is not None and self._body.is_eof():
            self._start_head()
        elif self._body is None:
            self._tail = (self._tail + data)[-3:]

    def _start_head(self, begun: bytes = b"", body: StreamReader | None = None) -> None:
        """A new head starts (with the bytes `begun`), or a body whose bytes are not counted."""
        self._body = body
        self._head = len(begun)
        self._tail = begun[-3:]
        self._line = None if body is not None else bytearray(begun)

    def _not_http(self) -> bool:
        """Once the request line is whole: a protocol other than HTTP (`RTSP/1.0`) is refused, 400."""
        assert self._line is not None
        line = bytes(self._line).lstrip(b"\r\n")  # empty lines before a request line are allowed (RFC 9112 2.2)
        end = line.find(b"\n")
        if end < 0:
            if len(line) >= _MAX_LINE_SEEN:
                self._line = None
            return False
        self._line = None
        version = line[:end].rstrip(b"\r").rpartition(b" ")[2]
        if b"/" in version and not version.startswith(b"HTTP/"):
            self._refuse(NOT_HTTP)
            return True
        return False

    def _refuse(self, answer: bytes = TOO_LARGE) -> None:
        self._refused = True
        transport = self.transport
        if transport is None or self._current_request is not None or self._messages:
            self.force_close()  # another answer is under way: a 431 would land inside it
            return
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        # Closing with unread input would send a reset, which can destroy the 431 before the client reads it: read
        # and drop for a moment (the client closing ends it sooner), then close.
        self._loop.call_later(_LINGER, self.force_close)


__all__ = ["NOT_HTTP", "TOO_LARGE", "BoundedRequestHandler"]
