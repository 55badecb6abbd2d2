"""Real nginx and Caddy on free loopback ports, configured from the recipes in deploy/forward-auth/ as shipped."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from bench.recipes import move_cache, nginx_main, render

from .support import free_port, stop, wait_for_port


@contextlib.asynccontextmanager
async def ingress(kind: str, directory: Path, *, gateway: int, backend: int) -> AsyncIterator[int]:
    """Start `kind` (nginx, nginx-cached, caddy) in front of `backend`, asking the gateway on `gateway`; yield its
    port. An nginx-cached cache lives in /dev/shm (tmpfs), as the recipe says; it is removed afterwards."""
    port = free_port()
    prefix = directory / f"{kind}-{port}"
    prefix.mkdir()
    cache_dir: Path | None = None
    if kind.startswith("nginx"):
        recipe = render(f"{kind}.conf", listen=port, gateway=gateway, backend=backend)
        if kind == "nginx-cached":
            cache_dir = Path("/dev/shm") / f"zitadel-gateway-test-{uuid.uuid4().hex}"
            recipe = move_cache(recipe, cache_dir)
        (prefix / "recipe.conf").write_text(recipe, encoding="utf-8")
        (prefix / "nginx.conf").write_text(nginx_main(prefix, prefix / "recipe.conf"), encoding="utf-8")
        command = [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        env = dict(os.environ)
    else:
        caddyfile = prefix / "Caddyfile"
        caddyfile.write_text(render("Caddyfile", listen=port, gateway=gateway, backend=backend))
        command = ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
        env = {**os.environ, "XDG_DATA_HOME": str(prefix / "data"), "XDG_CONFIG_HOME": str(prefix / "config")}
    log = (prefix / "server.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        await wait_for_port(port, proc, kind)
        yield port
    finally:
        stop(proc)
        log.close()
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` lives on, from /proc/mounts (the longest mount point that holds it)."""
    best, kind = "", ""
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        point, fstype = fields[1], fields[2]
        if (resolved == point or resolved.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fstype
    return kind
