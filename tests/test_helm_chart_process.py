"""The chart's Deployment, run here: its container's command and environment as a local process, reading the
config.yaml rendered into its ConfigMap from where the volume mount puts it, serves the seed walk-through.

Nothing of the pod is invented: the command is the container's (`python` is this interpreter, which has the package
installed as the image does), the environment is exactly the container's `env` with each `secretKeyRef` resolved
from a stand-in Secret, and every file the command names comes from the ConfigMap the Deployment mounts. Only the
values differ from a cluster's: the listeners bind 127.0.0.1 on free ports (`bindAddress`, `ports`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from demo_backend.app import PRIVATE, PRIVATE_SCOPED, PUBLIC

from .chart import FULLNAME, Json, Rendered, render
from .support import CLIENT_ID, CLIENT_SECRET, FakeIdP, free_port

SECRETS = {"zitadel-gateway": {"client-id": CLIENT_ID, "client-secret": CLIENT_SECRET}}
READER = {"Authorization": "Bearer demo-reader-token"}
NOROLES = {"Authorization": "Bearer demo-noroles-token"}


def pod_files(rendered: Rendered, root: Path) -> dict[str, Path]:
    """Lay out each ConfigMap volume the container mounts under `root`; mount path -> local directory."""
    spec = rendered.deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounted: dict[str, Path] = {}
    for mount in rendered.container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            continue
        directory = root / mount["name"]
        directory.mkdir()
        for name, text in rendered.one("ConfigMap", volume["configMap"]["name"])["data"].items():
            (directory / name).write_text(text, encoding="utf-8")
        mounted[mount["mountPath"]] = directory
    return mounted


def local_command(rendered: Rendered, mounted: dict[str, Path]) -> list[str]:
    command: list[str] = [*rendered.container["command"], *rendered.container.get("args", [])]
    assert command[0] == "python"
    out = [sys.executable]
    for word in command[1:]:
        for mount_path, directory in mounted.items():
            if word.startswith(mount_path + "/"):
                word = str(directory / word.removeprefix(mount_path + "/"))
        out.append(word)
    return out


def container_env(rendered: Rendered) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in rendered.container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            reference: Json = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = SECRETS[reference["name"]][reference["key"]]
    return env


async def wait_ready(session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process) -> None:
    for _ in range(1000):  # a deadline for a slow machine, not a timing assertion
        assert proc.returncode is None, "the gateway exited"
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never answered 200")


async def test_the_rendered_deployment_serves_the_walk_through(tmp_path: Path, idp: FakeIdP, upstream_url: str) -> None:
    proxy, admin, forward_auth = free_port(), free_port(), free_port()
    rendered = render(
        {
            "bindAddress": "127.0.0.1",
            "ports": {"proxy": proxy, "admin": admin, "forwardAuth": forward_auth},
            "zitadel": {"domain": idp.issuer},
            "upstreams": {"default": upstream_url},
            "routes": [
                {"id": "public", "path": "/api/public", "policy": "public"},
                {"id": "private", "path": "/api/private", "policy": "authenticated"},
                {"id": "private-scoped", "path": "/api/private-scoped", "roles": {"any_of": ["read:messages"]}},
            ],
            "forwardAuth": {"enabled": True},
        }
    )
    assert rendered.deployment["metadata"]["name"] == FULLNAME
    mounted = pod_files(rendered, tmp_path)
    log = (tmp_path / "gateway.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *local_command(rendered, mounted),
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), **container_env(rendered)},
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{rendered.container_port('http')}"
    try:
        async with aiohttp.ClientSession() as session:
            # The probes' own requests: the ports and paths of the Deployment.
            admin_base = f"http://127.0.0.1:{rendered.container_port('admin')}"
            await wait_ready(session, admin_base + rendered.container["readinessProbe"]["httpGet"]["path"], proc)
            async with session.get(admin_base + rendered.container["livenessProbe"]["httpGet"]["path"]) as resp:
                assert resp.status == 200

            async with session.get(base + "/api/public") as resp:
                assert (resp.status, await resp.read()) == (200, PUBLIC)
            async with session.get(base + "/api/private") as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
            async with session.get(base + "/api/private", headers=READER) as resp:
                assert (resp.status, await resp.read()) == (200, PRIVATE)
            async with session.get(base + "/api/private-scoped", headers=READER) as resp:
                assert (resp.status, await resp.read()) == (200, PRIVATE_SCOPED)
            async with session.get(base + "/api/private-scoped", headers=NOROLES) as resp:
                assert resp.status == 403

            # The forward-auth Service's port decides the same way.
            decide = f"http://127.0.0.1:{rendered.container_port('forward-auth')}/"
            original = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/private-scoped"}
            async with session.get(decide, headers={**original, **READER}) as resp:
                assert resp.status == 200
                assert resp.headers["X-Auth-Roles"] == "read:messages"
            async with session.get(decide, headers={**original, **NOROLES}) as resp:
                assert resp.status == 403
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends after the preStop pause
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    output = (tmp_path / "gateway.log").read_text()
    assert "demo-reader-token" not in output and CLIENT_SECRET not in output
