"""`wgs token`: the stack secret and tokens for users of the API (docs/security.md).

    wgs token init                  # create the stack secret if missing (`wgs up` does it too)
    wgs token create --role client  # print a client token derived from the secret

The token goes to stdout only (pipe it into a file or a secret store); it is never logged. Anyone
with the token can call what its role allows until it expires or the secret is rotated.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from wgs.cli.output import CliError
from wgs.cli.stack import resolve_state_dir
from wgs.common import auth
from wgs.common.errors import ConfigError

_TTL_RE = re.compile(r"\A([0-9]+(?:\.[0-9]+)?)([smhd]?)\Z")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(value: str) -> float:
    m = _TTL_RE.fullmatch(value.strip())
    if not m or float(m.group(1)) <= 0:
        raise CliError(f"--ttl {value!r} is not a duration (for example 30m, 8h, 7d)", exit_code=2)
    return float(m.group(1)) * _UNIT[m.group(2)]


def _secret(ns: argparse.Namespace) -> bytes:
    state = resolve_state_dir(ns.state_dir)
    path = auth.find_secret_file(state)
    if path is None:
        raise CliError(f"no stack secret in {state} and {auth.SECRET_FILE_VAR} is not set; "
                       "start the stack with `wgs up` or run `wgs token init`")
    try:
        return auth.read_secret(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def cmd_create(ns: argparse.Namespace) -> int:
    secret = _secret(ns)
    ttl = parse_ttl(ns.ttl) if ns.ttl else None
    expires = int(time.time() + ttl) if ttl else None
    print(auth.mint_token(secret, auth.Identity(ns.role, expires_at=expires)))
    if sys.stderr.isatty():
        print(f"wgs: a {ns.role} token{f' valid for {ns.ttl}' if ttl else ''}; use it as WGS_TOKEN or as "
              "`authorization: Bearer <token>` call metadata", file=sys.stderr)
    return 0


def cmd_init(ns: argparse.Namespace) -> int:
    state = resolve_state_dir(ns.state_dir)
    path = auth.ensure_stack_secret(state)
    print(f"wgs: stack secret {path}")
    return 0


def add_parsers(sub: Any) -> None:
    token = sub.add_parser("token", help="the stack secret and API tokens")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    p = tsub.add_parser("create", help="print a token derived from the stack secret")
    p.add_argument("--role", choices=[auth.CLIENT, auth.SUPERVISOR], default=auth.CLIENT,
                   help="client: the chat API and reading the graph (default); supervisor: everything a "
                        "supervisor may call (for a supervisor run elsewhere, or a program that writes tasks)")
    p.add_argument("--ttl", help="expire after this long (e.g. 30m, 8h, 7d); default: until the secret changes")
    p.add_argument("--state-dir", help="state directory of the stack (default: $WGS_STATE_DIR or ./.wgs)")
    p.set_defaults(func=cmd_create)
    p = tsub.add_parser("init", help="create the stack secret if missing (`wgs up` does it too)")
    p.add_argument("--state-dir", help="state directory of the stack (default: $WGS_STATE_DIR or ./.wgs)")
    p.set_defaults(func=cmd_init)
