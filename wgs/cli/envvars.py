"""`wgs env`: every environment variable wgs reads (wgs.common.settings.ENV_VARS), with defaults.

`wgs env --markdown` prints the table that README.md embeds between the env-table markers; a test
keeps the two equal.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from wgs.common.settings import ENV_VARS


def markdown_table() -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| Variable | Default | Read by | Meaning |", "|---|---|---|---|"]
    for var in ENV_VARS:
        default = f"`{cell(var.default)}`" if var.default else ""
        lines.append(f"| `{var.name}` | {default} | {', '.join(var.services)} | {cell(var.help)} |")
    return "\n".join(lines)


def cmd_env(ns: argparse.Namespace) -> int:
    if ns.markdown:
        print(markdown_table())
        return 0
    width = max(len(v.name) for v in ENV_VARS)
    for var in ENV_VARS:
        current = os.environ.get(var.name)
        shown = f"= {current}" if current is not None and not var.secret else f"(default {var.default or '-'})"
        print(f"{var.name:<{width}}  {shown}")
        print(f"{'':<{width}}  {var.help} [{', '.join(var.services)}]")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("env", help="list every environment variable wgs reads, with defaults")
    p.add_argument("--markdown", action="store_true", help="print the README table")
    p.set_defaults(func=cmd_env)
