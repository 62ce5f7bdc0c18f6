"""`wgs` entry point. Subcommands live in wgs.cli.stack (up/down/status), wgs.cli.chat (chat, sweep),
wgs.cli.trace and wgs.cli.token; `wgs serve NAME` runs one service in the foreground.

Errors the user can act on are one `wgs: ...` line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from wgs.cli import chat, envvars, stack, token, trace
from wgs.cli.output import CliError
from wgs.common.errors import ConfigError

SERVICES = ("graph", "dispatch", "supervisor")


def cmd_serve(ns: argparse.Namespace) -> int:
    module = importlib.import_module(f"services.{ns.service}.server")
    return int(module.main())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wgs", description="workgraph services: supervised LLM chat agents")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=SERVICES)
    serve.set_defaults(func=cmd_serve)
    stack.add_parsers(sub)
    chat.add_parsers(sub)
    trace.add_parsers(sub)
    envvars.add_parsers(sub)
    token.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return int(ns.func(ns))
    except CliError as exc:
        print(f"wgs: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"wgs: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wgs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
