"""`workers: N`: N processes on one port (SO_REUSEPORT) behind one supervising parent."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from demo_backend.app import PRIVATE_SCOPED

from .support import ENV, FakeIdP, free_ports, gateway_document, gateway_process


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_two_workers_share_the_port_and_stop_together(idp: FakeIdP, upstream_url: str, tmp_path: Path) -> None:
    document = gateway_document(
        issuer=idp.issuer, upstream_url=upstream_url, introspection_endpoint=idp.issuer + "/oauth/v2/introspect"
    )
    document["workers"] = 2
    admin = free_ports(2)
    document["admin"] = {"host": "127.0.0.1", "port": admin}
    async with gateway_process(document, tmp_path, ENV) as (url, proc), aiohttp.ClientSession() as client:
        for _ in range(100):  # both workers listening
            if len(children(proc.pid)) == 2:
                break
            await asyncio.sleep(0.05)
        workers = children(proc.pid)
        assert len(workers) == 2
        headers = {"authorization": "Bearer demo-reader-token"}
        for _ in range(20):
            async with client.get(url + "/api/private-scoped", headers=headers) as resp:
                assert resp.status == 200
                assert await resp.read() == PRIVATE_SCOPED
        assert 1 <= idp.introspections <= 2  # one per worker at most: each has its own memory cache
        # Each worker has its own admin listener (its metrics are its own), at admin.port + its index.
        for port in (admin, admin + 1):
            for _ in range(200):  # a worker's admin listener starts just after its proxy listener
                try:
                    async with client.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        assert resp.status == 200
                        assert "gateway_requests_total" in await resp.text()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"no admin listener on {port}")
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 20) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


async def test_a_worker_that_dies_stops_the_gateway(idp: FakeIdP, upstream_url: str, tmp_path: Path) -> None:
    document = gateway_document(issuer=idp.issuer, upstream_url=upstream_url)
    document["workers"] = 2
    async with gateway_process(document, tmp_path, ENV) as (_, proc):
        for _ in range(100):
            if len(children(proc.pid)) == 2:
                break
            await asyncio.sleep(0.05)
        os.kill(children(proc.pid)[0], 9)
        assert await asyncio.to_thread(proc.wait, 20) == 1
