"""Command line: `python -m gateway [run] --config F`, `check --config F`, `explain --config F METHOD PATH`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway.config import Config, ConfigError
from gateway.ops.logs import configure_logging
from gateway.ops.reload import ConfigSource
from gateway.ops.serve import serve
from gateway.ops.workers import run_workers
from gateway.policy.analysis import explain, explanation_lines, route_warnings
from gateway.policy.rules import route_table

COMMANDS = ("run", "check", "explain")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="config.yaml", help="the route policy file (default: config.yaml)")
    common.add_argument(
        "--env-file",
        default=None,
        help="a dotenv file filling variables the environment does not set (default: .env beside the config)",
    )
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Authenticating gateway for ZITADEL")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="serve (the default)")
    check = sub.add_parser("check", parents=[common], help="validate the config, print the route table, warn")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    exp = sub.add_parser("explain", parents=[common], help="what the gateway would decide for one request")
    exp.add_argument("method", help="the HTTP method, e.g. GET")
    exp.add_argument("path", help="the request path as a client would send it (a query string is ignored)")
    who = exp.add_mutually_exclusive_group()
    who.add_argument(
        "--roles",
        default="",
        help="a valid token carrying these roles, comma-separated; role@ORGID: the role is held in that organisation",
    )
    who.add_argument("--anonymous", action="store_true", help="a request without a token")
    return parser


def _source(args: argparse.Namespace) -> ConfigSource:
    return ConfigSource(Path(args.config), Path(args.env_file) if args.env_file else None)


def _print_table(config: Config) -> None:
    rows = [("#", "path", "methods", "policy", "upstream"), *route_table(config.routes)]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _check(config: Config, strict: bool) -> int:
    print(f"{config.source}: OK, {len(config.routes)} routes (first match wins; anything else is denied with 404)")
    _print_table(config)
    warnings = route_warnings(config.routes)
    for warning in warnings:
        print(f"warning: {warning}")
    return 1 if strict and warnings else 0


def _explain(config: Config, args: argparse.Namespace) -> int:
    given = [] if args.anonymous else [r.strip() for r in args.roles.split(",") if r.strip()]
    # `admin@123`: the role admin, granted in organisation 123. A role without `@` is held in no organisation.
    grants = frozenset((role, org) for role, _, org in (r.rpartition("@") for r in given) if role and org)
    roles = None if args.anonymous else frozenset(r.rpartition("@")[0] or r for r in given)
    who = "no token" if roles is None else f"a valid token with roles: {', '.join(sorted(set(given))) or '(none)'}"
    result = explain(config.routes, args.method.upper(), args.path, roles, grants)
    base = config.upstreams[result.route.upstream].url if result.route is not None else None
    print("\n".join(explanation_lines(result, base, who)))
    return 0


def _run(config: Config, source: ConfigSource) -> int:
    configure_logging(config.logging)
    if config.workers > 1:
        # Every worker shares the proxy port (SO_REUSEPORT); worker i has its own admin port, admin.port + i,
        # so each one's health and metrics can be scraped (its registry is its own).
        return run_workers(config.workers, lambda index: _serve(config, source, worker=index))
    return _serve(config, source, worker=None)


def _serve(config: Config, source: ConfigSource, *, worker: int | None) -> int:
    try:
        _event_loop_runner()(serve(config, source, worker=worker))
    except OSError as exc:  # e.g. a port in use
        print(f"cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return lambda main: asyncio.Runner(loop_factory=uvloop.new_event_loop).run(main)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    source = _source(args)
    try:
        config = source.load()
    except ConfigError as exc:
        print("configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.command == "check":
        return _check(config, args.strict)
    if args.command == "explain":
        return _explain(config, args)
    return _run(config, source)


if __name__ == "__main__":
    sys.exit(main())
