"""`wgs` entry point: subcommands are registered by the modules in wgs.cli."""

from __future__ import annotations

import argparse
import importlib
import sys

SERVICES = ("graph", "dispatch", "supervisor")


def cmd_serve(ns: argparse.Namespace) -> int:
    module = importlib.import_module(f"services.{ns.service}.server")
    return int(module.main())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wgs", description="workgraph services: supervised LLM chat agents")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=SERVICES)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    return int(ns.func(ns))


if __name__ == "__main__":
    sys.exit(main())
