"""`python -m deploy.bootstrap` against a fake ZITADEL Management API v1 served on 127.0.0.1.

The fake implements exactly the endpoints the bootstrap calls, shaped as in shared/zitadel.md: it resolves its
instance from the Host header (404 "Instance not found" otherwise), wants `Authorization: Bearer <admin PAT>`,
answers 409 for what exists, and can play a ZITADEL that is still starting.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from deploy.bootstrap import (
    BootstrapError,
    ConfigError,
    Settings,
    provision,
    render_instructions,
)

REPO = Path(__file__).resolve().parents[1]
INSTANCE_HOST = "localhost:8080"
ADMIN_PAT = "admin-pat-0123456789"
PAT_EXPIRATION = "2030-01-01T00:00:00Z"
Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Received:
    path: str
    host: str
    authorization: str
    body: Json


@dataclass
class FakeZitadel:
    """In-memory ZITADEL: projects, roles, API apps, machine users, grants and PATs of one organisation."""

    host: str = INSTANCE_HOST
    admin_pat: str = ADMIN_PAT
    outages: list[tuple[int, str]] = field(default_factory=list)  # answered first, one per request
    lagging: bool = False  # each distinct search lists nothing the first time (projections lag behind)
    received: list[Received] = field(default_factory=list)
    projects: dict[str, Json] = field(default_factory=dict)
    roles: dict[str, list[str]] = field(default_factory=dict)
    apps: dict[str, Json] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # app id -> current client secret
    users: dict[str, Json] = field(default_factory=dict)
    grants: dict[str, Json] = field(default_factory=dict)
    pats: dict[str, str] = field(default_factory=dict)  # token -> user id
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(170000000000000001))
    _searched: set[str] = field(default_factory=set)

    def new_id(self) -> str:
        return str(next(self._ids))

    def state(self) -> str:
        return json.dumps([self.projects, self.roles, self.apps, self.secrets, self.users, self.grants, self.pats])

    def creating_posts(self) -> list[Received]:
        """What changed ZITADEL: every POST but the searches."""
        return [r for r in self.received if not r.path.endswith("/_search")]

    def application(self) -> web.Application:
        @web.middleware
        async def instance_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            body = await request.json() if request.can_read_body else {}
            self.received.append(Received(request.path, request.host, request.headers.get("Authorization", ""), body))
            if self.outages:
                status, text = self.outages.pop(0)
                return web.Response(status=status, text=text, content_type="application/json")
            if request.host != self.host:
                return web.json_response({"code": 5, "message": "Instance not found"}, status=404)
            if request.headers.get("Authorization") != f"Bearer {self.admin_pat}":
                return web.json_response({"code": 16, "message": "Errors.Token.Invalid"}, status=401)
            return await handler(request)

        app = web.Application(middlewares=[instance_and_auth])
        m = "/management/v1"
        app.router.add_post(f"{m}/projects/_search", self.search_projects)
        app.router.add_post(f"{m}/projects", self.add_project)
        app.router.add_post(f"{m}/projects/{{pid}}/roles/_search", self.search_roles)
        app.router.add_post(f"{m}/projects/{{pid}}/roles", self.add_role)
        app.router.add_post(f"{m}/projects/{{pid}}/apps/_search", self.search_apps)
        app.router.add_post(f"{m}/projects/{{pid}}/apps/api", self.add_api_app)
        app.router.add_post(
            f"{m}/projects/{{pid}}/apps/{{aid}}/api_config/_generate_client_secret", self.regenerate_secret
        )
        app.router.add_post(f"{m}/users/_search", self.search_users)
        app.router.add_post(f"{m}/users/grants/_search", self.search_grants)
        app.router.add_post(f"{m}/users/machine", self.add_machine_user)
        app.router.add_post(f"{m}/users/{{uid}}/pats", self.add_pat)
        app.router.add_post(f"{m}/users/{{uid}}/grants", self.add_grant)
        return app

    # -- helpers ---------------------------------------------------------------------------------------------
    def _listed(self, request: web.Request, query: Json, items: list[Json]) -> web.Response:
        search = f"{request.path} {json.dumps(query, sort_keys=True)}"
        if self.lagging and search not in self._searched:
            self._searched.add(search)
            items = []
        # proto3 JSON: an empty repeated field is left out.
        answer: Json = {"details": {"totalResult": str(len(items))}}
        if items:
            answer["result"] = items
        return web.json_response(answer)

    @staticmethod
    def _exists(what: str) -> web.Response:
        return web.json_response({"code": 6, "message": f"Errors.{what}.AlreadyExists"}, status=409)

    @staticmethod
    def _query(body: Json, name: str) -> Json:
        found: Json = next(q[name] for q in body["queries"] if name in q)
        return found

    def _project(self, request: web.Request) -> str:
        pid = request.match_info["pid"]
        if pid not in self.projects:
            raise web.HTTPNotFound(text='{"code":5,"message":"Errors.Project.NotFound"}')
        return pid

    # -- projects and roles ----------------------------------------------------------------------------------
    async def search_projects(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = self._query(body, "nameQuery")["name"]
        return self._listed(request, body, [p for p in self.projects.values() if p["name"] == name])

    async def add_project(self, request: web.Request) -> web.Response:
        body = await request.json()
        if any(p["name"] == body["name"] for p in self.projects.values()):
            return self._exists("Project")
        pid = self.new_id()
        self.projects[pid] = {
            "id": pid,
            "name": body["name"],
            "projectRoleAssertion": body["projectRoleAssertion"],
        }
        self.roles[pid] = []
        return web.json_response({"id": pid, "details": {"sequence": "1"}})

    async def search_roles(self, request: web.Request) -> web.Response:
        pid = self._project(request)
        body = await request.json()
        key = self._query(body, "keyQuery")["key"]
        return self._listed(request, body, [{"key": k, "displayName": k} for k in self.roles[pid] if k == key])

    async def add_role(self, request: web.Request) -> web.Response:
        pid = self._project(request)
        body = await request.json()
        if body["roleKey"] in self.roles[pid]:
            return self._exists("Project.Role")
        self.roles[pid].append(body["roleKey"])
        return web.json_response({"details": {"sequence": "2"}})

    # -- applications ----------------------------------------------------------------------------------------
    async def search_apps(self, request: web.Request) -> web.Response:
        pid = self._project(request)
        body = await request.json()
        name = self._query(body, "nameQuery")["name"]
        apps = [a for a in self.apps.values() if a["projectId"] == pid and a["name"] == name]
        return self._listed(request, body, apps)

    async def add_api_app(self, request: web.Request) -> web.Response:
        pid = self._project(request)
        body = await request.json()
        if any(a["projectId"] == pid and a["name"] == body["name"] for a in self.apps.values()):
            return self._exists("Project.App")
        aid = self.new_id()
        client_id = f"{self.new_id()}@gateway"
        # authMethodType BASIC is the enum's zero value: proto3 JSON leaves it out of the search result.
        self.apps[aid] = {
            "id": aid,
            "name": body["name"],
            "projectId": pid,
            "apiConfig": {"clientId": client_id},
        }
        self.secrets[aid] = f"secret-{aid}"
        return web.json_response({"appId": aid, "clientId": client_id, "clientSecret": self.secrets[aid]})

    async def regenerate_secret(self, request: web.Request) -> web.Response:
        self._project(request)
        aid = request.match_info["aid"]
        if aid not in self.apps:
            raise web.HTTPNotFound(text='{"code":5,"message":"Errors.Project.App.NotFound"}')
        self.secrets[aid] = f"secret-{aid}-{self.new_id()}"
        return web.json_response({"clientSecret": self.secrets[aid], "details": {"sequence": "9"}})

    # -- users, grants, PATs ---------------------------------------------------------------------------------
    async def search_users(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = self._query(body, "userNameQuery")["userName"]
        return self._listed(request, body, [u for u in self.users.values() if u["userName"] == name])

    async def add_machine_user(self, request: web.Request) -> web.Response:
        body = await request.json()
        if any(u["userName"] == body["userName"] for u in self.users.values()):
            return self._exists("User")
        uid = self.new_id()
        self.users[uid] = {"id": uid, "userName": body["userName"], "machine": {"name": body["name"]}}
        return web.json_response({"userId": uid, "details": {"sequence": "3"}})

    async def add_pat(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        if uid not in self.users:
            raise web.HTTPNotFound(text='{"code":5,"message":"Errors.User.NotFound"}')
        token = f"pat-{uid}-{self.new_id()}"
        self.pats[token] = uid
        return web.json_response({"tokenId": self.new_id(), "token": token})

    async def search_grants(self, request: web.Request) -> web.Response:
        body = await request.json()
        uid = self._query(body, "userIdQuery")["userId"]
        pid = self._query(body, "projectIdQuery")["projectId"]
        grants = [g for g in self.grants.values() if g["userId"] == uid and g["projectId"] == pid]
        return self._listed(request, body, grants)

    async def add_grant(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        body = await request.json()
        if any(g["userId"] == uid and g["projectId"] == body["projectId"] for g in self.grants.values()):
            return self._exists("UserGrant")
        gid = self.new_id()
        self.grants[gid] = {
            "id": gid,
            "userId": uid,
            "projectId": body["projectId"],
            "roleKeys": body["roleKeys"],
        }
        return web.json_response({"userGrantId": gid})


# -- fixtures and helpers ------------------------------------------------------------------------------------


@pytest.fixture
def admin_pat_file(tmp_path: Path) -> Path:
    path = tmp_path / "zitadel-data" / "admin.pat"
    path.parent.mkdir()
    path.write_text(ADMIN_PAT + "\n")  # ZITADEL ends the file with a newline
    return path


def settings_for(server: TestServer, tmp_path: Path, admin_pat_file: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "connect_url": str(server.make_url("/")),
        "domain": f"http://{INSTANCE_HOST}",
        "admin_pat_file": admin_pat_file,
        "out_dir": tmp_path / "bootstrap",
        "gateway_url": "http://localhost:5000",
        "timeout": 5.0,
        "retry_interval": 0.01,
        "pat_expiration": PAT_EXPIRATION,
    }
    values.update(changes)
    return Settings(**values)


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value.strip("'") for key, value in pairs}


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the success path ----------------------------------------------------------------------------------------


async def test_first_run_creates_everything_and_writes_the_gateway_settings(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    fake = FakeZitadel()
    server = await aiohttp_server(fake.application())
    settings = settings_for(server, tmp_path, admin_pat_file)

    result = await provision(settings)

    assert {r.host for r in fake.received} == {INSTANCE_HOST}
    assert {r.authorization for r in fake.received} == {f"Bearer {ADMIN_PAT}"}
    [project_id] = fake.projects
    [app_id] = fake.apps
    reader_id = next(uid for uid, u in fake.users.items() if u["userName"] == "svc-reader")
    noroles_id = next(uid for uid, u in fake.users.items() if u["userName"] == "svc-noroles")
    m = "/management/v1"
    assert [(r.path, r.body) for r in fake.creating_posts()] == [
        (f"{m}/projects", {"name": "gateway", "projectRoleAssertion": True}),
        (f"{m}/projects/{project_id}/roles", {"roleKey": "read:messages", "displayName": "read:messages"}),
        (
            f"{m}/projects/{project_id}/apps/api",
            {"name": "gateway", "authMethodType": "API_AUTH_METHOD_TYPE_BASIC"},
        ),
        (
            f"{m}/users/machine",
            {
                "userName": "svc-reader",
                "name": "Service Reader",
                "accessTokenType": "ACCESS_TOKEN_TYPE_BEARER",
            },
        ),
        (f"{m}/users/{reader_id}/grants", {"projectId": project_id, "roleKeys": ["read:messages"]}),
        (f"{m}/users/{reader_id}/pats", {"expirationDate": PAT_EXPIRATION}),
        (
            f"{m}/users/machine",
            {
                "userName": "svc-noroles",
                "name": "Service Without Roles",
                "accessTokenType": "ACCESS_TOKEN_TYPE_BEARER",
            },
        ),
        (f"{m}/users/{noroles_id}/pats", {"expirationDate": PAT_EXPIRATION}),
    ]
    assert [r.body for r in fake.received if r.path == f"{m}/projects/_search"] == [
        {"queries": [{"nameQuery": {"name": "gateway", "method": "TEXT_QUERY_METHOD_EQUALS"}}]}
    ]
    assert [r.body for r in fake.received if r.path == f"{m}/users/_search"] == [
        {"queries": [{"userNameQuery": {"userName": name, "method": "TEXT_QUERY_METHOD_EQUALS"}}]}
        for name in ("svc-reader", "svc-noroles")
    ]

    out = settings.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["gateway.env", "noroles.pat", "reader.pat"]
    assert read_env(out / "gateway.env") == {
        "ZITADEL_CLIENT_ID": fake.apps[app_id]["apiConfig"]["clientId"],
        "ZITADEL_CLIENT_SECRET": fake.secrets[app_id],
        "ZITADEL_PROJECT_ID": project_id,
    }
    assert fake.pats[(out / "reader.pat").read_text().strip()] == reader_id
    assert fake.pats[(out / "noroles.pat").read_text().strip()] == noroles_id
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o600"}
    assert result.pats == {
        "reader": (out / "reader.pat").read_text().strip(),
        "noroles": (out / "noroles.pat").read_text().strip(),
    }
    assert result.project_id == project_id


async def test_the_gateway_env_file_reads_back_with_python_dotenv(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    from dotenv import dotenv_values

    fake = FakeZitadel()
    settings = settings_for(await aiohttp_server(fake.application()), tmp_path, admin_pat_file)
    await provision(settings)

    [app_id] = fake.apps
    values = dotenv_values(settings.out_dir / "gateway.env")
    assert values["ZITADEL_CLIENT_ID"] == fake.apps[app_id]["apiConfig"]["clientId"]
    assert "@" in str(values["ZITADEL_CLIENT_ID"])
    assert values["ZITADEL_CLIENT_SECRET"] == fake.secrets[app_id]


async def test_a_second_run_changes_nothing(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    fake = FakeZitadel()
    settings = settings_for(await aiohttp_server(fake.application()), tmp_path, admin_pat_file)
    first = await provision(settings)
    files = snapshot(settings.out_dir)
    state = fake.state()
    fake.received.clear()

    second = await provision(settings)

    assert fake.creating_posts() == []
    assert fake.received, "the second run looked everything up"
    assert fake.state() == state
    assert snapshot(settings.out_dir) == files
    assert second == first


async def test_existing_app_without_a_saved_secret_gets_a_new_secret(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    fake = FakeZitadel()
    settings = settings_for(await aiohttp_server(fake.application()), tmp_path, admin_pat_file)
    await provision(settings)
    [app_id] = fake.apps
    [project_id] = fake.projects
    first_secret = fake.secrets[app_id]
    (settings.out_dir / "gateway.env").unlink()
    fake.received.clear()

    await provision(settings)

    assert [r.path for r in fake.creating_posts()] == [
        f"/management/v1/projects/{project_id}/apps/{app_id}/api_config/_generate_client_secret"
    ]
    assert fake.secrets[app_id] != first_secret
    saved = read_env(settings.out_dir / "gateway.env")
    assert saved["ZITADEL_CLIENT_SECRET"] == fake.secrets[app_id]
    assert saved["ZITADEL_CLIENT_ID"] == fake.apps[app_id]["apiConfig"]["clientId"]


async def test_a_missing_pat_file_gets_a_new_pat_and_nothing_else(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    fake = FakeZitadel()
    settings = settings_for(await aiohttp_server(fake.application()), tmp_path, admin_pat_file)
    await provision(settings)
    (settings.out_dir / "noroles.pat").unlink()
    fake.received.clear()

    result = await provision(settings)

    noroles_id = next(uid for uid, u in fake.users.items() if u["userName"] == "svc-noroles")
    assert [r.path for r in fake.creating_posts()] == [f"/management/v1/users/{noroles_id}/pats"]
    assert fake.pats[result.pats["noroles"]] == noroles_id
    assert (settings.out_dir / "noroles.pat").read_text() == result.pats["noroles"] + "\n"


async def test_409_already_exists_is_looked_up_instead_of_failing(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    """ZITADEL's searches read projections that may lag: the search misses, the create answers 409."""
    fake = FakeZitadel()
    settings = settings_for(await aiohttp_server(fake.application()), tmp_path, admin_pat_file)
    first = await provision(settings)
    state = json.dumps([fake.projects, fake.roles, fake.apps, fake.users, fake.grants])
    (settings.out_dir / "gateway.env").unlink()
    fake.received.clear()
    fake.lagging = True

    second = await provision(settings)

    m = "/management/v1"
    [project_id] = fake.projects
    [app_id] = fake.apps
    reader_id = next(uid for uid, u in fake.users.items() if u["userName"] == "svc-reader")
    assert [r.path for r in fake.creating_posts()] == [
        f"{m}/projects",
        f"{m}/projects/{project_id}/roles",
        f"{m}/projects/{project_id}/apps/api",
        f"{m}/projects/{project_id}/apps/{app_id}/api_config/_generate_client_secret",
        f"{m}/users/machine",
        f"{m}/users/{reader_id}/grants",
        f"{m}/users/machine",
    ]
    assert json.dumps([fake.projects, fake.roles, fake.apps, fake.users, fake.grants]) == state
    assert read_env(settings.out_dir / "gateway.env")["ZITADEL_CLIENT_SECRET"] == fake.secrets[app_id]
    assert second.pats == first.pats


# -- ZITADEL not (yet) reachable -----------------------------------------------------------------------------


async def test_waits_while_zitadel_is_starting(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    fake = FakeZitadel(
        outages=[
            (503, '{"code":14,"message":"unavailable"}'),
            (404, '{"code":5,"message":"Instance not found"}'),
            (502, "Bad Gateway"),
            (401, '{"code":16,"message":"Errors.Token.Invalid"}'),
        ]
    )
    settings = settings_for(await aiohttp_server(fake.application()), tmp_path, admin_pat_file)

    await provision(settings)

    assert [r.path for r in fake.received[:5]] == ["/management/v1/projects/_search"] * 5
    assert len(fake.projects) == 1
    assert (settings.out_dir / "gateway.env").is_file()


async def test_waits_until_zitadel_listens(aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path) -> None:
    port = free_port()
    fake = FakeZitadel()
    settings = Settings(
        connect_url=f"http://127.0.0.1:{port}",
        domain=f"http://{INSTANCE_HOST}",
        admin_pat_file=admin_pat_file,
        out_dir=tmp_path / "bootstrap",
        timeout=10.0,
        retry_interval=0.02,
        pat_expiration=PAT_EXPIRATION,
    )
    running = asyncio.create_task(provision(settings))
    await asyncio.sleep(0.2)  # connections are refused meanwhile
    assert not running.done()

    await aiohttp_server(fake.application(), port=port)
    await asyncio.wait_for(running, 10)

    assert len(fake.users) == 2


async def test_waits_for_the_admin_pat_file(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    fake = FakeZitadel()
    settings = settings_for(await aiohttp_server(fake.application()), tmp_path, admin_pat_file)
    admin_pat_file.unlink()
    running = asyncio.create_task(provision(settings))
    await asyncio.sleep(0.1)
    assert not running.done() and fake.received == []

    admin_pat_file.write_text(ADMIN_PAT + "\n")
    await asyncio.wait_for(running, 5)

    assert len(fake.projects) == 1


async def test_wrong_host_header_fails_with_instance_not_found_after_the_deadline(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    fake = FakeZitadel()
    server = await aiohttp_server(fake.application())
    settings = settings_for(server, tmp_path, admin_pat_file, domain="http://zitadel:8080", timeout=0.3)

    started = time.monotonic()
    with pytest.raises(BootstrapError) as raised:
        await provision(settings)

    assert time.monotonic() - started < 3
    message = str(raised.value)
    assert "Instance not found" in message and "'zitadel:8080'" in message and "Host header" in message
    assert fake.received and {r.host for r in fake.received} == {"zitadel:8080"}
    assert fake.projects == {}
    assert not settings.out_dir.exists()


async def test_a_definitive_refusal_fails_at_once(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    fake = FakeZitadel(outages=[(403, '{"code":7,"message":"No matching permissions found"}')])
    settings = settings_for(await aiohttp_server(fake.application()), tmp_path, admin_pat_file, timeout=30)

    started = time.monotonic()
    with pytest.raises(BootstrapError, match=r"HTTP 403: .*No matching permissions"):
        await provision(settings)
    assert time.monotonic() - started < 3
    assert len(fake.received) == 1


async def test_an_unwritable_output_directory_is_a_clear_error(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = settings_for(
        await aiohttp_server(FakeZitadel().application()),
        tmp_path,
        admin_pat_file,
        out_dir=blocker / "bootstrap",
    )

    with pytest.raises(BootstrapError, match=r"cannot write .*gateway\.env"):
        await provision(settings)


# -- the command line ----------------------------------------------------------------------------------------


async def run_module(env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.bootstrap",
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_module_prints_the_seed_curls_with_the_real_pats_and_never_the_secret(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    fake = FakeZitadel()
    server = await aiohttp_server(fake.application())
    out_dir = tmp_path / "bootstrap"
    env = {
        "ZITADEL_CONNECT_URL": str(server.make_url("/")),
        "ZITADEL_DOMAIN": "http://localhost:8080",
        "ZITADEL_ADMIN_PAT_FILE": str(admin_pat_file),
        "BOOTSTRAP_DIR": str(out_dir),
        "GATEWAY_PUBLIC_URL": "http://localhost:5000",
        "BOOTSTRAP_TIMEOUT": "20",
    }

    code, stdout, stderr = await run_module(env)

    assert code == 0, stderr
    [secret] = fake.secrets.values()
    reader = (out_dir / "reader.pat").read_text().strip()
    noroles = (out_dir / "noroles.pat").read_text().strip()
    curl = "curl --request GET --url http://localhost:5000"
    assert f"{curl}/api/public\n" in stdout
    assert f'{curl}/api/private --header "authorization: Bearer {reader}"' in stdout
    assert f'{curl}/api/private-scoped --header "authorization: Bearer {reader}"' in stdout
    assert f'{curl}/api/private-scoped --header "authorization: Bearer {noroles}"' in stdout
    assert secret not in stdout + stderr
    assert ADMIN_PAT not in stdout + stderr
    assert {r.host for r in fake.received} == {"localhost:8080"}

    (out_dir / "gateway.env").unlink()
    code, stdout, stderr = await run_module(env)
    assert code == 0, stderr
    [regenerated] = fake.secrets.values()
    assert regenerated != secret and regenerated not in stdout + stderr


async def test_the_module_exits_1_with_a_clear_error(
    aiohttp_server: AiohttpServer, tmp_path: Path, admin_pat_file: Path
) -> None:
    server = await aiohttp_server(FakeZitadel().application())
    env = {
        "ZITADEL_CONNECT_URL": str(server.make_url("/")),
        "ZITADEL_DOMAIN": "http://127.0.0.1:8080",
        "ZITADEL_ADMIN_PAT_FILE": str(admin_pat_file),
        "BOOTSTRAP_DIR": str(tmp_path / "bootstrap"),
        "BOOTSTRAP_TIMEOUT": "0.5",
    }

    code, stdout, stderr = await run_module(env)

    assert code == 1
    assert stdout == ""
    assert "gave up after 0.5s waiting for ZITADEL" in stderr and "Instance not found" in stderr
    assert "Traceback" not in stderr


# -- settings and output, no network -------------------------------------------------------------------------


def test_settings_defaults_fit_the_compose_stack() -> None:
    settings = Settings.from_env({})
    assert settings.connect_url == "http://zitadel:8080"
    assert settings.instance_host == "localhost:8080"
    assert settings.admin_pat_file == Path("/zitadel-data/admin.pat")
    assert settings.out_dir == Path("/bootstrap")
    assert settings.gateway_url == "http://localhost:5000"
    assert settings.timeout == 300
    assert settings.pat_expiration > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def test_settings_report_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"ZITADEL_DOMAIN": "localhost:8080", "BOOTSTRAP_TIMEOUT": "soon"})
    assert len(raised.value.problems) == 2
    assert "ZITADEL_DOMAIN" in str(raised.value) and "BOOTSTRAP_TIMEOUT" in str(raised.value)


def test_instructions_hold_the_three_seed_calls() -> None:
    text = render_instructions("http://localhost:5000/", {"reader": "R-PAT", "noroles": "N-PAT"})
    curls = [line.strip() for line in text.splitlines() if line.strip().startswith("curl ")]
    curl = "curl --request GET --url http://localhost:5000"
    assert curls == [
        f"{curl}/api/public",
        f'{curl}/api/private --header "authorization: Bearer R-PAT"',
        f'{curl}/api/private-scoped --header "authorization: Bearer R-PAT"',
        f'{curl}/api/private-scoped --header "authorization: Bearer N-PAT"',
    ]
