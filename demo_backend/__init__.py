"""The demo upstream (ZITADEL's Python API example messages) and an offline stand-in of ZITADEL introspection."""
