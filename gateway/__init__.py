"""An authenticating reverse proxy for ZITADEL: introspect bearer tokens, apply route rules, forward."""

__version__ = "0.1.0"
