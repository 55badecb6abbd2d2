"""`make demo`: the offline ZITADEL stand-in, the demo backend and the gateway, on this machine, no Docker.

Prints the seed example's curl commands with the demo tokens; Ctrl-C stops all three.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .idp import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_PORT = int(os.environ.get("DEMO_GATEWAY_PORT", "5000"))
BACKEND_PORT = int(os.environ.get("DEMO_BACKEND_PORT", "8081"))
IDP_PORT = int(os.environ.get("DEMO_IDP_PORT", "8082"))
ADMIN_PORT = int(os.environ.get("DEMO_ADMIN_PORT", "9091"))

WALKTHROUGH = """\
Gateway on http://127.0.0.1:{port} (demo backend :{backend}, offline ZITADEL stand-in :{idp},
health and metrics on http://127.0.0.1:{admin}/metrics). Ctrl-C stops all.

Demo tokens (stand-in only): demo-reader-token (role read:messages), demo-noroles-token (no role),
demo-expired-token (inactive). Try the seed example's steps:

  curl -i http://127.0.0.1:{port}/api/public
  curl -i http://127.0.0.1:{port}/api/private
  PAT=demo-reader-token
  curl -i http://127.0.0.1:{port}/api/private --header "authorization: Bearer $PAT"
  curl -i http://127.0.0.1:{port}/api/private-scoped --header "authorization: Bearer $PAT"
  curl -i http://127.0.0.1:{port}/api/private-scoped --header "authorization: Bearer demo-noroles-token"   # 403
  curl -i http://127.0.0.1:{port}/api/private --header "authorization: Bearer demo-expired-token"          # 401
  curl -i http://127.0.0.1:{port}/api/whoami --header "authorization: Bearer $PAT"   # what the backend sees
"""


def wait_for_port(
    port: int, procs: Sequence[subprocess.Popen[bytes]], timeout: float = 20.0, who: str = "demo"
) -> None:
    """Until something listens on 127.0.0.1:port; SystemExit if one of `procs` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"{who}: {proc.args!r} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{who}: nothing listens on port {port} after {timeout:.0f}s")


def _check_free(port: int) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"demo: port {port} is in use; stop what runs there or set DEMO_*_PORT")


def main() -> int:
    for port in (GATEWAY_PORT, BACKEND_PORT, IDP_PORT, ADMIN_PORT):
        _check_free(port)
    env = {
        **os.environ,
        "ZITADEL_DOMAIN": f"http://127.0.0.1:{IDP_PORT}",
        "ZITADEL_CLIENT_ID": DEMO_CLIENT_ID,
        "ZITADEL_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        "ZITADEL_CONNECT_URL": "",
        "UPSTREAM_URL": f"http://127.0.0.1:{BACKEND_PORT}",
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(GATEWAY_PORT),
        "ADMIN_HOST": "127.0.0.1",
        "ADMIN_PORT": str(ADMIN_PORT),
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),  # a person is watching this terminal
    }
    py = sys.executable
    commands = [
        [py, "-m", "demo_backend.idp", "--port", str(IDP_PORT)],
        [py, "-m", "demo_backend", "--port", str(BACKEND_PORT)],
        [py, "-m", "gateway", "--config", str(ROOT / "config.yaml")],
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # One after the other, so the gateway finds its IdP's discovery document on its first try.
        for command, port in zip(commands, (IDP_PORT, BACKEND_PORT, GATEWAY_PORT), strict=True):
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env))
            wait_for_port(port, procs)
        print(WALKTHROUGH.format(port=GATEWAY_PORT, backend=BACKEND_PORT, idp=IDP_PORT, admin=ADMIN_PORT), flush=True)
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
