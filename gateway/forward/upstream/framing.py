"""What an upstream answer's bytes may be, where llhttp is more lenient than a strict parser (h11) or than what
aiohttp can relay unchanged: small pure checks for answer.py."""

from __future__ import annotations

from gateway.forward.upstream.errors import UpstreamError


def check_reason(reason: bytes) -> str:
    """The reason phrase as text: UTF-8 (what aiohttp writes back) without control characters (which llhttp lets
    through)."""
    try:
        text = reason.decode()
    except UnicodeDecodeError:
        raise UpstreamError("a header of the answer is not UTF-8") from None
    if not text.isprintable():
        raise UpstreamError("a control character in the answer's reason phrase")
    return text


def check_interims(reads: list[bytes] | None, count: int) -> None:
    """Each 1xx ends at its head's empty line (it has no content), and the next answer starts right there: llhttp
    skips line breaks between them, which no answer accounts for."""
    stream = b"".join(reads or ())
    at = 0
    for _ in range(count):
        end = stream.find(b"\r\n\r\n", at)
        if end == -1 or not stream.startswith(b"HTTP/", end + 4):
            raise UpstreamError("bytes between an interim answer and the next")
        at = end + 4


def crlf_run(data: bytes) -> int:
    """How many CR and LF bytes `data` ends with."""
    count = 0
    for byte in reversed(data):
        if byte != 10 and byte != 13:
            break
        count += 1
    return count
