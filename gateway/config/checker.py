"""Reading and checking raw YAML values: `${VAR}` from the environment, typed getters that collect every
problem as `file: key.path: message`."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values


class ConfigError(Exception):
    """One or more problems, each already formatted as `file: key: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def read_environment(env_file: str | Path | None) -> dict[str, str]:
    """The process environment over the dotenv file: what is set for real wins over `.env`."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        try:
            values = dotenv_values(env_file, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            # Refused like any invalid config: named, and the last good config keeps serving a running gateway.
            raise ConfigError([f"{env_file}: cannot read: {read_error(exc)}"]) from exc
        merged.update({k: v for k, v in values.items() if v is not None})
    merged.update(os.environ)
    return merged


def read_error(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
    return exc.strerror or type(exc).__name__


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: str, env: Mapping[str, str], problem: Callable[[str], None]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got is None or (got == "" and default is not None):
            if default is None:
                problem(f"environment variable {name} is not set")
                return ""
            return default
        return got

    return _VAR.sub(sub, value)


class Checker:
    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.problems: list[str] = []
        self._failed: set[str] = set()

    def fail(self, path: str, message: str) -> None:
        self._failed.add(path)
        self.problems.append(f"{self.file}: {path}: {message}" if path else f"{self.file}: {message}")

    def failed_under(self, path: str) -> bool:
        return any(p == path or p.startswith((path + ".", path + "[")) for p in self._failed)

    def expand(self, node: Any, path: str) -> Any:
        if isinstance(node, str):
            return _interpolate(node, self.env, lambda msg: self.fail(path, msg))
        if isinstance(node, dict):
            return {k: self.expand(v, join_key(path, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [self.expand(v, f"{path}[{i}]") for i, v in enumerate(node)]
        return node

    def mapping(self, node: Any, path: str, allowed: frozenset[str]) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, dict):
            self.fail(path, "expected a mapping")
            return {}
        for key in node:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.fail(join_key(path, str(key)), f"unknown key (expected one of: {hint})")
        return node

    def string(self, node: dict[str, Any], key: str, path: str, default: str | None = None) -> str | None:
        value = node.get(key, default)
        if value is None or value == "":
            return default
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.fail(join_key(path, key), "expected a string")
            return default
        return str(value)

    def required_string(self, node: dict[str, Any], key: str, path: str) -> str:
        value = self.string(node, key, path)
        if value is None:
            if join_key(path, key) not in self._failed:  # an unset ${VAR} was reported already
                self.fail(join_key(path, key), "is required")
            return ""
        return value

    def number(self, node: dict[str, Any], key: str, path: str, default: float, minimum: float = 0) -> float:
        value = node.get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(join_key(path, key), f"expected a number, got {value!r}")
            return default
        if isinstance(value, bool) or number < minimum:
            self.fail(join_key(path, key), f"expected a number >= {minimum:g}, got {value!r}")
            return default
        return number

    def integer(self, node: dict[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
        value = node.get(key, default)
        try:
            number = int(str(value), 10)
        except ValueError:
            self.fail(join_key(path, key), f"expected a whole number, got {value!r}")
            return default
        if isinstance(value, bool) or not lo <= number <= hi:
            self.fail(join_key(path, key), f"expected a whole number from {lo} to {hi}, got {value!r}")
            return default
        return number

    def boolean(self, node: dict[str, Any], key: str, path: str, default: bool) -> bool:
        value = node.get(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.fail(join_key(path, key), f"expected true or false, got {value!r}")
        return default

    def string_list(self, node: dict[str, Any], key: str, path: str) -> list[str] | None:
        if key not in node:
            return None
        value = node[key]
        if not isinstance(value, list):
            self.fail(join_key(path, key), "expected a list")
            return []
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.fail(f"{join_key(path, key)}[{i}]", "expected a non-empty string")
            else:
                out.append(item.strip())
        return out

    def url(self, value: str | None, path: str) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.fail(path, f"expected an http(s) URL with a host, got {value!r}")
            return None
        return value.rstrip("/")


def join_key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
