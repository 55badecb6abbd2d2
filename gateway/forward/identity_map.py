"""Which claims go to the upstream under which header names (`identity.headers`, a route's `identity_headers`).

Plain data with no imports from the gateway, so that a Route can carry its map and stay pure.
"""

from __future__ import annotations

from dataclasses import dataclass

# A key at each level, never split: ("email",), ("urn:zitadel:iam:user:metadata", "department").
ClaimPath = tuple[str, ...]

DECODINGS = ("base64",)


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    header: str  # as configured; compared by normalised name (case, `_` for `-`)
    path: ClaimPath
    decode: str | None = None  # "base64": ZITADEL metadata values (base64 of UTF-8 text)


@dataclass(frozen=True, slots=True)
class HeaderMap:
    """The mappings that apply on a route, and the bound on one value (bytes, after encoding)."""

    mappings: tuple[ClaimMapping, ...] = ()
    max_bytes: int = 1024

    @property
    def paths(self) -> tuple[ClaimPath, ...]:
        return tuple(dict.fromkeys(m.path for m in self.mappings))


NO_HEADERS = HeaderMap()
