"""A principal's identity for the upstream: the fixed X-Auth-* headers, and the claims `identity.headers` maps.

Pure, and built once per (cached principal, route map): the values come from the claims the principal kept
(claims.kept_claims), never from the IdP's whole answer. A value that cannot go into a header (control
characters, too long, base64 that is not) is left out and logged by claim name, never by value.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import string
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from gateway.auth.claims import Principal, claim_name
from gateway.forward.headers import header_value, identity_headers
from gateway.forward.identity_map import NO_HEADERS, ClaimMapping, HeaderMap

log = logging.getLogger("gateway.identity")

# Printable ASCII but `%`: what a non-ASCII value keeps as is once percent-encoded (so `%` itself is encoded).
_SAFE = "".join(ch for ch in string.printable if ch not in "%\t\n\r\x0b\x0c")
_URLSAFE = str.maketrans("-_", "+/")


class BadValue(ValueError):
    """Why a claim's value cannot go into a header. Never holds the value."""


def _control(text: str) -> bool:
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in text)


def _text(value: str) -> str:
    if _control(value):
        raise BadValue("control characters")
    if value != value.strip(" \t"):
        # HTTP drops a value's outer whitespace: `  admin  ` would reach the backend as `admin`. Encoded, it stays.
        return quote(value, safe=_SAFE.replace(" ", ""))
    if value.isascii() and "%" not in value:
        return value
    return quote(value, safe=_SAFE)  # UTF-8, percent-encoded: read it with urllib.parse.unquote


def _scalar(value: Any) -> str | None:
    """A string, number or boolean as it goes into a header; None for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return _text(value)
    return None


def header_text(value: Any) -> str:
    """Strings, numbers and booleans as they are; a list of those comma-joined (a `,` or `%` in an item is
    percent-encoded, so items never split); an object, or a list holding one, as compact JSON (ASCII)."""
    scalar = _scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, list) and all(_scalar(item) is not None for item in value):
        for item in value:
            if isinstance(item, str) and _control(item):
                raise BadValue("control characters")
        return ",".join(header_value(item) if isinstance(item, str) else str(_scalar(item)) for item in value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def decoded(value: Any) -> Any:
    """ZITADEL metadata: base64 (standard or URL-safe, padded or not) of UTF-8 text; objects and lists per item."""
    if isinstance(value, dict):
        return {key: decoded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decoded(item) for item in value]
    if not isinstance(value, str):
        raise BadValue("not base64 text")
    try:
        raw = base64.b64decode(value.translate(_URLSAFE) + "=" * (-len(value) % 4), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise BadValue("not base64 of UTF-8 text") from exc


def mapped_value(principal: Principal, mapping: ClaimMapping) -> Any:
    """The JSON value of the mapped claim (decoded if asked), None when absent; BadValue when it does not decode."""
    raw = dict(principal.claims).get(mapping.path)
    if raw is None:
        return None
    value = json.loads(raw)
    return decoded(value) if mapping.decode == "base64" else value


def _left_out(mapping: ClaimMapping, why: str) -> None:
    log.warning("identity header %s: claim %s left out: %s", mapping.header, claim_name(mapping.path), why)


def mapped_headers(principal: Principal, header_map: HeaderMap) -> dict[str, str]:
    headers: dict[str, str] = {}
    for mapping in header_map.mappings:
        try:
            value = mapped_value(principal, mapping)
            if value is None:
                continue
            text = header_text(value)
        except BadValue as exc:
            _left_out(mapping, str(exc))
            continue
        if len(text) > header_map.max_bytes:
            _left_out(mapping, f"longer than {header_map.max_bytes} bytes")
            continue
        headers[mapping.header] = text
    return headers


def mapped_claims(principal: Principal, header_map: HeaderMap) -> dict[str, Any]:
    """The mapped claims in the IdP's own shape (a nested path as nested objects holding that path only), for the
    signed assertion. A value that does not decode is left out (and logged when the headers are built)."""
    out: dict[str, Any] = {}
    for mapping in header_map.mappings:
        try:
            value = mapped_value(principal, mapping)
        except BadValue:
            continue
        if value is None:
            continue
        node = out
        for key in mapping.path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[mapping.path[-1]] = value
    return out


@functools.lru_cache(maxsize=4096)
def identity_of(principal: Principal, header_map: HeaderMap = NO_HEADERS) -> Mapping[str, str]:
    """The identity headers of a principal on a route, built once per cached principal; read-only, as shared.
    The fixed X-Auth-* headers win over a mapping (config validation keeps their names out of the maps)."""
    headers = mapped_headers(principal, header_map) if header_map.mappings else {}
    headers.update(
        identity_headers(
            subject=principal.subject,
            username=principal.username,
            roles=principal.roles,
            client_id=principal.client_id,
            org_id=principal.org_id,
        )
    )
    return MappingProxyType(headers)
