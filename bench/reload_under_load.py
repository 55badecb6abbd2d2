"""Hot reload under load: `python -m bench.reload_under_load [seconds] [reloads-per-second]`.

Real servers on 127.0.0.1 (IdP stand-in, demo backend, gateway in one event loop); 16 clients loop over a public
and a role-protected route while the config file is rewritten and reloaded, alternately valid and invalid.
Prints requests/s, reloads ok/failed and the number of wrong answers (must be 0). Numbers depend on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from demo_backend.app import build_app as build_backend
from demo_backend.idp import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TOKENS, IdPSettings, build_idp_app
from gateway.app import METRICS, RELOADER, RUNTIME, build_app
from gateway.ops.reload import ConfigSource
from gateway.testing import GatewayTestServer

CLIENTS = 16
LOAD = [
    ("/api/public", {}, 200),
    ("/api/private-scoped", {"Authorization": "Bearer demo-reader-token"}, 200),
    ("/api/private-scoped", {"Authorization": "Bearer demo-noroles-token"}, 403),
]


def _document(issuer: str, upstream: str, valid: bool) -> dict[str, Any]:
    policy: dict[str, Any] = {"roles": {"any_of": ["read:messages"]}} if valid else {"policy": "sometimes"}
    return {
        "idp": {"issuer": issuer},
        "upstreams": {"default": upstream},
        "routes": [{"path": "/api/public", "policy": "public"}, {"path": "/api/private-scoped", **policy}],
        "reload": {"watch": False},
    }


async def _serve(app: web.Application, port: int | None = None) -> TestServer:
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return server


async def main(seconds: float, rate: float) -> int:
    logging.disable(logging.CRITICAL)  # the refused reloads would flood the terminal
    with tempfile.TemporaryDirectory() as tmp:
        idp = await _serve(web.Application())  # placeholder to learn a free port
        port = idp.port
        await idp.close()
        issuer = f"http://127.0.0.1:{port}"
        settings = IdPSettings(issuer, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, dict(DEMO_TOKENS))
        idp = await _serve(build_idp_app(settings), port)
        backend = await _serve(build_backend())
        path = Path(tmp) / "gateway.yaml"
        (Path(tmp) / ".env").write_text(
            f"ZITADEL_CLIENT_ID={DEMO_CLIENT_ID}\nZITADEL_CLIENT_SECRET={DEMO_CLIENT_SECRET}\n"
        )
        upstream = str(backend.make_url("")).rstrip("/")
        path.write_text(yaml.safe_dump(_document(issuer, upstream, True)))
        source = ConfigSource(path)
        gateway = GatewayTestServer(build_app(source.load(), source=source), host="127.0.0.1")
        await gateway.start_server()
        app = gateway.app
        assert app is not None
        base = str(gateway.make_url("")).rstrip("/")
        introspector = app[RUNTIME].current.introspector
        while introspector is not None and not introspector.ready:  # as a load balancer waits for /readyz
            await asyncio.sleep(0.01)
        done = 0
        wrong = 0
        stop = asyncio.Event()

        async def client(session: aiohttp.ClientSession, k: int) -> None:
            nonlocal done, wrong
            i = k
            while not stop.is_set():
                target, headers, expected = LOAD[i % len(LOAD)]
                async with session.get(base + target, headers=headers) as resp:
                    await resp.read()
                    done += 1
                    wrong += resp.status != expected
                i += 1

        async def reloader() -> None:
            valid = False
            while not stop.is_set():
                path.write_text(yaml.safe_dump(_document(issuer, upstream, valid)))
                await app[RELOADER].reload()
                valid = not valid
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1 / rate)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:
            tasks = [asyncio.create_task(client(session, k)) for k in range(CLIENTS)]
            tasks.append(asyncio.create_task(reloader()))
            started = time.perf_counter()
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - started
        registry = app[METRICS].registry
        ok = registry.get_sample_value("gateway_config_reloads_total", {"result": "ok"}) or 0
        failed = registry.get_sample_value("gateway_config_reloads_total", {"result": "failed"}) or 0
        print(f"{done} requests in {elapsed:.1f}s ({done / elapsed:.0f}/s, {CLIENTS} clients, one process)")
        print(f"reloads: {ok:.0f} ok, {failed:.0f} refused; wrong answers: {wrong}")
        await gateway.close()
        await backend.close()
        await idp.close()
        return 1 if wrong else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(asyncio.run(main(float(args[0]) if args else 5.0, float(args[1]) if len(args) > 1 else 20.0)))
