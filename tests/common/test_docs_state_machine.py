"""docs/architecture.md draws the chat state machine: its table must be the one the code enforces."""

from __future__ import annotations

from pathlib import Path

from wgs.common import chat_states

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_the_documented_transition_table_is_the_enforced_one() -> None:
    text = DOC.read_text()
    block = text.split("<!-- transitions:start -->", 1)[1].split("<!-- transitions:end -->", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block.strip().splitlines()[2:]]
    documented = {(f, t): cause for f, t, cause in rows}

    def label(state: int) -> str:
        return "(new)" if state == chat_states.UNSPECIFIED else chat_states.name(state)

    enforced = {(label(f), label(t)): cause for (f, t), cause in chat_states.TRANSITIONS.items()}
    assert documented == enforced
