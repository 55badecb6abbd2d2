"""The `identity` section: claims mapped to headers (`identity.headers`, a route's `identity_headers`), and the
signed identity assertion (`identity.assertion`). Validated into frozen values that Config carries as `identity`.

A claim is named by a string (one top-level key, taken whole: `urn:zitadel:iam:user:resourceowner:id` is one key,
`.` and `:` included) or by a YAML list of keys, one per level (`[urn:zitadel:iam:user:metadata, department]`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.forward.headers import IDENTITY_HEADERS, gateway_owned, normalised_name
from gateway.forward.identity_map import DECODINGS, NO_HEADERS, ClaimMapping, ClaimPath, HeaderMap

if TYPE_CHECKING:
    from gateway.config.checker import Checker

IDENTITY_KEYS = frozenset({"headers", "max_value_bytes", "assertion"})
_ASSERTION = frozenset({"issuer", "header", "audience", "lifetime_seconds", "key_files", "jwks_path"})
_MAPPING = frozenset({"claim", "decode"})
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
DEFAULT_ASSERTION_HEADER = "X-Auth-Assertion"
DEFAULT_JWKS_PATH = "/.well-known/gateway-jwks.json"


@dataclass(frozen=True, slots=True)
class AssertionSettings:
    issuer: str  # `iss`: the gateway's name, as backends expect it
    header: str = DEFAULT_ASSERTION_HEADER
    audience: str | None = None  # `aud`; None: the name of the route's upstream
    lifetime: float = 60.0
    # PEM private keys (EC P-256: ES256; Ed25519: EdDSA), the first signs, all are published. Empty: a key is
    # generated at start (one process only).
    keys: tuple[bytes, ...] = field(default=(), repr=False)
    jwks_path: str | None = DEFAULT_JWKS_PATH  # also served on the proxy listener here; None: admin listener only


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    headers: HeaderMap = NO_HEADERS  # `identity.headers`: every route's map unless it says otherwise
    assertion: AssertionSettings | None = None
    # Every header name a mapping (on any route) or the assertion may set: stripped from every client request,
    # and sent (empty where unset) in every forward-auth allow answer.
    names: tuple[str, ...] = ()


NO_IDENTITY_SETTINGS = IdentitySettings()


def _claim_path(c: Checker, node: Any, path: str) -> ClaimPath | None:
    if isinstance(node, str) and node:
        return (node,)
    if isinstance(node, list) and node and all(isinstance(k, str) and k for k in node):
        return tuple(node)
    c.fail(path, "expected a claim name, or a list of keys (one per level of nested objects)")
    return None


def _mapping(c: Checker, header: Any, node: Any, path: str) -> ClaimMapping | None:
    name = str(header)
    if not _HEADER_NAME.fullmatch(name):
        c.fail(path, "a header name is letters, digits and '-' ('_' would be read as '-' by CGI and WSGI)")
        return None
    norm = normalised_name(name)
    if norm in {h.lower() for h in IDENTITY_HEADERS} or gateway_owned(norm):
        c.fail(path, f"{name} is a header the gateway sets or removes itself")
        return None
    decode = None
    if isinstance(node, dict):
        m = c.mapping(node, path, _MAPPING)
        decode = c.string(m, "decode", path)
        if decode is not None and decode not in DECODINGS:
            c.fail(f"{path}.decode", f"expected one of {', '.join(DECODINGS)}, got {decode!r}")
        if "claim" not in m:
            c.fail(f"{path}.claim", "is required")
            return None
        node = m["claim"]
        path = f"{path}.claim"
    claim = _claim_path(c, node, path)
    return ClaimMapping(name, claim, decode) if claim is not None else None


def header_mappings(c: Checker, node: Any, path: str) -> tuple[ClaimMapping, ...]:
    if node is None:
        return ()
    if not isinstance(node, dict):
        c.fail(path, "expected a mapping of header name to claim")
        return ()
    out: dict[str, ClaimMapping] = {}
    for header, spec in node.items():
        mapping = _mapping(c, header, spec, f"{path}.{header}")
        if mapping is None:
            continue
        if normalised_name(mapping.header) in out:
            c.fail(f"{path}.{header}", "the same header name twice (names are compared without case)")
        out[normalised_name(mapping.header)] = mapping
    return tuple(out.values())


def route_header_map(c: Checker, m: dict[str, Any], path: str, identity: IdentitySettings) -> HeaderMap:
    """A route's `identity_headers`: absent, the global map; `false`, none; a mapping, added to (and overriding
    by name) the global ones."""
    if "identity_headers" not in m:
        return identity.headers
    node = m["identity_headers"]
    if node is False:
        return HeaderMap((), identity.headers.max_bytes)
    added = header_mappings(c, node, f"{path}.identity_headers")
    if identity.assertion is not None:
        for mapping in added:
            if normalised_name(mapping.header) == normalised_name(identity.assertion.header):
                c.fail(f"{path}.identity_headers.{mapping.header}", "is the assertion's header")
    names = {normalised_name(a.header) for a in added}
    kept = tuple(g for g in identity.headers.mappings if normalised_name(g.header) not in names)
    return HeaderMap(kept + added, identity.headers.max_bytes)


def _keys(c: Checker, m: dict[str, Any], workers: int, cache_backend: str) -> tuple[bytes, ...]:
    files = c.string_list(m, "key_files", "identity.assertion") or []
    keys: list[bytes] = []
    for i, name in enumerate(files):
        where = f"identity.assertion.key_files[{i}]"
        try:
            pem = Path(name).read_bytes()
        except OSError as exc:
            c.fail(where, f"{name}: cannot read: {exc.strerror}")
            continue
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            c.fail(where, f"{name}: not an unencrypted PEM private key")
            continue
        if not (isinstance(key, EllipticCurvePrivateKey) and isinstance(key.curve, SECP256R1)) and not isinstance(
            key, Ed25519PrivateKey
        ):
            c.fail(where, f"{name}: expected an EC P-256 (ES256) or Ed25519 (EdDSA) private key")
            continue
        keys.append(pem)
    if not files:
        # Each process would generate a key of its own: a backend holding one process's keys would refuse the
        # assertions of the others.
        if workers > 1:
            c.fail(
                "identity.assertion.key_files", f"required with workers: {workers} (each would generate its own key)"
            )
        if cache_backend == "redis":
            c.fail("identity.assertion.key_files", "required with cache.backend: redis (replicas would disagree)")
    return tuple(keys)


def _assertion(c: Checker, node: Any, workers: int, cache_backend: str) -> AssertionSettings | None:
    if node is None or node is False:
        return None
    m = c.mapping(node, "identity.assertion", _ASSERTION)
    where = "identity.assertion"
    issuer = c.required_string(m, "issuer", where)
    header = c.string(m, "header", where, DEFAULT_ASSERTION_HEADER) or DEFAULT_ASSERTION_HEADER
    if not _HEADER_NAME.fullmatch(header) or gateway_owned(normalised_name(header)):
        c.fail(f"{where}.header", f"{header!r} is not a header name the gateway may set")
    jwks_path = c.string(m, "jwks_path", where, DEFAULT_JWKS_PATH) if m.get("jwks_path") is not False else None
    if jwks_path is not None and not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", jwks_path):
        c.fail(f"{where}.jwks_path", f"expected an absolute path like {DEFAULT_JWKS_PATH}, got {jwks_path!r}")
    return AssertionSettings(
        issuer=issuer,
        header=header,
        audience=c.string(m, "audience", where),
        lifetime=c.number(m, "lifetime_seconds", where, 60.0, minimum=1.0),
        keys=_keys(c, m, workers, cache_backend),
        jwks_path=jwks_path,
    )


def identity_section(c: Checker, node: Any, *, workers: int, cache_backend: str) -> IdentitySettings:
    m = c.mapping(node, "identity", IDENTITY_KEYS)
    max_bytes = c.integer(m, "max_value_bytes", "identity", 1024, 16, 16384)
    headers = HeaderMap(header_mappings(c, m.get("headers"), "identity.headers"), max_bytes)
    assertion = _assertion(c, m.get("assertion"), workers, cache_backend)
    if assertion is not None:
        for mapping in headers.mappings:
            if normalised_name(mapping.header) == normalised_name(assertion.header):
                c.fail(f"identity.headers.{mapping.header}", "is the assertion's header")
    return IdentitySettings(headers=headers, assertion=assertion)


def with_names(identity: IdentitySettings, route_maps: list[HeaderMap]) -> IdentitySettings:
    """Every name a mapping or the assertion may set, in a stable order."""
    names: dict[str, str] = {}
    for header_map in (identity.headers, *route_maps):
        for mapping in header_map.mappings:
            names.setdefault(normalised_name(mapping.header), mapping.header)
    if identity.assertion is not None:
        names.setdefault(normalised_name(identity.assertion.header), identity.assertion.header)
    return IdentitySettings(identity.headers, identity.assertion, tuple(names.values()))
