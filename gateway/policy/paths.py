"""The canonical path: the one form of a request path that is matched and forwarded (docs/security.md,
"The canonical path, exactly"). Pure: no I/O, no aiohttp."""

from __future__ import annotations

import re
import string
import unicodedata

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


# RFC 3986 pchar minus ';' (servlet containers treat ';' as a path-parameter separator, so `/public;/../x`
# means different things to us and to them) plus '/' and '%'. Anything else raw is rejected.
_ALLOWED_RAW = _UNRESERVED | frozenset("!$&'()*+,=:@/%")


_HEX = frozenset(string.hexdigits)


# Decoding these would change how the path splits or is read by the upstream; keeping them encoded would make
# the path mean different things to different servers. Either way it is ambiguous: reject.
# '#' and '?' join them: an upstream that decodes twice would read them as a fragment or a query.
_FORBIDDEN_ENCODED = {
    0x2F: "an encoded '/'",
    0x5C: "an encoded '\\'",
    0x3B: "an encoded ';'",
    0x23: "an encoded '#'",
    0x3F: "an encoded '?'",
}


_DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")


# Characters that change a path's structure if a server behind us applies Unicode compatibility normalisation
# (NFKC turns U+FF0E into '.', U+FF0F into '/').
_STRUCTURAL = frozenset("./\\;?#%:")


class PathError(ValueError):
    """The path cannot be canonicalised safely; the request gets 400."""


def split_target(raw_target: str) -> tuple[str, str | None]:
    """(path, query or None) of an origin-form request target; a fragment anywhere in it is refused."""
    path, sep, query = raw_target.partition("?")
    if sep and "#" in query:
        raise PathError("a fragment in the request target")  # never sent by a browser; an attack if sent
    return path, (query if sep else None)


def canonical_path(raw: str) -> str:
    """Return the one canonical form of a request path (no query string), or raise PathError.

    Percent-encoded unreserved characters are decoded, other escapes are upper-cased, `.` and `..` segments are
    resolved, empty segments merged. A trailing slash is kept (it is forwarded as sent), but patterns match `/a/`
    as they match `/a`. docs/security.md lists every rule.
    """
    if not raw.startswith("/"):
        raise PathError("the request target must be an absolute path")
    chars: list[str] = []
    raw_bytes = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "%":
            hex_pair = raw[i + 1 : i + 3]
            if len(hex_pair) != 2 or not set(hex_pair) <= _HEX:
                raise PathError("a '%' that does not start a valid escape")
            byte = int(hex_pair, 16)
            if byte in _FORBIDDEN_ENCODED:
                raise PathError(f"{_FORBIDDEN_ENCODED[byte]} in the path")
            if byte < 0x20 or byte == 0x7F:
                raise PathError("an encoded control character in the path")
            raw_bytes.append(byte)
            decoded = chr(byte)
            chars.append(decoded if decoded in _UNRESERVED else "%" + hex_pair.upper())
            i += 3
            continue
        if c not in _ALLOWED_RAW:
            raise PathError(f"the character {c!r} is not allowed in a path")
        raw_bytes.extend(c.encode())
        chars.append(c)
        i += 1
    try:
        text = raw_bytes.decode("utf-8")  # rejects overlong forms such as %C0%AE
    except UnicodeDecodeError as exc:
        raise PathError("the path does not decode to valid UTF-8") from exc
    if not text.isascii():
        _check_unicode(text)
    if "::$" in text:
        raise PathError("an NTFS stream name ('::$') in the path")
    joined = "".join(chars)
    # Checked on the output, so that `%25%34%31` cannot assemble the `%2541` a second decoder would reopen.
    if _DOUBLE_ENCODED.search(joined):
        raise PathError("a double-encoded escape in the path")
    return _resolve_segments(joined)


def _check_unicode(text: str) -> None:
    for ch in text:
        if ch.isascii():
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise PathError("an invisible or control character in the path")
        if _STRUCTURAL & set(unicodedata.normalize("NFKC", ch)):
            raise PathError("a character that normalises to path punctuation")
        # Kelvin sign -> 'k' (lower), long s -> 'S' (upper), fullwidth letters (NFKC): an upstream that folds or
        # normalises would read another route's path than the one matched here.
        for form in (unicodedata.normalize("NFKC", ch), ch.lower(), ch.upper(), ch.casefold()):
            if any(c.isascii() for c in form):
                raise PathError("a character that a server may read as an ASCII letter or digit")


def _resolve_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")[1:]
    for seg in segments:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                raise PathError("'..' climbs above the root")
            out.pop()
            continue
        # Windows servers drop trailing dots and spaces ('admin.' is 'admin' there): ambiguous, so refused.
        if seg.endswith((".", "%20")):
            raise PathError("a segment that ends in '.' or a space")
        out.append(seg)
    trailing = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")
