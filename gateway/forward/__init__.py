"""What goes upstream: header transforms, the request body, and the upstream hop."""
