"""The upstream client against a reference parser (STYLE.md habit 14): `python -m bench.upstream_differential`.

Hypothesis writes upstream byte streams: valid answers (Content-Length, chunked with extensions and trailers, read
to the close, 1xx before the final answer, HEAD/204/304 framing) and mutations of them (duplicate and conflicting
framing headers, stray bytes after the message, truncation, bytes outside ASCII, any byte replaced), split at
random points across reads and followed by the upstream closing the connection. Each stream goes to our answer
parser (gateway.upstream's UpstreamResponse, fed as its connection feeds it) and to h11, a strict, pure-Python
HTTP/1.1 implementation. They must agree on status, reason, header bytes, body bytes and complete-or-error, and we
may pool the connection only where h11 judges the exchange clean and complete.

Where h11 accepts and we refuse, the difference must be one of ALLOWED below; never the other way.
tests/test_upstream_differential.py runs a bounded number of examples in `make test`; `make fuzz-upstream` runs
this module with --examples 100000.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.forward.upstream import UpstreamError, UpstreamResponse

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one side made of a stream: the final answer's head, its body, and how the exchange ended."""

    status: int | None  # None: no final answer's head
    reason: bytes
    headers: Headers
    body: bytes
    complete: bool  # the answer arrived whole
    clean: bool  # ...and the connection could carry another exchange (ours: it went back to the pool)
    error: str
    after: bytes = b""  # the reference's: bytes after the answer, before the close


# Where we refuse what h11 accepts (never the other way): each is a choice of ours, named by the reason we give.
ALLOWED = {
    "not UTF-8": "a header or reason byte that is not UTF-8: we cannot relay it unchanged (aiohttp writes UTF-8)",
    "Duplicate Content-Length": "two Content-Length lines, even equal: llhttp refuses them, h11 merges equal ones",
    "can't be present with": "Content-Length with Transfer-Encoding (RFC 9112 §6.1: never sent): h11 ignores it",
    "an ambiguous Transfer-Encoding": "any Transfer-Encoding but one line 'chunked' (as nginx requires)",
    "Missing expected CR": "a bare LF ending a line: llhttp wants CRLF, h11 takes either",
    "Invalid header field char": "...also where a bare LF ends the head (llhttp reads it as a header name)",
    "Unexpected whitespace after header value": "an obs-fold line: refused (RFC 9112 §5.2 allows it), h11 joins it",
    "Invalid HTTP version": "a version other than HTTP/1.0 or 1.1 (h11 takes any digit.digit, e.g. HTTP/0.1)",
    "Invalid header value char": "a control byte in a header value that h11 lets through",
    "Invalid character in chunk extensions": "llhttp's chunk-extension grammar is stricter than h11's (which skips",
    "after chunk size": "...an extension up to the CRLF, whatever it holds, e.g. a lone CR)",
    "control character in the answer's reason": "a control byte in the reason phrase: h11 allows all but NUL, CR, LF",
    "too many interim answers": "more than 16 1xx answers before the final one: h11 takes any number",
    "too large": "a head past our bounds (64 KiB, 256 lines): h11's bound, as we set it here, is 1 MiB",
    "content in an interim answer": "content after a 1xx, which h11 takes for the start of the next answer",
}


# -- the two sides --------------------------------------------------------------------------------------------------


class _Link:
    """The connection as the answer sees it: records whether it was closed or given back to the pool."""

    def __init__(self) -> None:
        self.exchange: UpstreamResponse | None = None
        self.closed = False
        self.recycled = False

    def close(self) -> None:
        if self.exchange is not None:
            self.exchange.fail(UpstreamError("the exchange was cut short"))
        self.closed = True

    def unsent(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass  # examples are far below the high-water mark

    def resume_reading(self) -> None:
        pass

    def recycle(self) -> None:
        self.recycled = True


async def ours(reads: list[bytes], method: str) -> Outcome:
    """Our parser, fed read by read. An answer whole after the last read is read and released there (where the
    pool decides, before the close); any other is read on through the upstream's close."""
    link = _Link()
    answer = UpstreamResponse(link, head_only=method == "HEAD", read_timeout=5.0)
    link.exchange = answer
    for data in reads:
        if link.closed:
            break  # our own close: nothing more is read
        answer.feed(data)
    head = answer.head_received()
    answered = head.done() and head.exception() is None
    body = answer.body_if_complete() if answered else None
    error = ""
    if body is not None:
        answer.release()
    else:
        answer.lost(None)  # the upstream closes the connection
        if head.exception() is not None:
            error = str(head.exception())
        else:
            try:
                body = await answer.read()
            except UpstreamError as exc:
                error = str(exc)
        answer.release()
    headers = tuple((name.encode(), value.encode()) for name, value in answer.headers.items())
    status = answer.status if answered else None
    return Outcome(status, answer.reason.encode(), headers, body or b"", body is not None, link.recycled, error)


def reference(reads: list[bytes], method: str) -> Outcome:
    """h11 as a client that sent `method /`: every read, then the close."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "upstream.test")]))
    conn.send(h11.EndOfMessage())
    status: int | None = None
    reason = b""
    headers: Headers = ()
    body: list[bytes] = []
    complete = False
    clean = False
    error = ""
    after = b""
    try:
        for data in [*reads, b""]:
            if not data:
                # After the last read, before the close: could this connection carry the next exchange?
                after = bytes(conn.trailing_data[0])
                clean = complete and conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE} and not after
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    break
                if isinstance(event, h11.Response):
                    status, reason = event.status_code, bytes(event.reason)
                    headers = tuple((bytes(n), bytes(v)) for n, v in event.headers.raw_items())
                elif isinstance(event, h11.Data):
                    body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    complete = True
    except h11.RemoteProtocolError as exc:
        error = str(exc)
        clean = False
    return Outcome(status, reason, headers, b"".join(body), complete, clean, error, after)


def disagreement(mine: Outcome, ref: Outcome) -> str | None:
    """None where the two agree (or differ only as ALLOWED); else what differs."""
    if mine.clean and not ref.clean:
        return "pooled a connection the reference judges unclean"
    if mine.complete != ref.complete:
        if ref.complete and any(key in mine.error for key in ALLOWED):
            return None
        return f"complete: ours {mine.complete} ({mine.error}), reference {ref.complete} ({ref.error})"
    if not mine.complete:
        return None  # both an error: nothing is relayed whole
    for field in ("status", "reason", "headers", "body"):
        if getattr(mine, field) != getattr(ref, field):
            return f"{field}: ours {getattr(mine, field)!r}, reference {getattr(ref, field)!r}"
    return None


# -- the streams ----------------------------------------------------------------------------------------------------

_TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12)
_VALUE = st.text('abcdefghijklmnopqrstuvwxyz0123456789 /;=,.:-"', max_size=30).map(str.strip)
_NAMES = st.sampled_from(["X-Thing", "Location", "Set-Cookie", "Cache-Control", "Content-Type", "ETag", "Vary"])
_INTERIM = st.sampled_from(
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"]
)
_STRAY = st.sampled_from(
    [
        b"HTTP/1.1 302 Found\r\nLocation: https://evil.test/\r\nSet-Cookie: s=evil\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        b"\r\n",
        b"garbage",
    ]
)


@st.composite
def answers(draw: st.DrawFn) -> tuple[list[bytes], str]:
    """One stream (already split into reads) and the method it answers."""
    method = draw(st.sampled_from(["GET", "GET", "HEAD"]))
    status = draw(st.one_of(st.sampled_from([200, 201, 204, 206, 301, 302, 304, 404, 500]), st.integers(200, 599)))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    reason = draw(st.sampled_from([b"OK", b"", b"Some Reason", b"Found"]))
    headers = [
        (n.encode(), v.encode()) for n, v in draw(st.lists(st.tuples(st.one_of(_NAMES, _TOKEN), _VALUE), max_size=6))
    ]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "eof"]))
    no_body = method == "HEAD" or status in (204, 304)
    if draw(st.booleans()):
        headers.append((b"Connection", b"close"))
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    message = b"".join(draw(st.lists(_INTERIM, max_size=2)))
    head = b"%s %d %s\r\n" % (version, status, reason) + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n"
    message += head
    if not no_body:
        message += _chunked(draw, body) if framing == "chunked" else body
    message = _mutate(draw, message, head)
    cuts = sorted(draw(st.lists(st.integers(0, len(message)), max_size=4)))
    reads = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    return [r for r in reads if r], method


def _chunked(draw: st.DrawFn, body: bytes) -> bytes:
    out = b""
    while body:
        size = draw(st.integers(1, len(body)))
        extension = draw(st.sampled_from([b"", b";a=b", b';name="quoted"', b";x"]))
        out += b"%x%s\r\n%s\r\n" % (size, extension, body[:size])
        body = body[size:]
    trailers = draw(st.sampled_from([b"", b"X-Trailer: done\r\n", b"Server-Timing: a;dur=1\r\nX-T: 2\r\n"]))
    return out + b"0\r\n" + trailers + b"\r\n"


def _mutate(draw: st.DrawFn, message: bytes, head: bytes) -> bytes:
    at_head = message.index(head) + len(head) - 2  # before the head's blank line: where a header line goes
    for kind in draw(st.lists(st.sampled_from(_MUTATIONS), max_size=2)):
        if kind == "none":
            continue
        if kind == "header":
            line = draw(
                st.sampled_from(
                    [
                        b"Content-Length: 0\r\n",
                        b"Content-Length: 5\r\n",
                        b"Transfer-Encoding: chunked\r\n",
                        b"Transfer-Encoding: gzip\r\n",
                        b"Transfer-Encoding: gzip, chunked\r\n",
                        b"Connection: close\r\n",
                        b"Connection: keep-alive\r\n",
                    ]
                )
            )
            message = message[:at_head] + line + message[at_head:]
        elif kind == "line-break":  # where llhttp skips them: before a status line, after a message
            position = draw(st.sampled_from(sorted({0, len(message), *_starts(message)})))
            message = message[:position] + draw(st.sampled_from([b"\r\n", b"\n", b"\r"])) + message[position:]
        elif kind == "stray":
            message += draw(_STRAY)
        elif kind == "truncate":
            message = message[: draw(st.integers(0, max(0, len(message) - 1)))]
        elif kind in ("non-ascii", "any-byte"):
            if not message:
                continue
            position = draw(st.integers(0, len(message) - 1))
            byte = draw(st.integers(0x80, 0xFF) if kind == "non-ascii" else st.integers(0, 0xFF))
            message = message[:position] + bytes([byte]) + message[position + 1 :]
        at_head = min(at_head, len(message))
    return message


def _starts(message: bytes) -> list[int]:
    """Where each answer (interim or final) begins."""
    starts, at = [], message.find(b"HTTP/1.")
    while at != -1:
        starts.append(at)
        at = message.find(b"HTTP/1.", at + 1)
    return starts


_MUTATIONS = ["none", "none", "header", "stray", "truncate", "non-ascii", "any-byte", "line-break"]


# -- running ------------------------------------------------------------------------------------------------------


def check(runner: asyncio.Runner, reads: list[bytes], method: str, found: list[str] | None = None) -> None:
    """Raises on a disagreement, or appends it to `found`."""
    mine = runner.run(ours(reads, method))
    ref = reference(reads, method)
    problem = disagreement(mine, ref)
    if problem is None:
        return
    problem = f"{problem}\nstream ({method}): {b''.join(reads)!r} in reads {[len(r) for r in reads]}"
    if found is None:
        raise AssertionError(problem)
    found.append(problem)


def run(examples: int, runner: asyncio.Runner, found: list[str] | None = None, *, fixed: bool = False) -> None:
    """`found`: collect every disagreement and go on (the long run), rather than stop at the first and shrink it.
    `fixed`: the same examples every time (make test stays reproducible; the long run explores)."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=fixed,
        suppress_health_check=list(HealthCheck),
    )
    @given(answers())
    def differential(stream: tuple[list[bytes], str]) -> None:
        check(runner, *stream, found)

    differential()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--examples", type=int, default=100_000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    found: list[str] = []
    with asyncio.Runner() as runner:
        run(args.examples, runner, found)
    took = time.perf_counter() - started
    for problem in found[:20]:
        print(problem, end="\n\n")
    print(f"upstream differential: {args.examples} examples, {len(found)} disagreement(s), {took:.0f} s")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
