"""Command line: `python -m gateway [run] --config F`, `python -m gateway check --config F`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from .app import build_app
from .config import Config, ConfigError, load_config, read_environment
from .rules import route_table
from .workers import run_workers

COMMANDS = ("run", "check")


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
    sub.add_parser("check", parents=[common], help="validate the config and print the route table")
    return parser


def _load(args: argparse.Namespace) -> Config:
    env_file = Path(args.env_file) if args.env_file else Path(args.config).parent / ".env"
    return load_config(args.config, read_environment(env_file))


def _print_table(config: Config) -> None:
    rows = [("#", "path", "methods", "policy", "upstream"), *route_table(config.routes)]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    try:
        config = _load(args)
    except ConfigError as exc:
        print("configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.command == "check":
        print(f"{config.source}: OK, {len(config.routes)} routes (first match wins; anything else is denied with 404)")
        _print_table(config)
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if config.workers > 1:
        return run_workers(config.workers, lambda: _serve(config))
    _serve(config)
    return 0


def _serve(config: Config) -> None:
    _install_uvloop()
    host, port = config.listen.host, config.listen.port
    web.run_app(
        build_app(config),
        host=host,
        port=port,
        access_log=None,
        reuse_port=config.workers > 1,  # workers share the port (gateway/workers.py)
        print=lambda _: logging.getLogger("gateway").info("listening on http://%s:%d", host, port),
    )


if __name__ == "__main__":
    sys.exit(main())
