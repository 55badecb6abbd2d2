"""The forward-auth recipes in deploy/forward-auth/ as shipped, with this machine's ports: for the tests, which run
them in real nginx and Caddy, and for the bench, which measures them."""

from __future__ import annotations

import os
from pathlib import Path

RECIPES = Path(__file__).resolve().parent.parent / "deploy" / "forward-auth"
GATEWAY = "127.0.0.1:9092"  # the addresses the recipes are written with
BACKEND = "127.0.0.1:8081"

NGINX_MAIN = """\
{user}worker_processes {workers};
daemon off;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {recipe};
}}
"""

# No decision at all: the baseline, with the recipes' own upstream settings.
NGINX_PLAIN = """\
upstream backend {
    server 127.0.0.1:8081;
    keepalive 32;
}

server {
    listen 8080;

    location / {
        proxy_pass http://backend;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }
}
"""

CADDY_GLOBAL = """\
{
\tadmin off
\tauto_https off
}
"""


def _replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise ValueError(f"the recipe no longer mentions {old!r}")
    return text.replace(old, new)


def render(recipe: str, *, listen: int, gateway: int, backend: int) -> str:
    """The shipped recipe (or "plain") with these ports: only addresses change, every directive is as documented."""
    text = NGINX_PLAIN if recipe == "plain" else (RECIPES / recipe).read_text(encoding="utf-8")
    if recipe != "plain":
        text = _replace(text, GATEWAY, f"127.0.0.1:{gateway}")
    text = _replace(text, BACKEND, f"127.0.0.1:{backend}")
    if recipe == "Caddyfile":
        # Any Host (raw attack requests name their own), on loopback only.
        return CADDY_GLOBAL + _replace(text, "\n:8080 {", f"\nhttp://:{listen} {{\n\tbind 127.0.0.1")
    return _replace(text, "listen 8080;", f"listen 127.0.0.1:{listen};")


def nginx_main(prefix: Path, recipe: Path, workers: int = 1) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return NGINX_MAIN.format(user=user, workers=workers, prefix=prefix, recipe=recipe)


def move_cache(recipe_text: str, directory: Path) -> str:
    """The caching recipe with its tmpfs cache directory replaced (one per run)."""
    return _replace(recipe_text, "/dev/shm/zitadel-gateway-decisions", str(directory))
