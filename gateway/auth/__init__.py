"""Who is calling: bearer credentials, introspection, JWTs, the answer cache, the IdP client, the breaker."""
