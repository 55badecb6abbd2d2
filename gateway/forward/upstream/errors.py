"""The one error of the upstream hop."""


class UpstreamError(Exception):
    """No usable answer: refused or lost connection, a malformed answer, or an answer cut short."""
