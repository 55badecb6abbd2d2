"""Provision ZITADEL for the docker compose stack: ``python -m deploy.bootstrap``.

Waits for ZITADEL, then, as the first instance's machine admin (its PAT is the file ZITADEL wrote at its first
start), creates through the Management API v1 what the seed's reader clicks together by hand:

- the project ``gateway`` with role assertion on, and its role ``read:messages``;
- the API application ``gateway`` (authentication method Basic), whose client id and secret the gateway
  uses to call the introspection endpoint;
- the service users ``svc-reader`` (granted ``read:messages``) and ``svc-noroles`` (no grant), a PAT each.

Every step looks up before it creates and takes a 409 for "exists", so a second run changes nothing. A client
secret (like a PAT) is returned only when it is made: when the application exists but the saved secret is
gone, a new one is generated. The results go to ``BOOTSTRAP_DIR``: ``gateway.env`` (the gateway's
``--env-file``), ``reader.pat`` and ``noroles.pat``. Then the seed's curl commands are printed with the real
PATs; the client secret is never printed.

ZITADEL picks its instance by the request's Host header, so the requests go to ``ZITADEL_CONNECT_URL`` (inside
compose ``http://zitadel:8080``) while carrying the host of ``ZITADEL_DOMAIN`` (``localhost:8080``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
from dotenv import dotenv_values

log = logging.getLogger(__name__)

Json = dict[str, Any]

PROJECT_NAME: Final = "gateway"
ROLE_KEY: Final = "read:messages"
APP_NAME: Final = "gateway"
GATEWAY_ENV_FILE: Final = "gateway.env"
EQUALS: Final = "TEXT_QUERY_METHOD_EQUALS"
MGMT: Final = "/management/v1"

DEFAULT_CONNECT_URL: Final = "http://zitadel:8080"
DEFAULT_DOMAIN: Final = "http://localhost:8080"
DEFAULT_ADMIN_PAT_FILE: Final = Path("/zitadel-data/admin.pat")
DEFAULT_OUT_DIR: Final = Path("/bootstrap")
DEFAULT_GATEWAY_URL: Final = "http://localhost:5000"
DEFAULT_TIMEOUT: Final = 300.0


@dataclass(frozen=True, slots=True)
class ServiceUser:
    key: str  # names the PAT file: <key>.pat
    user_name: str
    name: str
    role_keys: tuple[str, ...]


SERVICE_USERS: Final = (
    ServiceUser("reader", "svc-reader", "Service Reader", (ROLE_KEY,)),
    ServiceUser("noroles", "svc-noroles", "Service Without Roles", ()),
)

ENVIRONMENT_HELP: Final = """\
environment (the defaults fit docker-compose.yml):
  ZITADEL_CONNECT_URL       where to connect                    http://zitadel:8080
  ZITADEL_DOMAIN            the issuer; its host is the Host    http://localhost:8080
  ZITADEL_ADMIN_PAT_FILE    written by ZITADEL at first start   /zitadel-data/admin.pat
  BOOTSTRAP_DIR             gets gateway.env and the PATs       /bootstrap
  BOOTSTRAP_TIMEOUT         seconds to wait for ZITADEL, total  300
  GATEWAY_PUBLIC_URL        for the printed curl commands       http://localhost:5000
  BOOTSTRAP_PAT_EXPIRATION  expiry of the service users' PATs   one year from now
"""


class BootstrapError(Exception):
    """Provisioning cannot go on; the message says why and, where it can, what to do."""


class ConfigError(BootstrapError):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))
        self.problems = tuple(problems)


class ApiError(BootstrapError):
    """ZITADEL answered, and the answer is a refusal that waiting will not change."""

    def __init__(self, path: str, status: int, text: str) -> None:
        super().__init__(f"POST {path}: HTTP {status}: {text[:300]}")
        self.status = status


class AlreadyExists(ApiError):
    """409: the thing to create exists already."""


class NotReady(Exception):
    """A failure that waiting may cure: ZITADEL is starting, or its projections lag behind."""

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__(problem)
        self.hint = hint


def _one_year_from_now() -> str:
    return (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Settings:
    connect_url: str = DEFAULT_CONNECT_URL
    domain: str = DEFAULT_DOMAIN
    admin_pat_file: Path = DEFAULT_ADMIN_PAT_FILE
    out_dir: Path = DEFAULT_OUT_DIR
    gateway_url: str = DEFAULT_GATEWAY_URL
    timeout: float = DEFAULT_TIMEOUT
    retry_interval: float = 2.0
    pat_expiration: str = field(default_factory=_one_year_from_now)

    def __post_init__(self) -> None:
        problems = [
            f"{name}={url!r}: expected an http(s) URL such as http://host:port"
            for name, url in (
                ("ZITADEL_CONNECT_URL", self.connect_url),
                ("ZITADEL_DOMAIN", self.domain),
                ("GATEWAY_PUBLIC_URL", self.gateway_url),
            )
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc
        ]
        if self.timeout <= 0:
            problems.append(f"BOOTSTRAP_TIMEOUT={self.timeout:g}: must be more than 0 seconds")
        if self.retry_interval <= 0:
            problems.append(f"retry interval {self.retry_interval:g}: must be more than 0 seconds")
        if problems:
            raise ConfigError(problems)

    @property
    def instance_host(self) -> str:
        """The Host header ZITADEL resolves its instance from, e.g. ``localhost:8080``."""
        return urlsplit(self.domain).netloc

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        problems: list[str] = []
        timeout = DEFAULT_TIMEOUT
        if raw := env.get("BOOTSTRAP_TIMEOUT"):
            try:
                timeout = float(raw)
            except ValueError:
                problems.append(f"BOOTSTRAP_TIMEOUT={raw!r}: expected a number of seconds")
        try:
            settings = cls(
                connect_url=env.get("ZITADEL_CONNECT_URL") or DEFAULT_CONNECT_URL,
                domain=env.get("ZITADEL_DOMAIN") or DEFAULT_DOMAIN,
                admin_pat_file=Path(env.get("ZITADEL_ADMIN_PAT_FILE") or DEFAULT_ADMIN_PAT_FILE),
                out_dir=Path(env.get("BOOTSTRAP_DIR") or DEFAULT_OUT_DIR),
                gateway_url=env.get("GATEWAY_PUBLIC_URL") or DEFAULT_GATEWAY_URL,
                timeout=timeout,
                pat_expiration=env.get("BOOTSTRAP_PAT_EXPIRATION") or _one_year_from_now(),
            )
        except ConfigError as error:
            raise ConfigError([*problems, *error.problems]) from None
        if problems:
            raise ConfigError(problems)
        return settings


class ManagementApi:
    """POSTs JSON to the Management API v1 as the instance admin, retrying what waiting may cure.

    One deadline bounds the whole run: until it passes, connection errors, 5xx, 404 "Instance not found" (the
    instance is not set up yet), 401 (the admin PAT is not known yet) and a missing PAT file mean "try again".
    """

    def __init__(self, session: aiohttp.ClientSession, settings: Settings) -> None:
        self._session = session
        self._settings = settings
        self._deadline = asyncio.get_running_loop().time() + settings.timeout
        self._last_logged = ""

    async def post(self, path: str, body: Json) -> Json:
        while True:
            try:
                return await self._attempt(path, body)
            except NotReady as problem:
                await self.wait(problem)

    async def wait(self, problem: NotReady) -> None:
        """Sleep before the next attempt, or fail with the last problem once the deadline has passed."""
        remaining = self._deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            message = f"gave up after {self._settings.timeout:g}s waiting for ZITADEL: {problem}"
            raise BootstrapError(f"{message}\n{problem.hint}" if problem.hint else message)
        if str(problem) != self._last_logged:  # one line per new problem, not one per attempt
            self._last_logged = str(problem)
            log.info("waiting for ZITADEL: %s", problem)
        await asyncio.sleep(min(self._settings.retry_interval, remaining))

    def _admin_pat(self) -> str:
        path = self._settings.admin_pat_file
        try:
            pat = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise NotReady(
                f"the admin PAT file {path} does not exist yet",
                "ZITADEL writes it on its first start with an empty database (ZITADEL_FIRSTINSTANCE_PATPATH)."
                " If the database outlived the file, start over with `docker compose down -v`.",
            ) from None
        except OSError as error:
            raise BootstrapError(f"cannot read the admin PAT file {path}: {error}") from error
        if not pat:
            raise NotReady(f"the admin PAT file {path} is still empty")
        return pat

    async def _attempt(self, path: str, body: Json) -> Json:
        host = self._settings.instance_host
        headers = {"Host": host, "Authorization": f"Bearer {self._admin_pat()}", "Accept": "application/json"}
        url = self._settings.connect_url.rstrip("/") + path
        try:
            async with self._session.post(url, json=body, headers=headers, allow_redirects=False) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise NotReady(f"cannot reach {url}: {error!r}") from error
        if status == 200:
            return _parse_object(path, text)
        if status == 409:
            raise AlreadyExists(path, status, text)
        if status >= 500:
            raise NotReady(f"POST {path}: HTTP {status}")
        if status == 404 and _is_instance_not_found(text):
            raise NotReady(
                f"POST {path}: 404 Instance not found for Host {host!r}",
                f"ZITADEL picks its instance by the Host header: the host of ZITADEL_DOMAIN ({host}) must be "
                "ZITADEL's ZITADEL_EXTERNALDOMAIN:ZITADEL_EXTERNALPORT.",
            )
        if status == 401:
            raise NotReady(
                f"POST {path}: 401, ZITADEL does not accept the admin PAT (yet)",
                f"If it never does, {self._settings.admin_pat_file} is stale (`docker compose down -v`).",
            )
        raise ApiError(path, status, text)


def _is_instance_not_found(text: str) -> bool:
    lowered = text.lower()
    return "instance" in lowered and ("not found" in lowered or "notfound" in lowered)


def _parse_object(path: str, text: str) -> Json:
    try:
        value = json.loads(text)
    except ValueError:
        raise BootstrapError(f"POST {path}: the answer is not JSON: {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise BootstrapError(f"POST {path}: expected a JSON object, got {type(value).__name__}")
    return value


def _text(obj: Mapping[str, Any], *keys: str) -> str:
    """The non-empty string at ``obj[k1][k2]…``. Errors name the keys present, never values (secrets)."""
    value: Any = obj
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    if not isinstance(value, str) or not value:
        raise BootstrapError(f"unexpected answer from ZITADEL: no {'.'.join(keys)} among {sorted(obj)}")
    return value


async def _search(api: ManagementApi, path: str, queries: list[Json], key: str, value: str) -> Json | None:
    """The first search result whose ``key`` equals ``value`` (ZITADEL omits an empty ``result``)."""
    result = (await api.post(path, {"queries": queries})).get("result", [])
    if not isinstance(result, list):
        raise BootstrapError(f"POST {path}: expected a list in result")
    return next((item for item in result if isinstance(item, dict) and item.get(key) == value), None)


async def _find_or_create(
    api: ManagementApi,
    what: str,
    find: Callable[[], Awaitable[Json | None]],
    create: Callable[[], Awaitable[Json]],
) -> tuple[Json, bool]:
    """``(found, False)`` or ``(created, True)``. A 409 means it exists: search until the search lists it."""
    found = await find()
    if found is None:
        try:
            created = await create()
        except AlreadyExists:
            log.info("%s: exists (409), looking it up", what)
            while (found := await find()) is None:
                await api.wait(NotReady(f"ZITADEL says {what} exists but does not list it yet"))
        else:
            log.info("%s: created", what)
            return created, True
    else:
        log.info("%s: exists", what)
    return found, False


async def ensure_project(api: ManagementApi) -> str:
    found, _ = await _find_or_create(
        api,
        f"project {PROJECT_NAME!r}",
        lambda: _search(
            api,
            f"{MGMT}/projects/_search",
            [{"nameQuery": {"name": PROJECT_NAME, "method": EQUALS}}],
            "name",
            PROJECT_NAME,
        ),
        lambda: api.post(f"{MGMT}/projects", {"name": PROJECT_NAME, "projectRoleAssertion": True}),
    )
    return _text(found, "id")


async def ensure_role(api: ManagementApi, project_id: str) -> None:
    roles = f"{MGMT}/projects/{quote(project_id, safe='')}/roles"
    await _find_or_create(
        api,
        f"role {ROLE_KEY!r}",
        lambda: _search(api, f"{roles}/_search", [{"keyQuery": {"key": ROLE_KEY, "method": EQUALS}}], "key", ROLE_KEY),
        lambda: api.post(roles, {"roleKey": ROLE_KEY, "displayName": ROLE_KEY}),
    )


def read_saved_settings(out_dir: Path) -> dict[str, str]:
    """What the last run wrote to gateway.env; empty when the file is gone."""
    path = out_dir / GATEWAY_ENV_FILE
    if not path.is_file():
        return {}
    return {key: value for key, value in dotenv_values(path).items() if value}


async def ensure_app(api: ManagementApi, settings: Settings, project_id: str) -> tuple[str, str]:
    """The API application's client id and a client secret that works: saved, new, or regenerated."""
    apps = f"{MGMT}/projects/{quote(project_id, safe='')}/apps"
    app, created = await _find_or_create(
        api,
        f"API application {APP_NAME!r}",
        lambda: _search(
            api, f"{apps}/_search", [{"nameQuery": {"name": APP_NAME, "method": EQUALS}}], "name", APP_NAME
        ),
        lambda: api.post(f"{apps}/api", {"name": APP_NAME, "authMethodType": "API_AUTH_METHOD_TYPE_BASIC"}),
    )
    if created:
        return _text(app, "clientId"), _text(app, "clientSecret")
    config = app.get("apiConfig")
    # proto3 JSON leaves out enum defaults: a missing authMethodType is API_AUTH_METHOD_TYPE_BASIC (0).
    if not isinstance(config, dict) or config.get("authMethodType", "API_AUTH_METHOD_TYPE_BASIC") not in (
        "API_AUTH_METHOD_TYPE_BASIC",
        0,
    ):
        raise BootstrapError(
            f"project {PROJECT_NAME!r} has an application {APP_NAME!r} that is not an API application with "
            "Basic authentication: delete or rename it in the console, then run the bootstrap again"
        )
    client_id = _text(app, "apiConfig", "clientId")
    saved = read_saved_settings(settings.out_dir)
    if saved.get("ZITADEL_CLIENT_ID") == client_id and "ZITADEL_CLIENT_SECRET" in saved:
        return client_id, saved["ZITADEL_CLIENT_SECRET"]
    log.info("API application %r: its client secret is not saved, generating a new one", APP_NAME)
    app_id = quote(_text(app, "id"), safe="")
    answer = await api.post(f"{apps}/{app_id}/api_config/_generate_client_secret", {})
    return client_id, _text(answer, "clientSecret")


async def ensure_user(api: ManagementApi, user: ServiceUser) -> tuple[str, bool]:
    """The service user's id, and whether this run created it."""
    found, created = await _find_or_create(
        api,
        f"service user {user.user_name!r}",
        lambda: _search(
            api,
            f"{MGMT}/users/_search",
            [{"userNameQuery": {"userName": user.user_name, "method": EQUALS}}],
            "userName",
            user.user_name,
        ),
        lambda: api.post(
            f"{MGMT}/users/machine",
            {"userName": user.user_name, "name": user.name, "accessTokenType": "ACCESS_TOKEN_TYPE_BEARER"},
        ),
    )
    return _text(found, "userId" if created else "id"), created


async def ensure_grant(api: ManagementApi, user: ServiceUser, user_id: str, project_id: str) -> None:
    """Grant the user's roles on the project. An existing grant is left as it is (the console may edit it)."""
    await _find_or_create(
        api,
        f"grant of {', '.join(user.role_keys)} to {user.user_name!r}",
        lambda: _search(
            api,
            f"{MGMT}/users/grants/_search",
            [{"userIdQuery": {"userId": user_id}}, {"projectIdQuery": {"projectId": project_id}}],
            "projectId",
            project_id,
        ),
        lambda: api.post(
            f"{MGMT}/users/{quote(user_id, safe='')}/grants",
            {"projectId": project_id, "roleKeys": list(user.role_keys)},
        ),
    )


async def ensure_pat(api: ManagementApi, settings: Settings, user: ServiceUser, user_id: str, fresh: bool) -> str:
    """The saved PAT, or a new one when the file is gone or the user is new (ZITADEL shows a token once)."""
    path = settings.out_dir / f"{user.key}.pat"
    if not fresh and path.is_file() and (saved := path.read_text(encoding="utf-8").strip()):
        log.info("PAT of %r: kept (%s)", user.user_name, path)
        return saved
    answer = await api.post(f"{MGMT}/users/{quote(user_id, safe='')}/pats", {"expirationDate": settings.pat_expiration})
    token = _text(answer, "token")
    write_private(path, token + "\n")
    log.info("PAT of %r: created (%s)", user.user_name, path)
    return token


def _dotenv_quote(name: str, value: str) -> str:
    if any(char in value for char in "'\\\n\r"):
        raise BootstrapError(f"{name} from ZITADEL holds characters gateway.env cannot carry")
    return f"{name}='{value}'"


def render_gateway_env(client_id: str, client_secret: str, project_id: str) -> str:
    return "\n".join(
        [
            "# Written by `python -m deploy.bootstrap`; the gateway reads it with --env-file.",
            "# Delete it and run the bootstrap again to get a new client secret.",
            _dotenv_quote("ZITADEL_CLIENT_ID", client_id),
            _dotenv_quote("ZITADEL_CLIENT_SECRET", client_secret),
            _dotenv_quote("ZITADEL_PROJECT_ID", project_id),
            "",
        ]
    )


def write_private(path: Path, content: str) -> None:
    """Replace ``path`` atomically with ``content``, readable by its owner only; unchanged, leave it."""
    try:
        if path.is_file() and path.read_text(encoding="utf-8") == content:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.unlink(missing_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(content)
        os.replace(temporary, path)
    except OSError as error:
        raise BootstrapError(f"cannot write {path}: {error}") from error


@dataclass(frozen=True, slots=True)
class Provisioned:
    project_id: str
    client_id: str
    pats: Mapping[str, str]  # ServiceUser.key -> PAT


async def provision(settings: Settings) -> Provisioned:
    timeout = aiohttp.ClientTimeout(total=15, connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        api = ManagementApi(session, settings)
        project_id = await ensure_project(api)
        await ensure_role(api, project_id)
        client_id, client_secret = await ensure_app(api, settings, project_id)
        gateway_env = render_gateway_env(client_id, client_secret, project_id)
        write_private(settings.out_dir / GATEWAY_ENV_FILE, gateway_env)
        pats: dict[str, str] = {}
        for user in SERVICE_USERS:
            user_id, created = await ensure_user(api, user)
            if user.role_keys:
                await ensure_grant(api, user, user_id, project_id)
            pats[user.key] = await ensure_pat(api, settings, user, user_id, created)
    return Provisioned(project_id=project_id, client_id=client_id, pats=pats)


def render_instructions(gateway_url: str, pats: Mapping[str, str]) -> str:
    base = gateway_url.rstrip("/")
    reader, noroles = pats["reader"], pats["noroles"]
    return f"""
ZITADEL is provisioned. Once the gateway is up (`docker compose ps` shows it healthy), try the seed's calls:

  curl --request GET --url {base}/api/public
  curl --request GET --url {base}/api/private --header "authorization: Bearer {reader}"
  curl --request GET --url {base}/api/private-scoped --header "authorization: Bearer {reader}"

Without a token the private routes answer 401; a service user without the role read:messages gets 403 here:

  curl --request GET --url {base}/api/private-scoped --header "authorization: Bearer {noroles}"

The PATs are also in the bootstrap volume (reader.pat, noroles.pat).
`docker compose logs bootstrap` shows this again.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.bootstrap",
        description="Provision ZITADEL for the gateway: project, role, API app, two service users, PATs.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bootstrap: %(message)s", stream=sys.stderr)
    try:
        settings = Settings.from_env(os.environ)
        result = asyncio.run(provision(settings))
    except BootstrapError as error:
        log.error("%s", error)
        return 1
    print(render_instructions(settings.gateway_url, result.pats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
