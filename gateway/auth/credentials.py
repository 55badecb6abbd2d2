"""Pure: find the bearer token in a request (RFC 6750 §2), or say why there is none.

Three outcomes, as for any authenticator: no credentials (None), a token, or a malformed credential (raises).
The Authorization header is the one place a token is read from; the query string (`access_token`, §2.3) only on
routes that opt in. A token sent in two places is refused (§2: "MUST NOT use more than one method").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, unquote_plus

from gateway.errors import InvalidRequestToken, InvalidToken

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
DEFAULT_MAX_TOKEN_BYTES = 4096
QUERY_PARAMETER = "access_token"


def bearer_token(authorization: Sequence[str], *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> str | None:
    """`authorization` is every Authorization header the client sent, in order.

    None: no bearer credentials (the route answers 401 with a bare challenge). A token that cannot be valid is
    refused here, before it costs an IdP call.
    """
    if not authorization:
        return None
    if len(authorization) > 1:
        raise InvalidRequestToken("more than one Authorization header")
    scheme, _, rest = authorization[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return checked_token(rest.strip(), max_bytes=max_bytes)


def checked_token(token: str, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> str:
    if not token:
        raise InvalidRequestToken("the Bearer scheme without a token")
    if len(token) > max_bytes:  # checked first: the pattern never runs over an oversized value
        raise InvalidToken("the access token is too long", reason="token too long")
    if not _B64TOKEN.fullmatch(token):
        raise InvalidToken("the access token has characters a bearer token cannot have", reason="token malformed")
    return token


_PHP_NAME_FOLD = str.maketrans({" ": "_", ".": "_", "[": "_"})


def _is_token_field(field: str) -> bool:
    """`access_token` as any server behind us may read the name: PHP drops leading spaces and folds ' ', '.' and '['
    into '_' (`access.token`, `+access_token`, `access[token` are all `access_token` to it), or takes `name[...]` as
    an array of that name."""
    name = unquote_plus(field.partition("=")[0]).lstrip(" ")
    return name.translate(_PHP_NAME_FOLD) == QUERY_PARAMETER or name.partition("[")[0] == QUERY_PARAMETER


def query_has_token(query: str | None) -> bool:
    if not query:
        return False
    return any(_is_token_field(f) for f in query.split("&"))


def query_token(query: str | None, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> tuple[str | None, str | None]:
    """(token or None, the query without it). The rest of the query is kept byte for byte.

    The token leaves the URL so that it never reaches the upstream's access logs.
    """
    if not query_has_token(query):
        return None, query
    assert query is not None
    fields = query.split("&")
    found = [f for f in fields if _is_token_field(f)]
    if len(found) > 1:
        raise InvalidRequestToken("more than one access_token parameter")
    token = unquote_plus(found[0].partition("=")[2])
    return checked_token(token, max_bytes=max_bytes), without_query_token(query)


def without_query_token(query: str | None) -> str | None:
    """The query without any `access_token` field (the rest byte for byte): for a token nobody checked."""
    if not query_has_token(query):
        return query
    assert query is not None
    rest = "&".join(f for f in query.split("&") if not _is_token_field(f))
    return rest or None


def form_has_token(body: bytes) -> bool:
    """Whether a form-encoded body (RFC 6750 §2.2) carries an access_token field."""
    text = body.decode("latin-1")  # never fails: any byte soup is searched, not just well-formed forms
    return any(name == QUERY_PARAMETER for name, _ in parse_qsl(text, keep_blank_values=True))
