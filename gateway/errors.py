"""Every error the gateway answers with, each carrying its status, and answer_for(), which renders them.

Errors are classified by type, never by message text. Bodies are JSON `{"error", "error_description"}` and never
contain a token or anything else the client sent.
"""

from __future__ import annotations

from collections.abc import Mapping

REALM = 'Bearer realm="gateway"'


class GatewayError(Exception):
    """Base: an answer the gateway gives instead of forwarding."""

    status = 500
    error = "server_error"
    description = "internal gateway error"

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description or self.description)
        if description is not None:
            self.description = description

    @property
    def reason(self) -> str:
        """Short machine-readable reason for decision logs and metrics."""
        return self.error

    def headers(self) -> Mapping[str, str]:
        return {}


class BadRequest(GatewayError):
    status = 400
    error = "invalid_request"
    description = "the request is malformed"


class NotFound(GatewayError):
    status = 404
    error = "not_found"
    description = "no route matches this request"

    @property
    def reason(self) -> str:
        return "no route"  # the words `explain` uses


class VersionNotSupported(GatewayError):
    status = 505
    error = "http_version_not_supported"
    description = "only HTTP/1.0 and HTTP/1.1 are served"


class NotImplementedCoding(GatewayError):
    """RFC 9112 §6.1: a transfer coding the server does not understand is 501."""

    status = 501
    error = "not_implemented"
    description = "the only transfer coding accepted on a request is chunked"


class PayloadTooLarge(GatewayError):
    status = 413
    error = "payload_too_large"
    description = "the request body is larger than this route allows"


class ClientClosedRequest(GatewayError):
    """The client went away while the gateway was reading its body (499, as nginx logs it): nobody gets the answer,
    but the access line says what happened, and nothing blames the upstream."""

    status = 499
    error = "client_closed_request"
    description = "the client closed the connection"

    @property
    def reason(self) -> str:
        return "aborted"


class ExpectationFailed(GatewayError):
    status = 417
    error = "expectation_failed"
    description = "the only expectation understood is 100-continue"


class RequestTimeout(GatewayError):
    status = 408
    error = "request_timeout"
    description = "the request body did not arrive in time"


class PreflightRejected(GatewayError):
    status = 403
    error = "cors_rejected"
    description = "this origin, method or header set is not allowed for cross-origin requests"


class Unauthenticated(GatewayError):
    """No credentials at all: RFC 6750 §3.1 says send no error code, only the challenge."""

    status = 401
    error = "unauthorized"
    description = "a bearer token is required"

    @property
    def reason(self) -> str:
        return "no token"  # the words `explain` uses

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": REALM}


class InvalidToken(GatewayError):
    status = 401
    error = "invalid_token"
    description = "the access token is invalid, expired or revoked"

    def __init__(self, description: str | None = None, *, reason: str = "invalid_token") -> None:
        super().__init__(description)
        self._reason = reason

    @property
    def reason(self) -> str:
        return self._reason

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": f'{REALM}, error="invalid_token"'}


class InvalidRequestToken(GatewayError):
    """A malformed credential (RFC 6750 §3.1 invalid_request): 400 with the challenge."""

    status = 400
    error = "invalid_request"
    description = "the authorization header is malformed"

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": f'{REALM}, error="invalid_request"'}


class InsufficientScope(GatewayError):
    status = 403
    error = "insufficient_scope"
    description = "the token lacks a role this route requires"

    def __init__(self, description: str | None = None, *, required: str = "") -> None:
        super().__init__(description)
        self.required = required

    @property
    def reason(self) -> str:
        return f"missing role {self.required}" if self.required else self.error

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": f'{REALM}, error="insufficient_scope"'}


class IdPUnavailable(GatewayError):
    """ZITADEL could not answer: never 401 (that would log users out), never a pass."""

    status = 503
    error = "idp_unavailable"
    description = "the identity provider is unavailable, try again shortly"
    retry_after = 5

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}


class IdPBusy(IdPUnavailable):
    """No IdP call slot came free in time: 503 like an outage for the client, but the IdP was never asked, so it
    is not the IdP's failure (the circuit breaker does not count it)."""

    description = "the gateway is busy checking other tokens, try again shortly"
    retry_after = 1

    @property
    def reason(self) -> str:
        return "idp busy"


class ForwardAuthOff(GatewayError):
    """The running config has no `forward_auth:` any more (a reload removed it): nothing is authorised here until
    the listener goes away at the next restart."""

    status = 503
    error = "forward_auth_off"
    description = "forward-auth is turned off in the gateway's configuration"


class TooManyRequests(GatewayError):
    """One client has too many tokens under check at once (`idp.max_concurrent_calls_per_client`)."""

    status = 429
    error = "too_many_requests"
    description = "too many new tokens from this client are being checked, try again shortly"

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": "1"}


class UpstreamUnavailable(GatewayError):
    status = 502
    error = "bad_gateway"
    description = "the upstream service could not be reached"


class UpstreamTimeout(GatewayError):
    status = 504
    error = "gateway_timeout"
    description = "the upstream service did not answer in time"
