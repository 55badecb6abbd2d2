"""Property test of the path canonicaliser: whatever comes in, what comes out is canonical and stable."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.paths import PathError, canonical_path

# Pieces attackers combine: separators, dots in every encoding, escapes valid and broken, lookalikes.
_PIECES = [
    "/",
    "//",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2f",
    "%5c",
    "%25",
    "%252e",
    "%3b",
    ";",
    "\\",
    "%00",
    "%",
    "%u002e",
    "%c0%ae",
    "%ef%bc%8e",
    "%C3%A9",
    "%7e",
    "%41",
    "%20",
    "#",
    "?",
    "a",
    "B",
    "~",
    "admin",
]

_paths = st.one_of(
    st.lists(st.sampled_from(_PIECES), max_size=16).map(lambda parts: "/" + "".join(parts)),
    st.text(max_size=40).map(lambda s: "/" + s),
    st.text(alphabet="/.%2eEfF5cC0aA", max_size=30),
)


def _canonical_or_none(raw: str) -> str | None:
    try:
        return canonical_path(raw)
    except PathError:
        return None  # the only exception it may raise


@settings(max_examples=1500, deadline=None)
@given(_paths)
def test_canonical_path_is_canonical_and_stable(raw: str) -> None:
    result = _canonical_or_none(raw)
    if result is None:
        return
    assert result.startswith("/")
    assert "//" not in result
    segments = result.split("/")[1:]
    assert "." not in segments and ".." not in segments
    assert canonical_path(result) == result  # matching the result is stable under a second canonicalisation
