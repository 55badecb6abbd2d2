"""Pure: find a method override (`_method=DELETE` and its kin) in a query string or a request body.

Rails, Laravel and Symfony dispatch `POST /x?_method=DELETE`, or a form field `_method=DELETE`, as a DELETE (Laravel
reads a JSON body's fields the same way), so a rule that allows POST but not DELETE would be stepped around. The
gateway refuses such a request (400) rather than strip the field: stripping would rewrite a body the gateway
otherwise relays byte for byte. Bodies are scanned as they stream, holding a few hundred bytes, never the body:
a client the gateway has not authenticated cannot make it buffer anything.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from gateway.forward.headers import METHOD_OVERRIDE_FIELDS, method_override_name

FORM = "application/x-www-form-urlencoded"
_LONGEST_NAME = 3 * 64  # a field name longer than this, even percent-encoded, is no override name


def query_overrides_method(query: str | None) -> bool:
    """Whether a query string carries a method-override parameter (with a value or without)."""
    if not query:
        return False
    if "%" not in query and "method" not in query.lower():
        return False  # every override name holds "method"; only an escape could hide it
    return any(method_override_name(unquote_plus(field.partition("=")[0])) for field in query.split("&"))


class FormScanner:
    """An `application/x-www-form-urlencoded` body, chunk by chunk: is a field an override name?

    A field only takes effect with its `=`, so the chunk holding that `=` is the one refused: the upstream never
    receives a complete override field.
    """

    __slots__ = ("_name", "_skipping")

    def __init__(self) -> None:
        self._name = bytearray()  # the current field's name so far (bounded)
        self._skipping = False  # in a value, or in a name too long to matter

    def found_in(self, chunk: bytes) -> bool:
        for byte in chunk:
            if byte == 0x26:  # '&': a new field starts
                self._name.clear()
                self._skipping = False
            elif self._skipping:
                continue
            elif byte == 0x3D:  # '=': the name is complete
                if method_override_name(unquote_plus(self._name.decode("latin-1"))):
                    return True
                self._skipping = True
            elif len(self._name) < _LONGEST_NAME:
                self._name.append(byte)
            else:
                self._skipping = True
        return False


_NAMES = b"|".join(re.escape(n.encode()).replace(b"\\-", b"[-_]") for n in sorted(METHOD_OVERRIDE_FIELDS))
# A multipart part named like an override (its Content-Disposition line), or a JSON member of that name. Matched
# without parsing: a file that holds such a line is refused too (a 400 is the safe side of the doubt).
_MULTIPART = re.compile(rb'(?i)content-disposition:[^\r\n]*\bname\s*=\s*"?\s*(?:' + _NAMES + rb')["\s;\r]')
_JSON = re.compile(rb'(?i)(?<!\\)"(?:' + _NAMES + rb')"\s*:')
_WINDOW = 512  # bytes of the last chunk kept, so that a match split across two chunks is still seen


class PatternScanner:
    """A multipart or JSON body, chunk by chunk, searched with the last `_WINDOW` bytes carried over."""

    __slots__ = ("_pattern", "_tail")

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self._pattern = pattern
        self._tail = b""

    def found_in(self, chunk: bytes) -> bool:
        text = self._tail + chunk
        self._tail = text[-_WINDOW:]
        return self._pattern.search(text) is not None


Scanner = FormScanner | PatternScanner


def body_scanner(content_type: str) -> Scanner | None:
    """A scanner for a body of this media type (aiohttp's `request.content_type`, lower case), or None when no
    framework reads a method from such a body."""
    if content_type == FORM:
        return FormScanner()
    if content_type == "multipart/form-data":
        return PatternScanner(_MULTIPART)
    if "/json" in content_type or "+json" in content_type:  # what Laravel's isJson() takes for JSON
        return PatternScanner(_JSON)
    return None
