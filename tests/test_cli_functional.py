"""The real entry points as subprocesses: `python -m gateway` with the repository's config.yaml, `check`,
a bad config that stops before binding, and `make demo`'s orchestrator."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp

from demo_backend.app import PRIVATE, PRIVATE_SCOPED, PUBLIC
from demo_backend.idp import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

from .support import free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "config.yaml")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ZITADEL_", "CLIENT_", "GATEWAY_", "UPSTREAM_", "FORWARD_AUTH_"))
    }
    env.update(extra)
    return env


async def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        assert proc.poll() is None, f"{proc.args!r} exited with {proc.returncode}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


@contextmanager
def _running(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@asynccontextmanager
async def _stack(**extra: str) -> AsyncIterator[tuple[int, subprocess.Popen[bytes]]]:
    idp_port, backend_port, gateway_port = free_port(), free_port(), free_port()
    env = _env(
        **extra,
        ZITADEL_DOMAIN=f"http://127.0.0.1:{idp_port}",
        ZITADEL_CLIENT_ID=DEMO_CLIENT_ID,
        ZITADEL_CLIENT_SECRET=DEMO_CLIENT_SECRET,
        UPSTREAM_URL=f"http://127.0.0.1:{backend_port}",
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(gateway_port),
        ADMIN_PORT=str(free_port()),
    )
    with (
        _running(["-m", "demo_backend.idp", "--port", str(idp_port)], env) as idp,
        _running(["-m", "demo_backend", "--port", str(backend_port)], env) as backend,
    ):
        await _wait_port(idp_port, idp)
        await _wait_port(backend_port, backend)
        with _running(["-m", "gateway", "--config", CONFIG, "--env-file", os.devnull], env) as gateway:
            await _wait_port(gateway_port, gateway)
            yield gateway_port, gateway


async def test_gateway_subprocess_runs_the_seed_walkthrough_with_repository_config() -> None:
    async with _stack() as (port, proc), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        pat = {"authorization": "Bearer demo-reader-token"}
        steps = [
            ("/api/public", {}, 200, PUBLIC),
            ("/api/private", {}, 401, None),
            ("/api/private", pat, 200, PRIVATE),
            ("/api/private-scoped", pat, 200, PRIVATE_SCOPED),
            ("/api/private-scoped", {"authorization": "Bearer demo-noroles-token"}, 403, None),
            ("/api/private", {"authorization": "Bearer demo-expired-token"}, 401, None),
            ("/api/elsewhere", pat, 404, None),
        ]
        for path, headers, status, body in steps:
            async with http.get(base + path, headers=headers) as resp:
                assert resp.status == status, path
                if body is not None:
                    assert await resp.read() == body
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 10) == 0


async def test_the_repository_config_turns_forward_auth_on_with_forward_auth_port() -> None:
    decisions = free_port()
    async with _stack(FORWARD_AUTH_PORT=str(decisions)) as (_, proc), aiohttp.ClientSession() as http:
        await _wait_port(decisions, proc)
        asked = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/private-scoped"}
        async with http.get(f"http://127.0.0.1:{decisions}/", headers=asked) as resp:
            assert resp.status == 401
        pat = {"authorization": "Bearer demo-reader-token", **asked}
        async with http.get(f"http://127.0.0.1:{decisions}/", headers=pat) as resp:
            assert resp.status == 200
            assert resp.headers["X-Auth-Roles"] == "read:messages"
            assert await resp.read() == b""


def test_check_prints_the_route_table() -> None:
    env = _env(ZITADEL_DOMAIN="https://z.example", ZITADEL_CLIENT_ID="a", ZITADEL_CLIENT_SECRET="b")
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", CONFIG, "--env-file", os.devnull],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "/api/private-scoped" in out.stdout
    assert "roles: any of read:messages" in out.stdout


def test_bad_config_exits_nonzero_naming_file_and_key_before_binding(tmp_path: Path) -> None:
    port = free_port()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        "upstreams: {default: 'http://127.0.0.1:1'}\n"
        "routes:\n  - path: /a\n    roles: {any_of: read}\n"
        "  - path: /b\n    policy: authenticated\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(bad), "--env-file", os.devnull],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert f"{bad}: routes[0].roles.any_of: expected a list" in out.stderr
    assert f"{bad}: idp: is required" in out.stderr
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


async def test_make_demo_orchestrator_serves_the_walkthrough_and_stops_on_ctrl_c() -> None:
    names = ("DEMO_GATEWAY_PORT", "DEMO_BACKEND_PORT", "DEMO_IDP_PORT", "DEMO_ADMIN_PORT")
    ports = {name: free_port() for name in names}
    env = _env(**{k: str(v) for k, v in ports.items()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo_backend.demo"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        base = f"http://127.0.0.1:{ports['DEMO_GATEWAY_PORT']}"
        printed = ""
        while "Bearer demo-noroles-token" not in printed:  # the walk-through is printed once all three are up
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            assert line, f"demo exited early: {proc.stderr.read() if proc.stderr else ''!r}"
            printed += line.decode()
        assert f"curl -i {base}/api/private-scoped" in printed
        async with aiohttp.ClientSession() as http:
            async with http.get(
                base + "/api/private-scoped", headers={"authorization": "Bearer demo-reader-token"}
            ) as r:
                assert r.status == 200
                assert await r.read() == PRIVATE_SCOPED
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        for port in ports.values():
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, "a demo process kept running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
