"""The upstream client's answer parser against h11 on generated and mutated byte streams (STYLE.md habit 14).

A bounded run here; `make fuzz-upstream` runs bench/upstream_differential.py with 100,000 examples. What may differ
(we refuse, h11 accepts; never the other way) is listed in that module's ALLOWED.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.upstream_differential import ALLOWED, Outcome, check, disagreement, run

EXAMPLES = 1500  # about 5 s here


def test_our_client_agrees_with_h11_on_generated_streams() -> None:
    with asyncio.Runner() as runner:
        run(EXAMPLES, runner, fixed=True)


@pytest.mark.parametrize(
    ("stream", "method"),
    [
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], "GET"),
        (
            [
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\nok\r\n0\r\nX: y\r\n\r\n",
            ],
            "GET",
        ),
        ([b"HTTP/1.1 200 OK\r\n", b"Content-Length: 5\r\n\r\n"], "HEAD"),
        ([b"HTTP/1.1 200 OK\r\n\r\nto the close"], "GET"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n"], "GET"),  # stray line break: complete, not pooled
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n"], "GET"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok"], "GET"),  # cut short
        ([b"HTTP/1.1 100 Continue\r\n\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"], "GET"),  # both refuse
        (
            [b"HTTP/1.1 100 \x00ontinue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
            "GET",
        ),  # found by a long run
        ([b"HTTP/1.1 200 OK\r\nConnection: keep-alive \r\nContent-Length: 0\r\n\r\n"], "GET"),  # and so was this
    ],
)
def test_known_streams_agree(stream: list[bytes], method: str) -> None:
    with asyncio.Runner() as runner:
        check(runner, stream, method)


def test_a_disagreement_is_seen() -> None:
    """The comparison itself: each way of differing is caught, and only ALLOWED refusals pass."""
    ref = Outcome(200, b"OK", ((b"Location", b"/a"),), b"ok", True, True, "")
    assert disagreement(ref, ref) is None
    assert disagreement(Outcome(302, b"OK", ref.headers, b"ok", True, True, ""), ref) is not None
    assert disagreement(Outcome(200, b"OK", ((b"Location", b"//a"),), b"ok", True, True, ""), ref) is not None
    assert disagreement(Outcome(200, b"OK", ref.headers, b"o", True, True, ""), ref) is not None
    unclean = Outcome(200, b"OK", ref.headers, b"ok", True, False, "")
    assert disagreement(ref, unclean) == "pooled a connection the reference judges unclean"
    refused = Outcome(None, b"", (), b"", False, False, "a header of the answer is not UTF-8")
    assert "not UTF-8" in ALLOWED
    assert disagreement(refused, ref) is None
    assert disagreement(Outcome(None, b"", (), b"", False, False, "something else"), ref) is not None
    rejected = Outcome(None, b"", (), b"", False, False, "illegal status line")
    assert disagreement(ref, rejected) is not None  # we accept what the reference rejects: never allowed
