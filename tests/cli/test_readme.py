"""The README documents exactly what the code does: the env table and the commands."""

from __future__ import annotations

import re

from tests.harness import REPO
from wgs.cli.envvars import markdown_table
from wgs.cli.main import build_parser

README = REPO / "README.md"


def test_env_table_in_readme_matches_settings() -> None:
    text = README.read_text()
    m = re.search(r"<!-- env-table:start -->\n(.*?)\n<!-- env-table:end -->", text, re.S)
    assert m, "README.md lacks the env-table markers"
    assert m.group(1) == markdown_table(), (
        "README.md's environment table is stale: replace the lines between the env-table markers "
        "with the output of `.venv/bin/wgs env --markdown`"
    )


def test_every_cli_command_is_in_readme() -> None:
    text = README.read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, sp in sub.choices.items():  # type: ignore[union-attr]
        if name == "chat":
            chat_sub = next(a for a in sp._actions if a.dest == "chat_command")
            for chat_name in chat_sub.choices:  # type: ignore[union-attr]
                assert f"`wgs chat {chat_name}" in text, chat_name
        else:
            assert f"`wgs {name}" in text, name


def test_readme_commands_are_the_ones_ci_runs() -> None:
    text = README.read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "./scripts/install.sh" in text and "./scripts/install.sh" in ci
    assert "\n.venv/bin/pytest -q\n" in text and "\n.venv/bin/pytest -q\n" in ci
