"""Pure: find the bearer token in a request's headers (RFC 6750 §2.1), or say why there is none.

Three outcomes, as for any authenticator: no credentials (None), a token, or a malformed credential (raises).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import InvalidRequestToken, InvalidToken

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
DEFAULT_MAX_TOKEN_BYTES = 4096


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
    token = rest.strip()
    if not token:
        raise InvalidRequestToken("the Bearer scheme without a token")
    if len(token) > max_bytes:
        raise InvalidToken("the access token is too long", reason="token too long")
    if not _B64TOKEN.fullmatch(token):
        raise InvalidToken("the access token has characters a bearer token cannot have", reason="token malformed")
    return token
