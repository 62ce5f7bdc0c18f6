"""wgs/agent/README.md's exit-code table lists every exit code the agent has, and only those."""

from __future__ import annotations

import re

from tests.harness import REPO
from wgs.agent import errors


def test_the_exit_code_table_lists_every_exit_code() -> None:
    text = (REPO / "wgs" / "agent" / "README.md").read_text()
    table = text.split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    documented = [int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)]
    codes = sorted(value for name, value in vars(errors).items() if name.startswith("EXIT_") and isinstance(value, int))
    assert documented == codes
    in_help = [int(m) for m in re.findall(r"^  (\d+)  ", errors.EXIT_CODES_HELP, re.M)]
    assert in_help == codes
