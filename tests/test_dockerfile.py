"""The Dockerfile (and .dockerignore), read as text: nothing is built here, so check what a build would see.

The image must hold every top-level package the entry points import, run as a non-root user, have no build
tools in the final stage, and carry a HEALTHCHECK on the gateway's admin port.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "python:3.11-slim"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def words(self) -> list[str]:
        text = self.arguments.strip()
        if text.startswith("["):
            words: list[str] = json.loads(text)
            return words
        return shlex.split(text)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions by stage: comments dropped, backslash continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"

    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, arguments.strip()))
    return stages


def copy_sources(instruction: Instruction) -> tuple[list[str], str, str | None]:
    """(sources, destination, --from stage) of a COPY."""
    words = instruction.words()
    options = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    source_stage = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")), None)
    return [p.rstrip("/") or "." for p in paths[:-1]], paths[-1], source_stage


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def copied_from_context(stages: list[Stage]) -> set[str]:
    sources: set[str] = set()
    for stage in stages:
        for instruction in stage.all("COPY"):
            paths, _, source_stage = copy_sources(instruction)
            if source_stage is None:
                sources.update(paths)
    return sources


def entry_point_modules() -> set[str]:
    """The X of every `python -m X` the image runs: its CMD and the commands in docker-compose.yml."""
    text = (REPO / "Dockerfile").read_text() + (REPO / "docker-compose.yml").read_text()
    return set(re.findall(r'"python",\s*"-m",\s*"([\w.]+)"', text))


def first_party_imports(package: str) -> set[str]:
    """Top-level names imported anywhere in a package that are packages or modules of this repository."""
    found: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {name for name in found if (REPO / name / "__init__.py").is_file() or (REPO / f"{name}.py").is_file()}


def test_every_stage_starts_from_python_slim(stages: list[Stage]) -> None:
    assert [s.base for s in stages] == [BASE_IMAGE] * len(stages)
    assert len(stages) >= 2, "build in one stage, run in another"


def test_it_copies_what_the_entry_points_import(stages: list[Stage]) -> None:
    copied = copied_from_context(stages)
    assert {"pyproject.toml", "config.yaml", "gateway", "demo_backend"} <= copied

    entry_packages = {module.split(".")[0] for module in entry_point_modules()}
    assert entry_packages == {"gateway", "demo_backend", "deploy"}
    needed = set(entry_packages)
    for package in entry_packages:
        if (REPO / package).is_dir():
            needed |= first_party_imports(package)
    assert needed <= copied, f"the image lacks {sorted(needed - copied)}"


def test_the_build_stage_installs_the_project_and_the_final_stage_its_wheels(stages: list[Stage], final: Stage) -> None:
    build = stages[0]
    assert any(re.search(r"\bpip (wheel|install)\b.* \.$", i.arguments) for i in build.all("RUN"))
    assert build.name is not None
    uses_build = [
        i
        for i in final.instructions
        if f"from={build.name}" in i.arguments and (i.keyword == "COPY" or "pip install" in i.arguments)
    ]
    assert uses_build, "the final stage installs nothing from the build stage"
    assert "config.yaml" in copied_from_context([final])


def test_the_final_stage_has_no_build_tools(final: Stage) -> None:
    for instruction in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apt|apk)\b.*\binstall\b", instruction.arguments), instruction
        assert not re.search(r"\b(gcc|build-essential|make)\b", instruction.arguments), instruction
        if "pip install" in instruction.arguments:
            assert "--no-cache-dir" in instruction.arguments


def test_it_runs_as_a_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "no USER in the final stage"
    user = users[-1].arguments.split(":")[0]
    assert user not in ("root", "0", "")
    last_user = max(i for i, instruction in enumerate(final.instructions) if instruction.keyword == "USER")
    assert all(i.keyword != "RUN" for i in final.instructions[last_user:]), "RUN after the last USER"


def test_healthcheck_asks_the_admin_listener_with_python(final: Stage) -> None:
    [healthcheck] = final.all("HEALTHCHECK")
    assert "CMD" in healthcheck.arguments
    command = healthcheck.arguments[healthcheck.arguments.index("CMD") + 3 :]
    words = Instruction("CMD", command).words()
    assert words[:2] == ["python", "-c"]
    assert "/healthz" in words[2] and "9091" in words[2] and "ADMIN_PORT" in words[2]
    compile(words[2], "<healthcheck>", "exec")


def test_the_default_command_runs_the_gateway_with_the_copied_config(final: Stage) -> None:
    [cmd] = final.all("CMD")
    words = cmd.words()
    assert words[:3] == ["python", "-m", "gateway"]
    config_path = words[words.index("--config") + 1]
    destinations = {}
    for instruction in final.all("COPY"):
        paths, destination, _ = copy_sources(instruction)
        destinations.update(dict.fromkeys(paths, destination))
    assert destinations["config.yaml"] == config_path
    assert "EXPOSE" in {i.keyword for i in final.instructions}


# -- .dockerignore -------------------------------------------------------------------------------------------


def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a parent wins; `!` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        cleaned = pattern.lstrip("!").strip("/")
        if cleaned.startswith("**/"):
            rest = cleaned[3:]
            hit = any(fnmatchcase(part, rest) for part in parts)
        else:
            hit = any(fnmatchcase(candidate, cleaned) for candidate in candidates)
        if hit:
            verdict = not negated
    return verdict


def test_dockerignore_keeps_secrets_out_and_the_sources_in(stages: list[Stage]) -> None:
    patterns = ignore_patterns()
    for secret in (
        ".env",
        ".venv/bin/python",
        ".git",
        "reader.pat",
        "tests/test_compose.py",
        ".mypy_cache/x",
    ):
        assert ignored(secret, patterns), f"{secret} would be sent to the Docker daemon"
    for source in copied_from_context(stages):
        assert not ignored(source, patterns), f"{source} is copied but ignored"
    for package in ("gateway", "demo_backend"):
        assert not ignored(f"{package}/__main__.py", patterns)
        assert ignored(f"{package}/__pycache__/__main__.cpython-311.pyc", patterns)
